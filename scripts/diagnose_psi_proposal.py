"""Weight degeneracy of Psi-Sampler's SMC with its own proposal and with NTRK's kernel as the proposal.

    python scripts/diagnose_psi_proposal.py [--shape 4 32 32] [--seeds 0 1 2] [--gamma 0.3]

Model and reward: the analytic task (``model=gmm task=analytic``) at a chosen latent size - a 4-component
exact Gaussian mixture of smooth means (component std 0.3) and the smooth unit-norm linear reward
r(x) = <a, x>. Psi-Sampler runs as its ``conf/method/psi.yaml`` configures it (the ``psi_500`` and
``ntrk_psi_500`` rows: 5 pCNL chains x (25 + 25), then SMC with 10 particles over 25 steps, alpha 0.1, ESS
threshold 0.5, SSP resampling), once with ``proposal: twist`` and once with ``proposal: ntrk``.

Per proposal it prints, averaged over seeds: the per-step standard deviation over particles of the proposal
log-ratio log p(x'|x) - log q(x'|x) and of the twist r(x0_hat) / alpha (the two parts of the
incremental log-weight, ``baselines/smc.py``), the number of steps at which the SMC resampled, the mean ESS
at the resampling checks (out of the particle count), how many distinct step-0 ancestors survive to the end,
the share of resamplings at which the heaviest particle is the one with the largest proposal log-ratio of the
step before (the selection is then decided by the proposal's noise, not by the reward), and the final reward.

For NTRK's proposal q = N(m + s gamma W(g), s^2 (1 - gamma^2)) (paper eq. 12) against the base kernel
N(m, s^2) in D dimensions, with x' = m + s (gamma W + sqrt(1 - gamma^2) eps),

    log p - log q = sum_i [gamma^2 eps_i^2 / 2 - gamma^2 W_i^2 / 2 - gamma sqrt(1 - gamma^2) W_i eps_i]
                    + D/2 log(1 - gamma^2),

whose spread over particles (W fixed per particle, |W|^2 ~ D since W's output is typical N(0, I) noise) is
sqrt(D (gamma^2 (1 - gamma^2) + gamma^4 / 2)) nats, independent of the reward and of alpha: the "theory"
column. Recorded by wrapping ``baselines.smc``'s ESS function, resamplers and proposals (no change to them).
"""
from __future__ import annotations

import argparse
import math
import statistics
from contextlib import ExitStack
from dataclasses import dataclass, field
from unittest.mock import patch

import torch

import baselines.psi as psi_module
import baselines.smc as smc_module
from baselines.psi import PsiSampler
from ntrk_bench.method import Problem
from ntrk_bench.models import counted
from ntrk_bench.models.gmm import smooth_mixture
from ntrk_bench.sde import FlowSDE
from rewards import LinearReward


@dataclass
class Trace:
    """What one SMC run did, step by step."""

    log_ratio_sd: list = field(default_factory=list)  # sd over particles of log p - log q, per proposal step
    ess_checks: list = field(default_factory=list)  # ESS at each resampling check
    resamplings: int = 0
    ancestors: torch.Tensor | None = None  # step-0 ancestor index of each current particle
    last_log_ratio: torch.Tensor | None = None
    decided_by_log_ratio: list = field(default_factory=list)  # per resampling: heaviest particle = largest log-ratio


def recording(trace: Trace) -> ExitStack:
    """Patches of ``baselines.smc``'s ESS and resamplers and of Psi-Sampler's proposals that log into ``trace``
    (the wrapped functions run unchanged)."""
    ess, resamplers = smc_module.ess, dict(smc_module.RESAMPLERS)

    def ess_logged(logw):
        trace.ess_checks.append(ess(logw))
        return trace.ess_checks[-1]

    def resampler_logged(resample):
        def logged(logw, generator):
            idx = resample(logw, generator)
            trace.resamplings += 1
            if trace.last_log_ratio is not None:
                trace.decided_by_log_ratio.append(int(logw.argmax()) == int(trace.last_log_ratio.argmax()))
            trace.ancestors = idx if trace.ancestors is None else trace.ancestors[idx]
            return idx
        return logged

    def proposal_logged(cls):
        class Logged(cls):
            def __call__(self, *args, **kw):
                x, log_ratio = super().__call__(*args, **kw)
                trace.log_ratio_sd.append(float(log_ratio.std()))
                trace.last_log_ratio = log_ratio.detach().cpu()
                return x, log_ratio
        return Logged

    stack = ExitStack()
    stack.enter_context(patch.object(smc_module, "ess", ess_logged))
    stack.enter_context(patch.dict(smc_module.RESAMPLERS, {k: resampler_logged(f) for k, f in resamplers.items()}))
    for name in ("TwistProposal", "NoiseTiltProposal"):
        stack.enter_context(patch.object(psi_module, name, proposal_logged(getattr(psi_module, name))))
    return stack


def run_once(shape, seed: int, proposal: str, gamma: float) -> dict:
    model = smooth_mixture(shape, components=4, component_std=0.3, seed=0)
    reward = LinearReward.smooth(shape, seed=0)
    sampler = PsiSampler(proposal=proposal, gamma=gamma)  # the dataclass defaults are conf/method/psi.yaml's
    p = Problem(FlowSDE(), counted(model), "", reward, 25, torch.Generator().manual_seed(seed))
    values = []
    evaluate = p.evaluate

    def evaluate_logged(x, tau, **kw):
        ev = evaluate(x, tau, **kw)
        if len(x) == sampler.particles:  # the SMC's evaluations (the pCNL chains evaluate ``chains`` states)
            values.append(ev.value.double())
        return ev

    p.evaluate = evaluate_logged
    trace = Trace()
    with recording(trace):
        result = sampler(p)
    # the reward's part of the log-weights: the spread over particles of the twist r(x0_hat) / alpha (lambda = 1,
    # Psi-Sampler has no tempering) at each intermediate step
    twist_sd = [float((v / sampler.alpha).std()) for v in values]
    survivors = len(set(trace.ancestors.tolist())) if trace.ancestors is not None else sampler.particles
    return {"log_ratio_sd": statistics.mean(trace.log_ratio_sd), "twist_sd": statistics.mean(twist_sd),
            "resamplings": trace.resamplings, "ess": statistics.mean(trace.ess_checks),
            "survivors": survivors, "reward": result.reward,
            "by_log_ratio": statistics.mean(trace.decided_by_log_ratio) if trace.decided_by_log_ratio else math.nan}


def theory_sd(dims: int, gamma: float) -> float:
    """sd of NTRK's proposal log-ratio with |W|^2 = D (module docstring)."""
    return math.sqrt(dims * (gamma ** 2 * (1 - gamma ** 2) + gamma ** 4 / 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[4, 32, 32],
                    help="latent C H W; NTRK's default whitening (full) needs H and W multiples of 32")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--gamma", type=float, default=0.3)
    args = ap.parse_args()
    shape, dims = tuple(args.shape), math.prod(args.shape)
    particles, steps = PsiSampler.particles, 25
    print(f"gmm (4 components) at {dims} dims, linear reward, Psi-Sampler {particles} particles x {steps} steps, "
          f"alpha {PsiSampler.alpha}, seeds {args.seeds}")
    print(f"{'proposal':>10} | {'log-ratio sd':>12} | {'theory':>6} | {'twist sd':>8} | {'resampled':>9} | "
          f"{'mean ESS':>8} | {'ancestors left':>14} | {'won by log-ratio':>16} | {'reward':>6}")
    for proposal in ("twist", "ntrk"):
        runs = [run_once(shape, s, proposal, args.gamma) for s in args.seeds]
        avg = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        theory = f"{theory_sd(dims, args.gamma):6.1f}" if proposal == "ntrk" else f"{'-':>6}"
        print(f"{proposal:>10} | {avg['log_ratio_sd']:12.2f} | {theory} | {avg['twist_sd']:8.2f} | "
              f"{avg['resamplings']:5.1f}/{steps:<3d} | {avg['ess']:5.2f}/{particles:<2d} | "
              f"{avg['survivors']:8.1f}/{particles:<5d} | {avg['by_log_ratio']:16.2f} | {avg['reward']:6.3f}")


if __name__ == "__main__":
    main()
