"""The shared sampling loop: evaluate the denoiser, then take one reverse-kernel step.

Methods plug in through two hooks and nothing else:

* ``noise_rule(ev, eps, k)`` returns the standardized noise injected at step k (base: ``eps``; NTRK: the
  noise-tilted draw of eq. 11);
* ``shift_rule(ev, std, k)`` returns a shift of the kernel mean (mean-shifted kernels, eq. 6), or None.

The reward gradient, when a ``value`` function is given, is taken w.r.t. the current state *through the
denoiser* (x_tau -> model -> Tweedie x0 -> decode -> reward), and the velocity of that same pass drives
the step: one NFE per step (paper Sec. 3.5, eq. 13).
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

    @staticmethod
    def cat(parts: list["Evaluation"]) -> "Evaluation":
        """The evaluations of consecutive chunks of one batch, as one."""
        def join(ts):
            return None if ts[0] is None else torch.cat(ts)

        den = Denoised(*(torch.cat(ts) for ts in zip(*(p.den for p in parts))))
        return Evaluation(den, join([p.value for p in parts]), join([p.grad for p in parts]))

    def select(self, index) -> "Evaluation":
        """The evaluations of the samples at ``index`` (a tensor of indices)."""
        pick = (lambda t: None if t is None else t[index])
        return Evaluation(self.den.select(index), pick(self.value), pick(self.grad))


class NonFiniteReward(FloatingPointError):
    """A reward value or its gradient came back NaN or infinite: the step cannot be taken honestly."""

    def __init__(self, what: str, tau: float, where: str = ""):
        self.what, self.tau, self.where = what, tau, where
        super().__init__(f"non-finite reward {what} at tau={tau:.4g}{where}")


def check_finite(what: str, t: torch.Tensor, tau) -> torch.Tensor:
    """``t`` itself, or NonFiniteReward naming what went non-finite and where (never zeroed silently)."""
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteReward(what, float(tau))
    return t


Value = Callable[[torch.Tensor], torch.Tensor]  # clean latent x0 (B, ...) -> reward (B,), differentiable
NoiseRule = Callable[[Evaluation, torch.Tensor, int], torch.Tensor]
ShiftRule = Callable[[Evaluation, float, int], Optional[torch.Tensor]]
Evaluator = Callable[[torch.Tensor, Any], Evaluation]  # (x, tau) -> Evaluation
Normal = Callable[[tuple], torch.Tensor]  # shape -> standard-normal draws on the state's device and dtype


def evaluate_denoiser(sde: FlowSDE, model, x: torch.Tensor, tau, cond: Any, value: Value | None = None,
             with_grad: bool = True) -> Evaluation:
    """One denoiser pass at (x, tau); with ``value``, also the reward of the Tweedie estimate and, if
    ``with_grad``, its gradient w.r.t. x taken through the denoiser."""
    if value is None or not with_grad:
        with torch.no_grad():
            den = sde.denoise(model, x, tau, cond)
            return Evaluation(den, None if value is None else check_finite("value", value(den.x0).detach(), tau))
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        den = sde.denoise(model, xg, tau, cond)
        val = check_finite("value", value(den.x0), tau)
        (grad,) = torch.autograd.grad(val.sum(), xg)
    return Evaluation(den.detach(), val.detach(), check_finite("gradient", grad, tau))


def sample_chain(sde: FlowSDE, x: torch.Tensor, steps: int, normal: Normal, evaluate: Evaluator,
                 noise_rule: NoiseRule | None = None, shift_rule: ShiftRule | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Integrate the reverse SDE from x at tau = 1 to tau = 0 in ``steps`` kernel steps; returns x at tau = 0.

    Fresh noise is drawn (``normal``) once per step whatever the method, so methods that agree on the
    injected noise (e.g. NTRK with gamma = 0 and the base kernel) produce identical chains.
    """
    times = sde.times(steps)
    for k in tqdm(range(steps), disable=not progress, desc="sampling", leave=False):
        ev = evaluate(x, times[k])
        eps = normal(x.shape)
        noise = eps if noise_rule is None else noise_rule(ev, eps, k)
        shift = None if shift_rule is None else shift_rule(ev, sde.std(times[k], times[k + 1]), k)
        x = sde.step(x, ev.den, times[k], times[k + 1], noise, shift)
    return x


def model_evaluator(sde: FlowSDE, model, cond: Any, value: Value | None = None) -> Evaluator:
    """(x, tau) -> one denoiser pass of ``model`` under ``cond`` (a batch of possibly different prompts)."""
    return lambda x, tau: evaluate_denoiser(sde, model, x, tau, cond, value)


@dataclass
class NoiseSource:
    """Seeded draws made on the CPU (``generator``) and moved to the owner's device and dtype, so that a seed
    reproduces the same numbers whatever the device (as diffusers' ``randn_tensor`` with a CPU generator)."""

    generator: Optional[torch.Generator] = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def normal(self, shape) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator).to(self.device, self.dtype)

    def uniform(self, n: int) -> torch.Tensor:
        """(n,) uniforms in float64 (accept/reject decisions)."""
        return torch.rand(n, generator=self.generator, dtype=torch.float64).to(self.device)

    def permutation(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator).to(self.device)


def initial_noise(model, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """x at tau = 1 for ``batch`` samples: standard normal on the model's device and dtype."""
    return NoiseSource(generator, getattr(model, "device", torch.device("cpu")),
                       getattr(model, "dtype", torch.float32)).normal((batch, *model.latent_shape))


def sample_model(sde: FlowSDE, model, cond: Any, x: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                 value: Value | None = None, noise_rule: NoiseRule | None = None, shift_rule: ShiftRule | None = None,
                 progress: bool = False) -> torch.Tensor:
    """:func:`sample_chain` for a batch under one conditioning ``cond`` (prompts may differ per sample), with
    fresh noise from a CPU ``generator`` moved to x's device and dtype."""
    noise = NoiseSource(generator, x.device, x.dtype)
    return sample_chain(sde, x, steps, noise.normal, model_evaluator(sde, model, cond, value), noise_rule, shift_rule,
                        progress)
