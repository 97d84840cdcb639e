"""Rewards behind one interface: ``reward(pixels, prompts) -> (B,)`` scores, differentiable where stated."""
from .base import Reward
from .analytic import LinearReward

__all__ = ["LinearReward", "Reward"]
