"""DNO: direct noise optimisation (Tang et al., "Inference-time alignment of diffusion models with direct
noise optimization", ICML 2025; reference TZW1998/Direct-Noise-Optimization).

The variables are *all* injected noises - the initial latent and one per SDE step - optimised with AdamW
on ``-reward + reg_weight * regulariser`` by backpropagating through the whole chain, each denoiser call
wrapped in gradient checkpointing (its recomputation in backward is recorded as ``recomputed``, not as
NFE). Each iteration is one full forward pass (``steps`` NFE), so ``iterations`` forward passes cost
iterations x steps NFE (the paper: 20 x 25 = 500; at 25 NFE DNO is base sampling). The answer is the last
forward pass's sample; gradients are clipped to norm 1.

The probability regulariser keeps the noise typical. Its vector is cut into n blocks of d = 4^subsample
entries; with m the block-wise mean (a d-vector) and C = B^T B / n, it penalises
    max(n |m|^2 / (2d), log 2)  and  max(n (sqrt(1 + |C - I|_2) - 1 - sqrt(d/n))_+^2 / 2, log 2),
the negative log tail bounds of both statistics under N(0, I), for the vector itself and averaged over
random permutations of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.utils.checkpoint import checkpoint

from ntrk_bench.limits import at_least, count, positive
from ntrk_bench.method import Method, Problem, Result


def _tail_terms(v: torch.Tensor, d: int) -> torch.Tensor:
    n = v.numel() // d
    blocks = v[: n * d].view(n, d)
    m = blocks.mean(0)
    cov = blocks.T @ blocks / n
    spec = torch.linalg.matrix_norm(cov - torch.eye(d, device=v.device, dtype=v.dtype), ord=2)
    mean_term = torch.clamp(n * m.square().sum() / (2 * d), min=math.log(2))
    excess = torch.clamp(torch.sqrt(1 + spec) - 1 - math.sqrt(d / n), min=0)
    cov_term = torch.clamp(n * excess.square() / 2, min=math.log(2))
    return mean_term + cov_term


def probability_regularizer(noise: torch.Tensor, subsample: int = 1, permutations: int = 100,
                            permutation=torch.randperm) -> torch.Tensor:
    """``permutation(n)``: a random permutation of range(n) on the noise's device."""
    flat = noise.flatten()
    d = round(4 ** subsample)
    shuffled = sum(_tail_terms(flat[permutation(flat.numel())], d) for _ in range(permutations))
    return _tail_terms(flat, d) + shuffled / max(permutations, 1)


@dataclass
class DNO(Method):
    iterations: int = 20
    lr: float = 0.01
    reg_weight: float = 1.0  # DNO's gamma (its README uses 1 against reward hacking; its default is 0)
    subsample: int = 1
    permutations: int = 100
    checkpointing: bool = True
    label: ClassVar[str] = "DNO"
    ledger_name: ClassVar[str] = "dno"
    budget_key: ClassVar[str] = "iterations"  # each iteration is one full forward pass: steps NFE
    limits: ClassVar[dict] = {"iterations": count, "lr": positive, "reg_weight": at_least(0), "subsample": count,
                              "permutations": at_least(0)}

    def units(self) -> int:
        return 1  # one trajectory, whatever the iterations


    def __call__(self, p: Problem) -> Result:
        times, cond = p.sde.times(p.steps), p.cond(1)
        noises = p.initial_noise(p.steps + 1).unsqueeze(1).clone().requires_grad_(True)  # x_T, then one per step
        opt = torch.optim.AdamW([noises], lr=self.lr, weight_decay=0.0)
        counter = p.model.counter

        def segment(x, k, replay: list):
            counter.replaying = bool(replay)  # a checkpoint recomputation replays an already counted pass
            replay.append(True)
            try:
                den = p.sde.denoise(p.model, x, times[k], cond)
            finally:
                counter.replaying = False
            return p.sde.step(x, den, times[k], times[k + 1], noises[k + 1])

        history = []
        for it in range(self.iterations):
            last = it + 1 == self.iterations
            with torch.set_grad_enabled(not last):
                x = noises[0]
                for k in range(p.steps):
                    if self.checkpointing and not last:
                        x = checkpoint(segment, x, k, [], use_reentrant=False)
                    else:
                        x = segment(x, k, [])
                reward = p.value(x)
                history.append(float(reward[0].detach()))
                if not last:
                    loss = -reward.sum() + self.reg_weight * probability_regularizer(
                        noises, self.subsample, self.permutations, p.noise.permutation)
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_([noises], 1.0)
                    opt.step()
        return Result(x.detach(), history[-1], {"reward_history": history})
