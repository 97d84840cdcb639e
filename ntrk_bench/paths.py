"""Interpolant schedules and the conversion between them (paper App. A.1.2; Psi-Sampler's FLUX sampler, KAIST-Visual-AI-Group/Psi-Sampler).

A schedule gives x_tau = alpha(tau) x0 + sigma(tau) eps; tau = 1 is noise, tau = 0 is data. Every model of
the harness is a rectified flow: its velocity is for the *linear* interpolant alpha = 1 - t, sigma = t,
v = eps - x0. A sampler may integrate in another schedule (the VP time r that Psi-Sampler and RBF use for
FLUX): at sampler time tau the model is queried at the equal-SNR linear time t with the state rescaled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


class Coeffs(NamedTuple):
    alpha: torch.Tensor
    sigma: torch.Tensor
    d_alpha: torch.Tensor
    d_sigma: torch.Tensor


@dataclass(frozen=True)
class LinearSchedule:
    """Rectified flow / CondOT path: alpha = 1 - t, sigma = t."""

    def __call__(self, t: torch.Tensor) -> Coeffs:
        return Coeffs(1 - t, t, -torch.ones_like(t), torch.ones_like(t))


@dataclass(frozen=True)
class VPSchedule:
    """Variance-preserving path with linear beta(r) from beta_min to beta_max (Song et al., ICLR 2021, eq. 29).

    T(r) = beta_min r + (beta_max - beta_min) r^2 / 2, alpha = exp(-T/2), sigma = sqrt(1 - exp(-T)).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __call__(self, r: torch.Tensor) -> Coeffs:
        big_t = self.beta_min * r + 0.5 * (self.beta_max - self.beta_min) * r * r
        d_big_t = self.beta_min + (self.beta_max - self.beta_min) * r
        alpha = torch.exp(-0.5 * big_t)
        sigma = torch.sqrt(-torch.expm1(-big_t))
        return Coeffs(alpha, sigma, -0.5 * d_big_t * alpha, 0.5 * d_big_t * alpha * alpha / sigma)


def make_schedule(name: str, beta_min: float = 0.1, beta_max: float = 20.0):
    if name == "linear":
        return LinearSchedule()
    if name == "vp":
        return VPSchedule(beta_min, beta_max)
    raise ValueError(f"unknown schedule {name!r}; expected 'linear' or 'vp'")


class ModelTime(NamedTuple):
    """Where a sampler-schedule state x_tau is evaluated by the linear-path model: v(x_tau / s, t)."""

    t: torch.Tensor  # equal-SNR linear time, t = sigma / (alpha + sigma)
    s: torch.Tensor  # scale, x_tau = s * x_t with s = alpha + sigma
    dt: torch.Tensor  # dt / dtau
    ds: torch.Tensor  # ds / dtau


def model_time(c: Coeffs) -> ModelTime:
    """Equal-SNR conversion to the linear path (paper eqs. 31-32: t = 1 / (1 + alpha/sigma), s = sigma/t).

    With s = alpha + sigma, alpha_tau = s (1 - t) and sigma_tau = s t, so x_tau = s x_t exactly; for the
    linear schedule itself s = 1, t = tau, and the conversion is the identity.
    """
    s = c.alpha + c.sigma
    t = c.sigma / s
    dt = (c.alpha * c.d_sigma - c.sigma * c.d_alpha) / (s * s)
    return ModelTime(t, s, dt, c.d_alpha + c.d_sigma)


def velocity_to_schedule(v: torch.Tensor, x: torch.Tensor, mt: ModelTime) -> torch.Tensor:
    """Sampler-schedule velocity u = d x_tau / d tau = (ds/dtau) x_tau / s + s (dt/dtau) v (Song et al., ICLR 2021, eq. 29)."""
    return _b(mt.ds / mt.s, x) * x + _b(mt.s * mt.dt, x) * v


def tweedie(u: torch.Tensor, x: torch.Tensor, c: Coeffs) -> torch.Tensor:
    """Posterior mean E[x0 | x_tau] from the velocity: (sigma u - sigma' x) / (alpha' sigma - sigma' alpha).

    Follows from u = alpha' E[x0|x] + sigma' E[eps|x] and x = alpha E[x0|x] + sigma E[eps|x] (eqs. 35-39);
    for the linear path it is x - t v.
    """
    den = c.d_alpha * c.sigma - c.d_sigma * c.alpha
    return (_b(c.sigma / den, x) * u - _b(c.d_sigma / den, x) * x)


def score(u: torch.Tensor, x: torch.Tensor, c: Coeffs) -> torch.Tensor:
    """Marginal score grad log p_tau(x) from the velocity (eq. 39): (ratio u - x) / (sigma^2 - ratio sigma' sigma),
    ratio = alpha / alpha'; for the linear path it is -(x + (1 - t) v) / t."""
    ratio = c.alpha / c.d_alpha
    var = c.sigma * c.sigma - ratio * c.d_sigma * c.sigma
    return _b(ratio / var, x) * u - _b(1.0 / var, x) * x


def _b(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample (B,) or scalar coefficient against a (B, ...) tensor."""
    coef = torch.as_tensor(coef, dtype=like.dtype, device=like.device)
    return coef.reshape(coef.shape + (1,) * (like.dim() - coef.dim())) if coef.dim() else coef


__all__ = ["Coeffs", "LinearSchedule", "ModelTime", "VPSchedule", "make_schedule", "model_time", "score",
           "tweedie", "velocity_to_schedule"]
