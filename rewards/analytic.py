"""Analytic rewards for exact tests: under a Gaussian prior their reward-tilted targets are closed-form."""
from __future__ import annotations

from typing import Sequence

import torch

from ntrk_bench.fields import smooth_field


class LinearReward:
    """r(x) = <w, x>: the tilted law exp(r/alpha) N(mu, S) is N(mu + S w / alpha, S)."""

    differentiable = True

    def __init__(self, direction: torch.Tensor, name: str = "linear"):
        self.direction = direction.float()
        self.name = name

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return (pixels * self.direction.to(pixels.device, pixels.dtype)).flatten(1).sum(1)

    @classmethod
    def smooth(cls, shape, seed: int = 0) -> "LinearReward":
        """A unit-norm smooth direction, like the low-frequency gradients of real rewards."""
        d = smooth_field((1, *shape), seed)[0]
        return cls(d / d.norm())
