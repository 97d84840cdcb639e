"""The Noise-Tilted Reverse Kernel (paper Sec. 3.5, eqs. 10-13, App. A.4).

NTRK keeps the base reverse mean and the nominal std, and replaces the standard Gaussian draw by

    eps_tilde = gamma * W(grad) + sqrt(1 - gamma^2) * eps,        eps ~ N(0, I)          (eq. 11)

where grad is the reward gradient of the decoded Tweedie estimate w.r.t. the current state (taken
through the denoiser) and W the whitening operator. Since W(grad) is typical N(0, I)-looking noise and
independent of eps, eps_tilde keeps the Gaussian form of eq. 10: the step stays noise-compatible
(eq. 13). gamma in [0, 1] is the guidance strength (paper: 0.3 on FLUX aesthetic).

The reward-aligned displacement of one step is std * gamma * cos(W(g), g) * sqrt(D) (App. A.5, eq. 63), so
a fixed gamma means different things at different latent sizes. ``gamma="auto"`` holds that effective
strength fixed instead: gamma = strength / (cos(W(g), g) sqrt(D)) per sample and step (cos is measured on
the spot, for free), capped at ``gamma_max``. The default strength is the paper's setting: gamma = 0.3 on
FLUX's 65,536-dim latent, where whitening leaves structured gradients with cos ~ 0.1 (measured, 0.01-0.2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch

from .limits import Limit, positive
from .method import Chain, Problem
from .sampling import Evaluation, NoiseRule


#: effective strength gamma cos sqrt(D) of the paper's FLUX setting (App. A.5): 0.3 x 0.1 x 256
STRENGTH_REF = 0.3 * 0.1 * math.sqrt(65_536)


def strength_gamma(grad: torch.Tensor, w: torch.Tensor, strength: float = STRENGTH_REF,
                   gamma_max: float = 0.95) -> torch.Tensor:
    """Per-sample gamma with effective strength gamma cos(W(g), g) sqrt(D) = ``strength`` (App. A.5, eq. 63)."""
    cos = torch.nn.functional.cosine_similarity(w.flatten(1).float(), grad.flatten(1).float(), dim=1)
    return (strength / (cos.clamp_min(1e-6) * math.sqrt(grad[0].numel()))).clamp(0.0, gamma_max)


def resolve_gamma(gamma: float | str, grad: torch.Tensor, w: torch.Tensor, strength: float) -> torch.Tensor:
    """(B,) guidance strengths: a fixed gamma, or ``"auto"`` (dimension-aware, see the module docstring)."""
    if gamma == "auto":
        return strength_gamma(grad, w, strength)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"NTRK guidance strength gamma must lie in [0, 1] or be 'auto', got {gamma}")
    return torch.full((grad.shape[0],), float(gamma), device=grad.device)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def tilted_noise(grad: torch.Tensor, eps: torch.Tensor, gamma: float | str,
                 whiten: Callable[[torch.Tensor], torch.Tensor], strength: float = STRENGTH_REF) -> torch.Tensor:
    """eq. 11. Samples whose gradient vanished carry no direction and get the plain draw eps."""
    if gamma == 0.0:
        return eps
    w = whiten(grad).to(eps.dtype)
    g = _per_sample(resolve_gamma(gamma, grad, w, strength), eps)
    alive = grad.flatten(1).abs().amax(dim=1) > 0
    tilted = g * w + (1.0 - g * g).sqrt() * eps
    return torch.where(alive.view(-1, *([1] * (eps.dim() - 1))), tilted, eps)


def ntrk_rule(gamma: float | str, whiten: Callable[[torch.Tensor], torch.Tensor],
              strength: float = STRENGTH_REF) -> NoiseRule:
    """The noise rule of NTRK for :func:`ntrk_bench.sampling.sample_chain` (needs a ``value``)."""

    def rule(ev: Evaluation, eps: torch.Tensor, k: int) -> torch.Tensor:
        if ev.grad is None:
            raise ValueError("NTRK needs the reward gradient: pass a value function to the sampler")
        return tilted_noise(ev.grad, eps, gamma, whiten, strength)

    return rule


def mean_shift_rule(gamma: float | str, whiten: Callable[[torch.Tensor], torch.Tensor],
                    strength: float = STRENGTH_REF):
    """The mean-shift control: the mean of NTRK's tilted noise, std gamma W(g), moved into the kernel mean,
    with the full fresh noise kept. Same direction and expected displacement as NTRK; only where the
    guidance enters (mean vs noise) differs - "noise tilt" vs "stronger guidance"."""

    def shift(ev: Evaluation, std: float, k: int) -> torch.Tensor:
        w = whiten(ev.grad).to(ev.grad.dtype)
        return std * _per_sample(resolve_gamma(gamma, ev.grad, w, strength), w) * w

    return shift


#: gamma: a fixed strength in [0, 1] (eq. 11) or "auto"
GAMMA = Limit(lambda v: v == "auto" if isinstance(v, str) else 0 <= v <= 1,
              "in [0, 1] (NTRK mixes gamma W(g) with sqrt(1 - gamma^2) noise) or auto")


@dataclass
class NTRK(Chain):
    """NTRK (eqs. 10-13): 1 NFE per step; particles > 1 is NTRK-dagger (Best-of-N over independent runs)."""

    gamma: float | str = "auto"
    strength: float = STRENGTH_REF
    whitening: Optional[Any] = None  # a conf/whitening block (None: ``full``)
    label: ClassVar[str] = "NTRK"
    ledger_name: ClassVar[str] = "ntrk"
    needs_grad: ClassVar[bool] = True
    dagger: ClassVar[bool] = True
    limits: ClassVar[dict] = {"gamma": GAMMA, "strength": positive}

    def noise_rule(self, problem: Problem) -> NoiseRule:
        return ntrk_rule(self.gamma, problem.whitening(self.whitening), self.strength)

    @property
    def whitening_name(self) -> str | None:
        return (self.whitening or {}).get("name", "full")
