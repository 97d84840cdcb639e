"""Digits data for the mini suite: scikit-learn's bundled 8 x 8 digits, upsampled to 64 x 64 pixels.

Pixel space: (1, 64, 64) grey images in [0, 1]. Latent space: (4, 32, 32), a 2 x 2 space-to-depth of the
image rescaled to [-1, 1] - the same "channels x H/2 x W/2" geometry as a packed VAE latent, with 4,096
dims (the whitening operator needs >= 4,096 to act as in the paper). Three disjoint, stratified splits:
``A`` trains the target rewards, ``B`` the held-out evaluators, ``C`` is the real-data reference for
quality measures. The exact tier's mixture is fit on A + B.
"""
from __future__ import annotations

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


def ink(images: torch.Tensor) -> torch.Tensor:
    """The mini "aesthetic" attribute: mean ink of the stroke (bolder digits score higher), z-scored on all data."""
    raw = images.flatten(1).mean(1)
    all_raw = digits()[0].flatten(1).mean(1)
    return (raw - all_raw.mean()) / all_raw.std()
