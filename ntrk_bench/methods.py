"""What every method shares: the problem it solves, the result it returns, and the batched chain.

A :class:`Problem` is one item of a benchmark - one prompt, one seed - with the model (behind the NFE
counter), the reverse SDE, the target reward and the step count. A method is a callable
``method(problem) -> Result``. Single-trajectory methods (base, DPS, NTRK) differ only in the noise they
inject or the mean shift they apply, so they are one :class:`Chain` with ``particles`` independent
trajectories and Best-of-N selection on the final target reward (the paper's dagger rows; particles=1 is
the plain method).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from .ntrk import STRENGTH_REF, mean_shift_rule, ntrk_rule
from .sampling import NoiseRule, ShiftRule, initial_noise, sample_chain
from .sde import FlowSDE


@dataclass
class Problem:
    sde: FlowSDE
    model: Any  # a CountingModel
    prompt: str
    reward: Callable  # reward(pixels, prompts) -> (B,), differentiable
    steps: int
    generator: torch.Generator
    condition_model: bool = True

    def cond(self, n: int):
        return self.model.condition([self.prompt if self.condition_model else ""] * n)

    def value(self, x0: torch.Tensor) -> torch.Tensor:
        """Target reward of decoded clean latents (B,) - the quantity every method maximises."""
        return self.reward(self.model.decode(x0), [self.prompt] * len(x0))

    def noise(self, n: int) -> torch.Tensor:
        return initial_noise(self.model, n, self.generator)


@dataclass
class Result:
    x0: torch.Tensor  # (1, *latent_shape): the method's answer for this item
    reward: float
    info: dict = field(default_factory=dict)


def best_of(problem: Problem, x0: torch.Tensor, info: dict | None = None) -> Result:
    """Select the particle with the highest final target reward (no NFE: the reward sees pixels)."""
    with torch.no_grad():
        scores = problem.value(x0)
    i = int(scores.argmax())
    return Result(x0[i:i + 1], float(scores[i]), {"particle_rewards": scores.tolist(), **(info or {})})


@dataclass
class Chain:
    """``particles`` independent reverse-SDE trajectories, then Best-of-N (eq. 4 with a method's hooks)."""

    particles: int = 1
    noise_rule: Optional[Callable[[Problem], NoiseRule]] = None  # built per problem (e.g. NTRK's W)
    shift_rule: Optional[Callable[[Problem], ShiftRule]] = None
    needs_grad: bool = False

    def __call__(self, problem: Problem) -> Result:
        n = self.particles
        x = problem.noise(n)
        x0 = sample_chain(problem.sde, problem.model, problem.cond(n), x, problem.steps, problem.generator,
                          value=problem.value if self.needs_grad else None,
                          noise_rule=self.noise_rule(problem) if self.noise_rule else None,
                          shift_rule=self.shift_rule(problem) if self.shift_rule else None)
        return best_of(problem, x0)


def base(particles: int = 1) -> Chain:
    """The unguided reverse kernel; particles > 1 is plain Best-of-N."""
    return Chain(particles)


def uses_whitening(method: dict) -> bool:
    """Whether a method configuration applies the whitening operator: NTRK, its mean-shift control, and
    Psi-Sampler with NTRK's kernel as its proposal."""
    return method.get("name") in ("ntrk", "meanshift") or method.get("proposal") == "ntrk"


def whitening_per_shape(whitening=None) -> Callable[[Problem], Callable]:
    """problem -> the whitening operator for its latent shape, built once per shape (bounds are cached)."""
    from .config import load_group
    from .whitening import Whitening

    cfg = whitening if whitening is not None else load_group("whitening", "full")
    operators: dict = {}

    def get(problem: Problem):
        shape = tuple(problem.model.latent_shape)
        if shape not in operators:
            operators[shape] = Whitening(cfg, shape)
        return operators[shape]

    return get


def ntrk(particles: int = 1, gamma: float | str = 0.3, strength: float = STRENGTH_REF, whitening=None) -> Chain:
    """NTRK (eqs. 10-13); particles > 1 is NTRK-dagger (Best-of-N over independent NTRK runs);
    ``gamma="auto"``: dimension-aware strength (ntrk.py)."""
    operator = whitening_per_shape(whitening)
    return Chain(particles, noise_rule=lambda p: ntrk_rule(gamma, operator(p), strength), needs_grad=True)


def meanshift(particles: int = 1, gamma: float | str = 0.3, strength: float = STRENGTH_REF, whitening=None) -> Chain:
    """The mean-shift control of NTRK: the same whitened, rescaled gradient added to the mean (ntrk.py)."""
    operator = whitening_per_shape(whitening)
    return Chain(particles, shift_rule=lambda p: mean_shift_rule(gamma, operator(p), strength), needs_grad=True)
