"""Psi-Sampler: pCNL MCMC over the initial particles, then SMC (Yoon et al., NeurIPS 2025; reference
KAIST-Visual-AI-Group/Psi-Sampler, anchors Sec. 3.7).

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
``reward`` (the reference's ``init_weight_method: reward``, which counts the reward twice, anchors 9.2).
``proposal: ntrk`` runs NTRK's noise-tilted kernel inside this scaffold (the paper's "NTRK, 10 particles,
25 + 25" rows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ntrk_bench.methods import Problem, Result
from ntrk_bench.sampling import evaluate

from .smc import SMC, NoiseTiltProposal, TwistProposal


@dataclass
class PsiSampler:
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
    whitening: Optional[dict] = None
    _operators: dict = field(default_factory=dict, init=False, repr=False)  # one W per latent shape

    def __post_init__(self):
        if self.particles % self.chains:
            raise ValueError(f"psi: particles ({self.particles}) must be a multiple of chains ({self.chains})")
        if self.mcmc_steps < self.particles // self.chains:
            raise ValueError(f"psi: mcmc_steps ({self.mcmc_steps}) must be >= particles per chain "
                             f"({self.particles // self.chains})")

    def mcmc(self, p: Problem) -> tuple[torch.Tensor, float]:
        """Initial particles from pCNL chains; returns (particles, acceptance rate)."""
        h, a = self.step_size, self.alpha_mcmc
        rho = (1 - h / 4) / (1 + h / 4)
        c = math.sqrt(1 - rho * rho)
        tau = p.sde.times(p.steps)[0]
        cond = p.cond(self.chains)

        def state(x):
            ev = evaluate(p.sde, p.model, x, tau, cond, p.value)
            return x, ev.value.double() / a, ev.grad.double() / a

        def log_j(xa, phi_a, ga, xb):
            inner = ((xb.double() - rho * xa.double()) / c * ga).flatten(1).sum(1)
            return phi_a - h / 8 * ga.flatten(1).square().sum(1) + math.sqrt(h) / 2 * inner

        x, phi, g = state(p.noise(self.chains))
        kept, accepted = [], 0.0
        for it in range(1, self.burn_in + self.mcmc_steps):
            xi = torch.randn(x.shape, generator=p.generator)
            x_new, phi_new, g_new = state((rho * x + c * (xi + math.sqrt(h) / 2 * g.float())).to(x.dtype))
            log_acc = log_j(x_new, phi_new, g_new, x) - log_j(x, phi, g, x_new)
            ok = torch.rand(self.chains, generator=p.generator, dtype=torch.float64).log() < log_acc
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
            from ntrk_bench.config import load_group
            from ntrk_bench.whitening import Whitening

            shape = tuple(p.model.latent_shape)
            if shape not in self._operators:
                cfg = self.whitening if self.whitening is not None else load_group("whitening", "full")
                self._operators[shape] = Whitening(cfg, shape)
            proposal = NoiseTiltProposal(self.gamma, self._operators[shape])
        else:
            proposal = TwistProposal(grad_rms_cap=self.grad_rms_cap)
        smc = SMC(self.particles, self.alpha, proposal, None, select="max_reward")
        x, logw, value = smc.run(p, x, tilted_init=self.init_weights == "uniform")
        result = smc.pick(x, logw, value)
        result.info["mcmc_acceptance"] = acceptance
        return result
