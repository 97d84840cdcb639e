"""Psi-Sampler: pCNL MCMC over the initial particles, then SMC (Yoon et al., NeurIPS 2025; reference
KAIST-Visual-AI-Group/Psi-Sampler).

MCMC target over the initial latent x (tau = 1): N(x; 0, I) exp(r(x0_hat(x, 1)) / alpha_mcmc), with the
preconditioned Crank-Nicolson Langevin proposal
    x' = rho x + sqrt(1 - rho^2) (xi + sqrt(h)/2 g),   g = grad r / alpha_mcmc,  rho = (1 - h/4) / (1 + h/4),
which leaves N(0, I) invariant, so the Metropolis-Hastings ratio involves only the reward terms:
J(a, b) - J(b, a) with J(a, b) = r_a/alpha - h/8 |g_a|^2 + sqrt(h)/2 <(b - rho a) / sqrt(1 - rho^2), g_a>.
``chains`` chains run ``burn_in + mcmc_steps`` evaluations each (1 NFE each, the first at the initial
state); the last ``mcmc_steps`` states are thinned to ``particles`` initial particles. Then SMC with the
tilted (DPS-style) proposal, no tempering, answer = the particle of largest final reward.

``25 + 25`` in the paper's tables: 5 chains x (25 + 25) = 250 NFE plus 10 particles x 25 steps = 250.
Switch ``init_weights``: ``uniform`` (default; the MCMC output already targets the tilted prior) or
``reward`` (the reference's ``init_weight_method: reward``, which counts the reward twice).
``proposal: ntrk`` runs NTRK's noise-tilted kernel inside this scaffold (the paper's "NTRK, 10 particles,
25 + 25" rows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from ntrk_bench.limits import at_least, choice, count, positive
from ntrk_bench.method import Cost, Method, Problem, Result, Row
from ntrk_bench.ntrk import GAMMA

from .smc import SMC, NoiseTiltProposal, TwistProposal


@dataclass
class PsiSampler(Method):
    particles: int = 10
    chains: int = 5
    burn_in: int = 25
    mcmc_steps: int = 25
    step_size: float = 0.5  # h
    alpha_mcmc: float = 0.1
    alpha: float = 0.1
    grad_rms_cap: Optional[float] = None  # 4e-4 in the FLUX aesthetic config
    init_weights: str = "uniform"
    proposal: str = "twist"  # twist | ntrk
    gamma: float = 0.3
    whitening: Optional[Any] = None  # a conf/whitening block, for proposal: ntrk (None: ``full``)
    label: ClassVar[str] = "Psi-Sampler"
    ledger_name: ClassVar[str] = "psi"
    limits: ClassVar[dict] = {"particles": count, "chains": count, "burn_in": at_least(0), "mcmc_steps": count,
                              "step_size": positive, "alpha_mcmc": positive, "alpha": positive,
                              "grad_rms_cap": positive, "init_weights": choice("uniform", "reward"),
                              "proposal": choice("twist", "ntrk"), "gamma": GAMMA}

    def __post_init__(self):
        if self.particles % self.chains:
            raise ValueError(f"psi: particles ({self.particles}) must be a multiple of chains ({self.chains})")
        if self.mcmc_steps < self.particles // self.chains:
            raise ValueError(f"psi: mcmc_steps ({self.mcmc_steps}) must be >= particles per chain "
                             f"({self.particles // self.chains})")

    def cost(self, steps: int) -> Cost:
        """pCNL chains cost chains x (burn-in + MCMC steps) before SMC; then 1 NFE per particle and step."""
        return Cost(self.chains * (self.burn_in + self.mcmc_steps), steps)

    @property
    def whitening_name(self) -> str | None:
        return (self.whitening or {}).get("name", "full") if self.proposal == "ntrk" else None

    def display_name(self) -> str:
        return "NTRK (Psi scaffold)" if self.proposal == "ntrk" else self.label

    def ledger_row(self, steps: int, nfe: int) -> Row:
        """Steps are "MCMC+SMC"; NTRK's kernel in the scaffold is the paper's "NTRK, 25+25" row."""
        label = f"{self.mcmc_steps}+{steps}"
        if self.proposal == "ntrk":
            return Row("ntrk", "psi", self.particles, label, nfe)
        return Row("psi", "", self.particles, label, nfe)

    def mcmc(self, p: Problem) -> tuple[torch.Tensor, float]:
        """Initial particles from pCNL chains; returns (particles, acceptance rate)."""
        h, a = self.step_size, self.alpha_mcmc
        rho = (1 - h / 4) / (1 + h / 4)
        c = math.sqrt(1 - rho * rho)
        tau = p.sde.times(p.steps)[0]

        def state(x):
            ev = p.evaluate(x, tau)
            return x, ev.value.double() / a, ev.grad.double() / a

        def log_j(xa, phi_a, ga, xb):
            inner = ((xb.double() - rho * xa.double()) / c * ga).flatten(1).sum(1)
            return phi_a - h / 8 * ga.flatten(1).square().sum(1) + math.sqrt(h) / 2 * inner

        x, phi, g = state(p.initial_noise(self.chains))
        kept, accepted = [], 0.0
        for it in range(1, self.burn_in + self.mcmc_steps):
            xi = p.randn(x.shape)
            x_new, phi_new, g_new = state((rho * x + c * (xi + math.sqrt(h) / 2 * g.float())).to(x.dtype))
            log_acc = log_j(x_new, phi_new, g_new, x) - log_j(x, phi, g, x_new)
            ok = p.noise.uniform(self.chains).log() < log_acc
            accepted += float(ok.double().mean())
            sel = ok.view(-1, *([1] * (x.dim() - 1)))
            x, phi, g = torch.where(sel, x_new, x), torch.where(ok, phi_new, phi), torch.where(sel, g_new, g)
            if it >= self.burn_in:
                kept.append(x)
        # chains_thinning: particles / chains states per chain, evenly spaced from each chain's first kept one
        per_chain = self.particles // self.chains
        stride = max(len(kept) // per_chain, 1)
        picks = [kept[j * stride] for j in range(per_chain)]
        return torch.cat(picks), accepted / (self.burn_in + self.mcmc_steps - 1)

    def __call__(self, p: Problem) -> Result:
        x, acceptance = self.mcmc(p)
        if self.proposal == "ntrk":
            proposal = NoiseTiltProposal(self.gamma, p.whitening(self.whitening))
        else:
            proposal = TwistProposal(grad_rms_cap=self.grad_rms_cap)
        smc = SMC(self.particles, self.alpha, proposal, None, select="max_reward")
        x, logw, value = smc.run(p, x, tilted_init=self.init_weights == "uniform")
        result = smc.pick(x, logw, value)
        result.info["mcmc_acceptance"] = acceptance
        return result
