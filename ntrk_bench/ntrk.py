"""The Noise-Tilted Reverse Kernel (paper Sec. 3.5, eqs. 10-13, App. A.4).

NTRK keeps the base reverse mean and the nominal std, and replaces the standard Gaussian draw by

    eps_tilde = gamma * W(grad) + sqrt(1 - gamma^2) * eps,        eps ~ N(0, I)          (eq. 11)

where grad is the reward gradient of the decoded Tweedie estimate w.r.t. the current state (taken
through the denoiser) and W the whitening operator. Since W(grad) is typical N(0, I)-looking noise and
independent of eps, eps_tilde keeps the Gaussian form of eq. 10: the step stays noise-compatible
(eq. 13). gamma in [0, 1] is the guidance strength (paper: 0.3 on FLUX aesthetic).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .sampling import Evaluation, NoiseRule


def tilted_noise(grad: torch.Tensor, eps: torch.Tensor, gamma: float, whiten: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """eq. 11. Samples whose gradient vanished carry no direction and get the plain draw eps."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"NTRK guidance strength gamma must lie in [0, 1], got {gamma}")
    if gamma == 0.0:
        return eps
    w = whiten(grad).float()
    alive = grad.flatten(1).abs().amax(dim=1) > 0
    tilted = gamma * w + math.sqrt(1.0 - gamma * gamma) * eps
    return torch.where(alive.view(-1, *([1] * (eps.dim() - 1))), tilted, eps)


def ntrk_rule(gamma: float, whiten: Callable[[torch.Tensor], torch.Tensor]) -> NoiseRule:
    """The noise rule of NTRK for :func:`ntrk_bench.sampling.sample_chain` (needs a ``value``)."""

    def rule(ev: Evaluation, eps: torch.Tensor, k: int) -> torch.Tensor:
        if ev.grad is None:
            raise ValueError("NTRK needs the reward gradient: pass a value function to the sampler")
        return tilted_noise(ev.grad, eps, gamma, whiten)

    return rule
