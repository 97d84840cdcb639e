"""Rewards behind one interface: ``reward(pixels, prompts) -> (B,)`` scores, differentiable where stated.

The registry is the Hydra group ``conf/reward/``: one YAML per reward naming its class (``_target_``) and
its weights (hub ids, offline by default). ``build_reward`` makes a target reward; ``build_evaluator``
wraps a reward (or a file-based external evaluator) for the evaluation stage.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .analytic import LinearReward
from .base import Reward


def build_reward(name: str, latent_shape=None, **overrides):
    """A reward by its ``conf/reward/<name>.yaml``; keyword overrides replace config values (tests point the
    hub ids at local tiny models)."""
    from hydra.utils import instantiate

    from ntrk_bench.config import load_group

    try:
        cfg = load_group("reward", name)
    except FileNotFoundError as err:
        raise KeyError(f"unknown reward {name!r}: {err}") from None
    if name == "linear":
        if latent_shape is None:
            raise ValueError("the linear reward needs the model's latent shape")
        overrides["shape"] = tuple(latent_shape)
    try:
        return instantiate(cfg, **overrides)
    except Exception as err:  # Hydra wraps errors; surface the one-line ones (missing weights or package)
        cause = err.__cause__
        if isinstance(cause, (ImportError, RuntimeError, KeyError, ValueError)):
            raise cause from None
        raise


class RewardEvaluator:
    """A reward as a held-out evaluator: per-sample scores (and accuracy where the reward has one)."""

    def __init__(self, name: str, reward, batch_size: int = 16):
        self.name, self.reward, self.batch_size = name, reward, batch_size

    def evaluate(self, pixels: torch.Tensor, prompts: Sequence[str], latents=None) -> dict:
        out: dict[str, list] = {}
        with torch.no_grad():
            for i in range(0, len(pixels), self.batch_size):
                x, p = pixels[i:i + self.batch_size], list(prompts[i:i + self.batch_size])
                out.setdefault(self.name, []).extend(self.reward(x, p).float().tolist())
                if hasattr(self.reward, "accuracy"):
                    out.setdefault(f"{self.name}_accuracy", []).extend(self.reward.accuracy(x, p).float().tolist())
        return out


def build_evaluator(name: str, **overrides):
    r = build_reward(name, **overrides)
    return r if hasattr(r, "evaluate") or getattr(r, "reads_files", False) else RewardEvaluator(name, r)


__all__ = ["LinearReward", "Reward", "RewardEvaluator", "build_evaluator", "build_reward"]
