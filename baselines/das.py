"""DAS: SMC with tempered twisted proposals (Kim et al., "Test-time alignment of diffusion models without
reward over-optimization", ICLR 2025; reference Jaewoopudding/das).

Proposal N(mean + std^2 lambda_{k+1} grad / alpha, std^2), twist lambda_k r(x0_hat) / alpha, SSP
resampling at ESS < 0.5 N, answer = the particle of largest final weight. Defaults: alpha (``kl_coeff``)
0.005 as DAS's aesthetic config; tempering gamma scaled to the number of steps (``auto``: lambda reaches 1
at 87% of the steps, as gamma = 0.008 does over DAS's 100) - set ``tempering_gamma: 0.008`` to port the
100-step value unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ntrk_bench.limits import at_least, choice, count, positive, unit
from ntrk_bench.method import Method, Problem, Result

from .smc import RESAMPLERS, SMC, TwistProposal, das_tempering


@dataclass
class DAS(Method):
    particles: int = 20
    alpha: float = 0.005
    tempering_gamma: float | str = "auto"
    ess_threshold: float = 0.5
    resampler: str = "ssp"
    label: ClassVar[str] = "DAS"
    ledger_name: ClassVar[str] = "das"
    limits: ClassVar[dict] = {"particles": count, "alpha": positive, "tempering_gamma": at_least(0) | choice("auto"),
                              "ess_threshold": unit, "resampler": choice(*RESAMPLERS)}

    def __call__(self, p: Problem) -> Result:
        smc = SMC(self.particles, self.alpha, TwistProposal(), das_tempering(p.steps, self.tempering_gamma),
                  self.ess_threshold, self.resampler, select="max_weight")
        return smc(p)
