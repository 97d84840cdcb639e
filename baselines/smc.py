"""Sequential Monte Carlo with twisted proposals: the engine of DAS, Psi-Sampler and NTRK-in-Psi.

Target (paper eq. 1, App. A.1): p(x_0) exp(r(x_0) / alpha). Particles move through the base reverse
kernel p(x' | x) = N(mean, std^2) via a proposal q; twists psi_k(x) = exp(lambda_k r(x0_hat(x)) / alpha)
(Tweedie value approximation, eq. 27) with tempering lambda_k; the incremental log-weight is

    log p(x' | x) - log q(x' | x) + lambda_{k+1} r_{k+1} / alpha - lambda_k r_k / alpha

(DAS, Kim et al. ICLR 2025; Psi-Sampler, Yoon et al. NeurIPS 2025). At tau = 0 the twist is the true
reward of the clean sample with lambda = 1. Resampling (SSP by default) when ESS < threshold x N; between
resamplings the ancestors are the identity and log-weights accumulate - the stale ancestor indices and
dropped weights of the reference SMC code (DAS's and Psi-Sampler's repositories) are not reproduced.

Every particle is evaluated once per step with its gradient (1 NFE), and the evaluation at tau_{k+1}
serves both the weight of step k and the proposal of step k + 1: NFE = particles x steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ntrk_bench.method import Problem, Result
from ntrk_bench.ntrk import tilted_noise

from .dps import cap_rms


def gaussian_logpdf(x: torch.Tensor, mean: torch.Tensor, var: float) -> torch.Tensor:
    """Per-sample log N(x; mean, var I), summed over all but the first dim (float64)."""
    d = (x.double() - mean.double()).flatten(1)
    return -0.5 * (d.square().sum(1) / var + d.shape[1] * math.log(2 * math.pi * var))


# ----------------------------------------------------------------------------- proposals
class Proposal:
    """Draw x' given the base kernel N(mean, std^2) at x; return (x', log p(x'|x) - log q(x'|x))."""

    def __call__(self, ev: Evaluation, mean: torch.Tensor, std: float, lam: float, alpha: float,
                 eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class BaseProposal(Proposal):
    def __call__(self, ev, mean, std, lam, alpha, eps):
        return mean + std * eps, torch.zeros(len(mean), dtype=torch.float64, device=mean.device)


@dataclass
class TwistProposal(Proposal):
    """q = N(mean + std^2 lambda grad / alpha * scale, std^2): the tilted / DAS proposal (mean shift)."""

    scale: float = 1.0
    grad_rms_cap: Optional[float] = None  # Psi-Sampler's ``smc_grad_norm``

    def __call__(self, ev, mean, std, lam, alpha, eps):
        g = cap_rms(ev.grad, self.grad_rms_cap)
        shifted = mean + (std * std * lam / alpha * self.scale) * g
        x = shifted + std * eps
        return x, gaussian_logpdf(x, mean, std * std) - gaussian_logpdf(x, shifted, std * std)


@dataclass
class NoiseTiltProposal(Proposal):
    """NTRK's kernel as an SMC proposal: x' = mean + std (gamma W(g) + sqrt(1 - gamma^2) eps), i.e.
    q = N(mean + std gamma W(g), std^2 (1 - gamma^2)) (eq. 12), so its weight is closed-form too."""

    gamma: float
    whiten: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, ev, mean, std, lam, alpha, eps):
        noise = tilted_noise(ev.grad, eps, self.gamma, self.whiten)
        x = mean + std * noise
        center = mean + std * (noise - math.sqrt(1 - self.gamma ** 2) * eps)
        return x, gaussian_logpdf(x, mean, std * std) - gaussian_logpdf(x, center, std * std * (1 - self.gamma ** 2))


# ----------------------------------------------------------------------------- resampling
def ess(logw: torch.Tensor) -> float:
    w = torch.softmax(logw.double(), 0)
    return float(1.0 / w.square().sum())


def ssp_resample(logw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Srinivasan sampling process (DAS's ``ssp``): particle i is kept floor(N w_i) or ceil(N w_i) times,
    unbiasedly. Pairs of fractional parts are resolved in turn: if f_i + f_j < 1 one of them takes the sum
    (i with probability f_i / (f_i + f_j)), else one of them becomes 1 and the other keeps the excess (i
    with probability (1 - f_j) / (2 - f_i - f_j)); each pairing settles at least one particle."""
    n = len(logw)
    expected = torch.softmax(logw.double(), 0) * n
    counts = expected.floor()
    f = (expected - counts).tolist()
    u = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
    open_ = [i for i in range(n) if 1e-12 < f[i] < 1 - 1e-12]
    t = 0
    while len(open_) >= 2:
        i, j = open_[0], open_[1]
        fi, fj = f[i], f[j]
        if fi + fj < 1:
            f[i], f[j] = (fi + fj, 0.0) if u[t] < fi / (fi + fj) else (0.0, fi + fj)
        else:
            f[i], f[j] = (1.0, fi + fj - 1) if u[t] < (1 - fj) / (2 - fi - fj) else (fi + fj - 1, 1.0)
        t += 1
        open_ = [k for k in open_ if 1e-12 < f[k] < 1 - 1e-12]
    counts = (counts + torch.tensor(f, dtype=torch.float64).round()).long()
    counts[int(expected.argmax())] += n - int(counts.sum())  # float round-off only
    return torch.repeat_interleave(torch.arange(n), counts)


def multinomial_resample(logw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.multinomial(torch.softmax(logw.double(), 0), len(logw), replacement=True, generator=generator)


RESAMPLERS = {"ssp": ssp_resample, "multinomial": multinomial_resample}


# ----------------------------------------------------------------------------- tempering
def das_tempering(steps: int, gamma: float | str = "auto", reach: float = 0.87) -> Callable[[int], float]:
    """DAS's lambda_i = min((1 + gamma)^i - 1, 1). DAS tuned gamma = 0.008 for 100 steps, where lambda
    reaches 1 at i ~ 87; ported unchanged to 25 steps it would stop at 0.21. ``auto``
    scales gamma so that lambda reaches 1 at the same fraction ``reach`` of the steps."""
    g = 2 ** (1 / (reach * steps)) - 1 if gamma == "auto" else float(gamma)
    return lambda i: min((1 + g) ** i - 1, 1.0)


# ----------------------------------------------------------------------------- the sampler
@dataclass
class SMC:
    particles: int = 20
    alpha: float = 0.1  # KL temperature: target p(x) exp(r(x) / alpha)
    proposal: Proposal = BaseProposal()
    tempering: Optional[Callable[[int], float]] = None  # lambda_k; None = 1 throughout (Psi-Sampler)
    ess_threshold: float = 0.5
    resampler: str = "ssp"
    select: str = "max_weight"  # max_weight (DAS) | max_reward (Psi-Sampler's return_max_reward)

    def lam(self, k: int) -> float:
        return 1.0 if self.tempering is None else self.tempering(k)

    def run(self, p: Problem, x: torch.Tensor, logw: torch.Tensor | None = None, tilted_init: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From particles x at tau = 1 to clean particles, their final log-weights and rewards.

        The intermediate target at tau = 1 is p(x) psi_0(x). Particles drawn from the prior p get initial
        log-weights log psi_0; particles that already target p psi_0 (``tilted_init``, e.g. Psi-Sampler's
        MCMC) start uniform - weighting them by psi_0 again would count the reward twice.
        """
        n, times, sde = len(x), p.sde.times(p.steps), p.sde
        ev = p.evaluate(x, times[0])
        twist = self.lam(0) * ev.value.double() / self.alpha
        logw = torch.full((n,), -math.log(n), dtype=torch.float64, device=x.device) if logw is None else logw.double()
        if not tilted_init:
            logw = logw + twist
        for k in range(p.steps):
            if ess(logw) < self.ess_threshold * n:
                a = RESAMPLERS[self.resampler](logw.cpu(), p.generator).to(x.device)  # decided on the CPU
                x, twist, ev = x[a], twist[a], ev.select(a)
                logw = torch.full_like(logw, -math.log(n))
            mean, std = sde.kernel(x, ev.den, times[k], times[k + 1])
            lam_next = 1.0 if k + 1 == p.steps else self.lam(k + 1)
            eps = p.randn(x.shape)
            x, log_ratio = self.proposal(ev, mean, std, lam_next, self.alpha, eps)
            x = x.to(mean.dtype)
            if k + 1 == p.steps:  # clean samples: the true reward is the final twist (no NFE)
                value, ev = p.score(x), None
            else:
                ev = p.evaluate(x, times[k + 1])
                value = ev.value
            new_twist = lam_next * value.double() / self.alpha
            logw = logw + log_ratio + new_twist - twist
            twist = new_twist
        return x, logw, value

    def __call__(self, p: Problem) -> Result:
        x, logw, value = self.run(p, p.initial_noise(self.particles))
        return self.pick(x, logw, value)

    def pick(self, x, logw, value) -> Result:
        i = int(logw.argmax() if self.select == "max_weight" else value.argmax())
        return Result(x[i:i + 1], float(value[i]), {"log_weights": logw.tolist(), "ess": ess(logw)})
