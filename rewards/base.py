"""The reward interface shared by target rewards and held-out evaluators."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class Reward(Protocol):
    name: str
    #: whether gradients flow from the score to the pixels (needed for a target reward of a gradient method)
    differentiable: bool

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores (B,) for pixels in [0, 1] of shape (B, ...) and one prompt per sample."""
