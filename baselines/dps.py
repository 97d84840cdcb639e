"""DPS: the mean-shifted reverse kernel (Chung et al., ICLR 2023; paper Sec. 3.3, eq. 6, App. A.2).

x_next = mu + eta * grad + std * eps with grad = d r(x0_hat(x)) / dx taken through the denoiser. App. A.2
derives eta = std^2 / alpha; as in the paper (and Psi-Sampler's tilted proposal) eta = ``scale`` * std^2
with ``scale`` = 1/alpha a free hyperparameter. Optional RMS cap on the gradient (Psi-Sampler's
``grad_norm``, 4e-4 on FLUX aesthetic). DPS-dagger = ``particles`` > 1 (Best-of-N).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from ntrk_bench.limits import at_least, positive
from ntrk_bench.method import Chain, Problem
from ntrk_bench.sampling import ShiftRule


def cap_rms(g, cap: float | None):
    """Rescale each sample's gradient to RMS ``cap`` where it exceeds it (Psi-Sampler's ``grad_norm``)."""
    if cap is None:
        return g
    rms = g.flatten(1).square().mean(1).sqrt().clamp_min(1e-30)
    return g * (cap / rms).clamp(max=1.0).view(-1, *([1] * (g.dim() - 1)))


@dataclass
class DPS(Chain):
    particles: int = 1
    scale: float = 10.0
    grad_rms_cap: Optional[float] = None
    label: ClassVar[str] = "DPS"
    ledger_name: ClassVar[str] = "dps"
    needs_grad: ClassVar[bool] = True
    dagger: ClassVar[bool] = True
    limits: ClassVar[dict] = {"scale": at_least(0), "grad_rms_cap": positive}

    def shift_rule(self, problem: Problem) -> ShiftRule:
        def shift(ev, std, k):
            return self.scale * std * std * cap_rms(ev.grad, self.grad_rms_cap)
        return shift
