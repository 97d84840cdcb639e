"""Rewards behind one interface: ``reward(pixels, prompts) -> (B,)`` scores, differentiable where stated.

The registry is the Hydra group ``conf/reward/``: one YAML per reward naming its class (``_target_``) and
its weights (hub ids, offline by default). ``ntrk_bench.config.build_reward`` builds a target reward by
name; the evaluation stage wraps a reward (or a file-based external evaluator) as a held-out evaluator.
"""
from .analytic import LinearReward
from .base import Reward

__all__ = ["LinearReward", "Reward"]
