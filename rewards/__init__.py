"""Rewards behind one interface: ``reward(pixels, prompts) -> (B,)`` scores, differentiable where stated.

``build_reward(name)`` is the registry: the mini suite's learned rewards, and analytic ones for tests.
"""
from .analytic import LinearReward
from .base import Reward


def build_reward(name: str, latent_shape=None):
    if name.startswith("mini_"):
        from .mini import mini_reward

        return mini_reward(name)
    if name == "linear":
        if latent_shape is None:
            raise ValueError("the linear reward needs the model's latent shape")
        return LinearReward.smooth(tuple(latent_shape), seed=1)
    raise KeyError(f"unknown reward {name!r}")


__all__ = ["LinearReward", "Reward", "build_reward"]
