"""Rewards of the mini suite, mirroring the paper's target / held-out structure.

Targets (both read a low-passed image, so that pixel noise cannot pay, and both are reachable by real
digits, so that a score beyond the real data's range flags a hack - see ``rewards/quality.py``):

* ``mini_bold`` (the aesthetic analogue): -((b - c_d) / s)^2, with b the image's boldness
  (:func:`ntrk_bench.mini.data.boldness`), c_d the 97.5th percentile of b among real digits of the prompted
  digit d (split A) and s the spread of b among them. Bounded above by 0, reached by bold real digits; it
  pulls towards bolder strokes and pushes back past c_d, so it cannot be pushed beyond real digits.
* ``mini_exemplar`` (the alignment analogue): cosine between the image's features and those of one held-out
  real exemplar of the prompted digit (split C), in the target classifier's penultimate layer (a CNN trained
  on split A) on images blurred at 1 px. Graded: real digits of the class range ~0.2-0.9; only the
  exemplar itself scores 1.

Held-out evaluators measure the same intents with other data (split B), another architecture (an MLP on
16 x 16 pooled pixels) and another definition:

* ``mini_bold_heldout``: the MLP's stroke width (:func:`ntrk_bench.mini.data.stroke_width`, a per-image
  estimate 2 x area / perimeter rather than the target's coverage; correlation with boldness on real
  digits 0.55);
* ``mini_exemplar_heldout``: cosine to the exemplar in the held-out classifier's hidden layer, with the
  exemplar's distance in a pixel-PCA space (``pca_distance``) beside it;
* ``mini_align_heldout``: the held-out classifier's log p(prompted digit) and its accuracy.

Networks are trained by ``scripts/train_mini_rewards.py`` (``make mini-train``) and committed under
``rewards/weights/``. ``mini_align`` (the target classifier) is also a reward: log p(prompted digit).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ntrk_bench.mini import data

WEIGHTS = Path(__file__).resolve().parent / "weights"

#: the alignment target reads images blurred at this std (pixels)
EXEMPLAR_SIGMA = 1.0
#: the exemplar of each digit: the split-C image at this quantile of typicality (mean feature cosine to the
#: other split-C images of its digit): a particular hand, not the class average
EXEMPLAR_QUANTILE = 0.1
#: the bold target's goal: this quantile of real boldness per digit (split A)
BOLD_GOAL_QUANTILE = 0.975


def cnn(out: int) -> nn.Module:
    """Target-reward backbone: a small strided CNN on 64 x 64 pixels."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.SiLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
        nn.Flatten(), nn.Linear(64 * 4 * 4, out))


def mlp(out: int) -> nn.Module:
    """Held-out backbone: an MLP on 16 x 16 average-pooled pixels."""
    return nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(256, 128), nn.Tanh(), nn.Linear(128, out))


ARCHS = {"cnn": cnn, "mlp": mlp}
SPECS = {  # name: (architecture, outputs, training split, label, seed offset)
    "mini_align": ("cnn", 10, "A", "digit", 1),
    "mini_align_heldout": ("mlp", 10, "B", "digit", 3),
    "mini_bold_heldout": ("mlp", 1, "B", "stroke_width", 4),
}


def load_net(name: str) -> nn.Module:
    from safetensors.torch import load_file

    arch, out, *_ = SPECS[name]
    path = WEIGHTS / f"{name}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"reward weights {path} are missing; train them with `make mini-train` "
                                "(scripts/train_mini_rewards.py, under a minute on a CPU)")
    net = ARCHS[arch](out)
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)


def prompted_digits(prompts: Sequence[str] | None, n: int) -> list[int | None]:
    return [data.label_of(p) for p in prompts] if prompts is not None else [None] * n


def prompted_column(table: torch.Tensor, digits: Sequence[int | None]) -> torch.Tensor:
    """(B,) entry of each row of a (B, 10) per-digit table at the prompted digit; the row's best where the
    prompt names no digit."""
    return torch.stack([table[i].max() if d is None else table[i, d] for i, d in enumerate(digits)])


# ----------------------------------------------------------------------------- the bold target
@lru_cache(maxsize=1)
def bold_goals() -> tuple[torch.Tensor, torch.Tensor]:
    """(11,) goal c_d and spread s_d of boldness per digit (index 10: all digits), from split A."""
    images, labels = data.subset("A")
    b = data.boldness(images)
    groups = [b[labels == d] for d in range(10)] + [b]
    goal = torch.stack([g.quantile(BOLD_GOAL_QUANTILE) for g in groups])
    return goal, torch.stack([g.std() for g in groups])


def bold_score(boldness: torch.Tensor, digits: Sequence[int | None]) -> torch.Tensor:
    """-((b - c_d) / s_d)^2: 0 at the goal, negative on either side."""
    goal, spread = bold_goals()
    idx = torch.tensor([10 if d is None else d for d in digits])
    return -((boldness - goal[idx].to(boldness)) / spread[idx].to(boldness)).square()


class BoldReward:
    """``mini_bold``: the bounded boldness target (differentiable)."""

    differentiable = True

    def __init__(self, name: str = "mini_bold"):
        self.name = name

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return bold_score(data.boldness(pixels.float()), prompted_digits(prompts, len(pixels)))


# ----------------------------------------------------------------------------- the exemplar target
def exemplar_features(net: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The target classifier's penultimate features of the blurred image."""
    return net[:-1](data.lowpass(pixels.float(), EXEMPLAR_SIGMA))


@lru_cache(maxsize=1)
def exemplars() -> torch.Tensor:
    """(10,) index (into :func:`ntrk_bench.mini.data.digits`) of each digit's exemplar, from split C."""
    images, labels, split = data.digits()
    net = load_net("mini_align")
    chosen = []
    with torch.no_grad():
        for d in range(10):
            idx = np.flatnonzero((split == "C") & (labels.numpy() == d))
            f = exemplar_features(net, images[idx])
            typicality = F.cosine_similarity(f[:, None], f[None], dim=-1).mean(1)
            chosen.append(int(idx[np.argsort(typicality.numpy(), kind="stable")[int(EXEMPLAR_QUANTILE * len(idx))]]))
    return torch.tensor(chosen)


def exemplar_image(digit: int) -> torch.Tensor:
    return data.digits()[0][exemplars()[digit]]


class ExemplarReward:
    """``mini_exemplar``: cosine to the prompted digit's exemplar in the target classifier's features.
    A prompt naming no digit scores its best exemplar."""

    differentiable = True

    def __init__(self, name: str = "mini_exemplar"):
        self.name, self.net = name, load_net("mini_align")
        with torch.no_grad():
            self.reference = exemplar_features(self.net, data.digits()[0][exemplars()])  # (10, F)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        f = exemplar_features(self.net, pixels)
        cos = F.cosine_similarity(f[:, None], self.reference.to(f)[None], dim=-1)  # (B, 10)
        return prompted_column(cos, prompted_digits(prompts, len(pixels)))


# ----------------------------------------------------------------------------- held-out evaluators
class ClassifierReward:
    """log p(digit named by the prompt | image); prompts naming no digit score the most likely digit."""

    differentiable = True

    def __init__(self, name: str = "mini_align"):
        self.name, self.net = name, load_net(name)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels.float())

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return prompted_column(self.logits(pixels).log_softmax(-1), prompted_digits(prompts, len(pixels)))

    def accuracy(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """1 where the classifier's top digit is the prompted one (prompt-alignment accuracy)."""
        pred = self.logits(pixels).argmax(-1)
        return torch.tensor([float(d is not None and int(p) == d)
                             for p, d in zip(pred, prompted_digits(prompts, len(pixels)))])


class StrokeWidthReward:
    """``mini_bold_heldout``: the held-out MLP's stroke width in pixels (higher is bolder)."""

    differentiable = True

    def __init__(self, name: str = "mini_bold_heldout"):
        self.name, self.net = name, load_net(name)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return self.net(pixels.float()).squeeze(-1)


class ExemplarHeldOut:
    """``mini_exemplar_heldout``: likeness to the prompted digit's exemplar through the held-out classifier's
    hidden layer (cosine) and in pixel-PCA space (``<name>_pca_distance``, lower is closer)."""

    def __init__(self, name: str = "mini_exemplar_heldout"):
        self.name, self.net = name, load_net("mini_align_heldout")

    def evaluate(self, pixels: torch.Tensor, prompts: Sequence[str], latents=None) -> dict:
        from ntrk_bench.mini.quality import features

        pixels = pixels.float()
        reference = data.digits()[0][exemplars()]
        with torch.no_grad():
            hidden = self.net[:-1]
            cos = F.cosine_similarity(hidden(pixels)[:, None], hidden(reference)[None], dim=-1)  # (B, 10)
            dist = torch.cdist(features(pixels), features(reference))  # (B, 10)
        digits = prompted_digits(prompts, len(pixels))  # a prompt naming no digit: its nearest exemplar
        pick = torch.tensor([int(dist[i].argmin()) if d is None else d for i, d in enumerate(digits)])
        rows = torch.arange(len(pixels))
        return {self.name: cos[rows, pick].tolist(), f"{self.name}_pca_distance": dist[rows, pick].float().tolist()}


__all__ = ["BoldReward", "ClassifierReward", "ExemplarHeldOut", "ExemplarReward", "SPECS", "StrokeWidthReward",
           "bold_goals", "bold_score", "exemplars", "load_net"]
