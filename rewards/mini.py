"""Rewards of the mini suite, mirroring the paper's target / held-out structure.

* ``mini_ink`` (target, the aesthetic analogue): a CNN regressing the digits' ink (stroke boldness,
  z-scored), trained on split A. Like the LAION aesthetic head, a learned scalar that can be hacked.
* ``mini_align`` (target, the text-alignment analogue): log p(prompted digit | image) under a CNN
  classifier trained on split A (PickScore's role).
* ``mini_ink_heldout`` / ``mini_align_heldout`` (held-out): MLPs on 16 x 16 pooled pixels trained on split B:
  another architecture, another input resolution, another data split, so that reward hacking of a target
  does not transfer to them.
* quality measures no target sees (``quality.py``): exact log-density under the mixture, Frechet distance
  in an independent PCA feature space fitted on split C, and diversity.

Weights are trained by ``scripts/train_mini_rewards.py`` and committed under ``rewards/weights/``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ntrk_bench.mini import data

WEIGHTS = Path(__file__).resolve().parent / "weights"


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
SPECS = {  # name: (architecture, outputs, training split, role)
    "mini_ink": ("cnn", 1, "A", "target"),
    "mini_align": ("cnn", 10, "A", "target"),
    "mini_ink_heldout": ("mlp", 1, "B", "held_out"),
    "mini_align_heldout": ("mlp", 10, "B", "held_out"),
}


def load_net(name: str) -> nn.Module:
    from safetensors.torch import load_file

    arch, out, _, _ = SPECS[name]
    path = WEIGHTS / f"{name}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"reward weights {path} are missing; train them with `make mini-train` "
                                "(scripts/train_mini_rewards.py, under a minute on a CPU)")
    net = ARCHS[arch](out)
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)


class InkReward:
    """Predicted ink (z-score) of each image; higher is bolder."""

    differentiable = True

    def __init__(self, name: str = "mini_ink"):
        self.name, self.net = name, load_net(name)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return self.net(pixels.float()).squeeze(-1)


class AlignReward:
    """log p(digit named by the prompt | image); prompts naming no digit score the most likely digit."""

    differentiable = True

    def __init__(self, name: str = "mini_align"):
        self.name, self.net = name, load_net(name)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels.float())

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        logp = self.logits(pixels).log_softmax(-1)
        labels = [data.label_of(p) for p in prompts]
        best = logp.max(-1).values
        picked = torch.stack([logp[i, lab] if lab is not None else best[i] for i, lab in enumerate(labels)])
        return picked

    def accuracy(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """1 where the classifier's top digit is the prompted one (prompt-alignment accuracy)."""
        pred = self.logits(pixels).argmax(-1)
        return torch.tensor([float(lab is not None and int(p) == lab) for p, lab in
                             zip(pred, (data.label_of(q) for q in prompts))])


def mini_reward(name: str):
    """Build a mini reward by name (the rewards' registry uses this)."""
    if name.startswith("mini_ink"):
        return InkReward(name)
    if name.startswith("mini_align"):
        return AlignReward(name)
    raise KeyError(f"unknown mini reward {name!r}; expected one of {sorted(SPECS)}")


def training_meta() -> dict:
    path = WEIGHTS / "mini_rewards.json"
    return json.loads(path.read_text()) if path.exists() else {}


__all__ = ["AlignReward", "InkReward", "SPECS", "load_net", "mini_reward"]
