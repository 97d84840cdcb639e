"""Digits data for the mini suite: scikit-learn's bundled 8 x 8 digits, upsampled to 64 x 64 pixels.

Pixel space: (1, 64, 64) grey images in [0, 1]. Latent space: (4, 32, 32), a 2 x 2 space-to-depth of the
image rescaled to [-1, 1] - the same "channels x H/2 x W/2" geometry as a packed VAE latent, with 4,096
dims (the whitening operator needs >= 4,096 to act as in the paper). Three disjoint, stratified splits:
``A`` trains the target rewards, ``B`` the held-out evaluators, ``C`` is the real-data reference for
quality measures. The exact tier's mixture is fit on A + B.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

IMAGE = (1, 64, 64)
LATENT = (4, 32, 32)
CLASSES = [str(i) for i in range(10)]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def prompt_for(label: int) -> str:
    return f"a handwritten {label}"


def label_of(prompt: str) -> int | None:
    """The digit a prompt asks for ("a handwritten 3", "a 3", "three"), or None (unconditional)."""
    for tok in prompt.lower().replace(",", " ").replace(".", " ").split():
        if tok in CLASSES:
            return int(tok)
        if tok in WORDS:
            return WORDS.index(tok)
    return None


def encode(img: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 1, 64, 64) in [0, 1] -> latents (B, 4, 32, 32) in [-1, 1]."""
    return F.pixel_unshuffle(img * 2 - 1, 2)


def decode(z: torch.Tensor) -> torch.Tensor:
    """Latents -> pixels in [0, 1]; differentiable inside the range, clamped like a VAE's postprocess."""
    return (F.pixel_shuffle(z, 2) * 0.5 + 0.5).clamp(0, 1)


@lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """All 1,797 digits as (images (N, 1, 64, 64) in [0, 1], labels (N,), split letters (N,))."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(small, size=IMAGE[1:], mode="bicubic", align_corners=False).clamp(0, 1)
    labels = torch.tensor(d.target)
    rng = np.random.default_rng(0)
    split = np.empty(len(labels), dtype="<U1")
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        n = len(idx)
        split[idx[: int(0.4 * n)]] = "A"
        split[idx[int(0.4 * n): int(0.8 * n)]] = "B"
        split[idx[int(0.8 * n):]] = "C"
    return images, labels, split


def subset(splits: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, split = digits()
    keep = torch.from_numpy(np.isin(split, list(splits)))
    return images[keep], labels[keep]


def lowpass(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur (std ``sigma`` pixels, edges replicated) of (B, 1, H, W) images; differentiable.
    The mini targets read images through it, so that pixel-level noise cannot pay (it averages out)."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-t.square() / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.conv2d(F.pad(images, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


#: boldness reads the image blurred at this std (pixels) and thresholded at mid-grey
BOLD_SIGMA, BOLD_THRESHOLD, BOLD_SOFTNESS = 2.0, 0.5, 0.05


def boldness(images: torch.Tensor) -> torch.Tensor:
    """(B,) share of the image covered by stroke after a low-pass: mean of sigmoid((blur(x) - 0.5) / 0.05).

    The mini aesthetic attribute (bolder digits score higher). Clamped zero-mean pixel noise cannot raise
    it: on the black background its blurred mean stays below mid-grey (it tends to 0.5 only as the noise
    grows without bound), and on the strokes clamping at 1 can only lower the blur."""
    return torch.sigmoid((lowpass(images, BOLD_SIGMA) - BOLD_THRESHOLD) / BOLD_SOFTNESS).flatten(1).mean(1)


def stroke_width(images: torch.Tensor) -> torch.Tensor:
    """(B,) mean stroke width in pixels, 2 x area / perimeter of the image thresholded at 0.5: another
    reading of boldness (the held-out evaluator's label), independent of a digit's length."""
    ink = images[:, 0] > 0.5
    area = ink.flatten(1).sum(1).float()
    edges = (ink[:, 1:] != ink[:, :-1]).flatten(1).sum(1) + (ink[:, :, 1:] != ink[:, :, :-1]).flatten(1).sum(1)
    return 2 * area / edges.float().clamp_min(1)
