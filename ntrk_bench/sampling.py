"""The shared sampling loop: evaluate the denoiser, then take one reverse-kernel step.

Methods plug in through two hooks and nothing else:

* ``noise_rule(ev, eps, k)`` returns the standardized noise injected at step k (base: ``eps``; NTRK: the
  noise-tilted draw of eq. 11);
* ``shift_rule(ev, std, k)`` returns a shift of the kernel mean (mean-shifted kernels, eq. 6), or None.

The reward gradient, when a ``value`` function is given, is taken w.r.t. the current state *through the
denoiser* (x_tau -> model -> Tweedie x0 -> decode -> reward), and the velocity of that same pass drives
the step: one NFE per step (anchors Sec. 0.3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from .sde import Denoised, FlowSDE


@dataclass
class Evaluation:
    den: Denoised
    value: Optional[torch.Tensor] = None  # reward of the decoded Tweedie estimate, (B,)
    grad: Optional[torch.Tensor] = None  # d value / d x_tau, same shape as x


Value = Callable[[torch.Tensor], torch.Tensor]  # clean latent x0 (B, ...) -> reward (B,), differentiable
NoiseRule = Callable[[Evaluation, torch.Tensor, int], torch.Tensor]
ShiftRule = Callable[[Evaluation, float, int], Optional[torch.Tensor]]


def evaluate(sde: FlowSDE, model, x: torch.Tensor, tau, cond: Any, value: Value | None = None,
             with_grad: bool = True) -> Evaluation:
    """One denoiser pass at (x, tau); with ``value``, also the reward of the Tweedie estimate and, if
    ``with_grad``, its gradient w.r.t. x taken through the denoiser."""
    if value is None or not with_grad:
        with torch.no_grad():
            den = sde.denoise(model, x, tau, cond)
            return Evaluation(den, None if value is None else value(den.x0).detach())
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        den = sde.denoise(model, xg, tau, cond)
        val = value(den.x0)
        (grad,) = torch.autograd.grad(val.sum(), xg)
    return Evaluation(den.detach(), val.detach(), torch.nan_to_num(grad.float(), nan=0.0, posinf=0.0, neginf=0.0))


def sample_chain(sde: FlowSDE, model, cond: Any, x: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                 value: Value | None = None, noise_rule: NoiseRule | None = None, shift_rule: ShiftRule | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Integrate the reverse SDE from x at tau = 1 to tau = 0 in ``steps`` kernel steps; returns x at tau = 0.

    Fresh noise is drawn from ``generator`` once per step whatever the method, so methods that agree on the
    injected noise (e.g. NTRK with gamma = 0 and the base kernel) produce identical chains.
    """
    times = sde.times(steps)
    for k in tqdm(range(steps), disable=not progress, desc="sampling", leave=False):
        ev = evaluate(sde, model, x, times[k], cond, value)
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=x.device)
        noise = eps if noise_rule is None else noise_rule(ev, eps, k)
        shift = None if shift_rule is None else shift_rule(ev, sde.std(times[k], times[k + 1]), k)
        x = sde.step(x, ev.den, times[k], times[k + 1], noise, shift)
    return x


def initial_noise(model, batch: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """x at tau = 1: a standard normal latent, used as is in either schedule (anchors Sec. 2.2)."""
    return torch.randn((batch, *model.latent_shape), generator=generator, device=device)
