"""The reverse SDE of a rectified-flow model and its Euler-Maruyama kernel (paper eqs. 3-4, 33-34).

The forward ODE dx/dtau = u has the same marginals as dx = (u + g^2/2 score) dtau + g dW for any diffusion
coefficient g, so stepping backwards from tau to tau' = tau - dtau

    mean = x + (-u + g(tau)^2 / 2 * score) dtau,      std = g(tau) sqrt(dtau)                 (eq. 34)

is a draw from the base reverse kernel N(mean, std^2 I) (Psi-Sampler's step). Every
method of the harness moves through :meth:`FlowSDE.step`; they differ only in the noise they inject
(NTRK), a shift of the mean (DPS and relatives) or which draws they keep (search, SMC).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from .limits import at_least, choice
from .paths import Coeffs, make_schedule, model_time, score, tweedie, velocity_to_schedule


# ----------------------------------------------------------------------------- time grids (Psi-Sampler, RBF)
def time_grid(kind: str, steps: int, device=None) -> torch.Tensor:
    """Decreasing sampler times tau_0 = 1 > ... > tau_{N-1} > tau_N = 0 (N + 1 points, float64).

    * ``linear``: linspace(1, 1/N, N) then 0 (Psi-Sampler ``time_schedule: linear``; dtau = 1/N).
    * ``sqrt``: sqrt(1 - x^2) for x in linspace(0, 1 - 1/N, N) then 0 (Psi-Sampler ``nonlinear``, RBF ``exp``).
    """
    if steps < 1:
        raise ValueError(f"need at least one step, got {steps}")
    if kind == "linear":
        head = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    elif kind == "sqrt":
        head = torch.sqrt(1 - torch.linspace(0.0, 1.0 - 1.0 / steps, steps, dtype=torch.float64) ** 2)
    else:
        raise ValueError(f"unknown time grid {kind!r}; expected 'linear' or 'sqrt'")
    return torch.cat([head, head.new_zeros(1)]).to(device)


# ----------------------------------------------------------------------------- diffusion coefficients g(tau)
def diffusion_coefficient(kind: str, tau: torch.Tensor, c: Coeffs, norm: float) -> torch.Tensor:
    """g(tau) for the reverse SDE.

    * ``rev_original``: norm (1 - (tau - 1)^2) - Psi-Sampler's default (1 at tau = 1, 0 at tau = 0).
    * ``square``: norm tau^2 - RBF's shipped configs (norm 3.0).
    * ``linear``: norm tau; ``sigma``: norm sigma(tau); ``constant``: norm; ``ode``: 0 (probability-flow ODE).
    """
    if kind == "rev_original":
        return norm * (1 - (tau - 1) ** 2)
    if kind == "square":
        return norm * tau ** 2
    if kind == "linear":
        return norm * tau
    if kind == "sigma":
        return norm * c.sigma
    if kind == "constant":
        return torch.full_like(tau, norm)
    if kind == "ode":
        return torch.zeros_like(tau)
    raise ValueError(f"unknown diffusion coefficient {kind!r}")


def working_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the kernel's maths: the state's, at least float32 (a bf16 state is stepped in float32)."""
    return torch.promote_types(x.dtype, torch.float32)


class Denoised(NamedTuple):
    """One denoiser evaluation at sampler time tau, in the sampler's schedule."""

    v: torch.Tensor  # model (linear-path) velocity
    u: torch.Tensor  # sampler-schedule velocity
    x0: torch.Tensor  # Tweedie posterior mean E[x0 | x]
    score: torch.Tensor  # grad log p_tau(x)

    def detach(self) -> "Denoised":
        return Denoised(*(t.detach() for t in self))

    def select(self, index) -> "Denoised":
        """The evaluations of the samples at ``index`` (an int keeps a batch dim of 1; a tensor gathers)."""
        index = slice(index, index + 1) if isinstance(index, int) else index
        return Denoised(*(t[index] for t in self))


@dataclass(frozen=True)
class FlowSDE:
    """Configuration of the reverse SDE: schedule, time grid, diffusion coefficient.

    Defaults are Psi-Sampler's FLUX setting (KAIST-Visual-AI-Group/Psi-Sampler): VP time (beta 0.1 -> 20), linear grid,
    ``rev_original`` coefficient with norm 1.0. ``schedule="linear"`` integrates the plain
    linear-interpolant form with no conversion.
    """

    schedule: str = "vp"
    grid: str = "linear"
    diffusion: str = "rev_original"
    diffusion_norm: float = 1.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    limits: ClassVar[dict] = {"schedule": choice("vp", "linear"), "grid": choice("linear", "sqrt"),
                              "diffusion": choice("rev_original", "square", "linear", "sigma", "constant", "ode"),
                              "diffusion_norm": at_least(0)}

    @property
    def path(self):
        return make_schedule(self.schedule, self.beta_min, self.beta_max)

    def times(self, steps: int, device=None) -> torch.Tensor:
        return time_grid(self.grid, steps, device)

    def denoise(self, model, x: torch.Tensor, tau: torch.Tensor | float, cond: Any) -> Denoised:
        """One NFE: query the model at the equal-SNR linear time with the state rescaled (Psi-Sampler's
        conversion, paper eqs. 31-33). Maths in the state's dtype, at least float32 (the model owns it)."""
        tau = torch.as_tensor(tau, dtype=torch.float64, device=x.device)
        c = self.path(tau)
        mt = model_time(c)
        dt = working_dtype(x)
        x = x.to(dt)
        t = mt.t.to(dt).expand(x.shape[0])
        v = model.velocity(x / mt.s.to(dt), t, cond).to(dt)
        cs = Coeffs(*(q.to(dt) for q in c))
        mts = type(mt)(*(q.to(dt) for q in mt))
        u = velocity_to_schedule(v, x, mts)
        return Denoised(v, u, tweedie(u, x, cs), score(u, x, cs))

    def g(self, tau) -> float:
        tau = torch.as_tensor(tau, dtype=torch.float64)
        return float(diffusion_coefficient(self.diffusion, tau, self.path(tau), self.diffusion_norm))

    def std(self, tau, tau_next) -> float:
        """Kernel std g(tau) sqrt(tau - tau_next) (eq. 34)."""
        return self.g(tau) * math.sqrt(float(tau) - float(tau_next))

    def kernel(self, x: torch.Tensor, den: Denoised, tau, tau_next) -> tuple[torch.Tensor, float]:
        """Mean and std of the base reverse kernel from tau to tau_next < tau (eq. 34), in the state's dtype."""
        g = self.g(tau)
        mean = x.to(working_dtype(x)) + (-den.u + 0.5 * g * g * den.score) * (float(tau) - float(tau_next))
        return mean, self.std(tau, tau_next)

    def renoise(self, x: torch.Tensor, tau_from, tau_to, eps: torch.Tensor) -> torch.Tensor:
        """Forward kernel from tau_from back up to tau_to > tau_from in the sampler's schedule:
        x_to = (a_to / a_from) x + sqrt(s_to^2 - (a_to / a_from)^2 s_from^2) eps (FreeDoM's time travel;
        Psi-Sampler's ``reverse_step``)."""
        c_from = self.path(torch.as_tensor(tau_from, dtype=torch.float64))
        c_to = self.path(torch.as_tensor(tau_to, dtype=torch.float64))
        ratio = float(c_to.alpha / c_from.alpha)
        var = float(c_to.sigma ** 2 - ratio ** 2 * c_from.sigma ** 2)
        dt = working_dtype(x)
        return (ratio * x.to(dt) + max(var, 0.0) ** 0.5 * eps.to(dt)).to(x.dtype)

    def step(self, x: torch.Tensor, den: Denoised, tau: float, tau_next: float, noise: torch.Tensor,
             shift: torch.Tensor | None = None) -> torch.Tensor:
        """x_next = mean (+ shift) + std * noise: the one reverse-kernel step every method shares (eq. 4)."""
        mean, std = self.kernel(x, den, tau, tau_next)
        if shift is not None:
            mean = mean + shift
        return (mean + std * noise.to(mean.dtype)).to(x.dtype)


__all__ = ["Denoised", "FlowSDE", "diffusion_coefficient", "time_grid"]
