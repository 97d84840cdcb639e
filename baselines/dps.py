"""DPS: the mean-shifted reverse kernel (Chung et al., ICLR 2023; paper Sec. 3.3, eq. 6, App. A.2).

x_next = mu + eta * grad + std * eps with grad = d r(x0_hat(x)) / dx taken through the denoiser. App. A.2
derives eta = std^2 / alpha; as in the paper (and Psi-Sampler's tilted proposal) eta = ``scale`` * std^2
with ``scale`` = 1/alpha a free hyperparameter. Optional RMS cap on the gradient (Psi-Sampler's
``grad_norm``, 4e-4 on FLUX aesthetic). DPS-dagger = ``particles`` > 1 (Best-of-N).
"""
from __future__ import annotations

from ntrk_bench.methods import Chain, Problem


def cap_rms(g, cap: float | None):
    """Rescale each sample's gradient to RMS ``cap`` where it exceeds it (Psi-Sampler's ``grad_norm``)."""
    if cap is None:
        return g
    rms = g.flatten(1).square().mean(1).sqrt().clamp_min(1e-30)
    return g * (cap / rms).clamp(max=1.0).view(-1, *([1] * (g.dim() - 1)))


def dps_shift(scale: float, grad_rms_cap: float | None = None):
    def build(problem: Problem):
        def shift(ev, std, k):
            return scale * std * std * cap_rms(ev.grad, grad_rms_cap)
        return shift
    return build


def dps(particles: int = 1, scale: float = 10.0, grad_rms_cap: float | None = None) -> Chain:
    return Chain(particles, shift_rule=dps_shift(scale, grad_rms_cap), needs_grad=True)
