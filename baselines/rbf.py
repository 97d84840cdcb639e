"""RBF: rollover budget forcing (Kim, Yoon, Hwang, Sung, NeurIPS 2025; reference
KAIST-Visual-AI-Group/Flow-Inference-Time-Scaling ``rbf/rbf.py``, anchors Sec. 3.5).

Start from the best of ``particles`` initial noises (1 NFE each). Then, step by step, draw one SDE proposal
at a time from the current state and score the Tweedie estimate at the next time (1 NFE each, no
gradients). A proposal that beats the best reward seen so far is accepted at once and the step's unused
budget rolls over to the next step; otherwise, when the step's budget (``(budget - particles) /
(steps - 1)``) is spent, the chain advances with the step's best proposal. At the last intermediate time
the chain keeps sampling until the total budget is spent, so the measured NFE equals ``budget`` exactly.

Switch ``output``: ``tweedie`` (the reference returns the decoded Tweedie estimate of the best
last-intermediate candidate) or ``step`` (one more, final kernel step from it to a clean sample; no NFE).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ntrk_bench.methods import Problem, Result
from ntrk_bench.sampling import evaluate


@dataclass
class RBF:
    particles: int = 20  # initial noises, and the per-step share of the budget
    budget: Optional[int] = None  # total NFE; None = particles x steps (the paper's ledger)
    output: str = "tweedie"

    def __call__(self, p: Problem) -> Result:
        budget = self.budget or self.particles * p.steps
        times, last = p.sde.times(p.steps), p.steps - 1
        noise = p.noise(self.particles)
        ev = evaluate(p.sde, p.model, noise, times[0], p.cond(self.particles), p.value, with_grad=False)
        i = int(ev.value.argmax())
        x, den, best = noise[i:i + 1], ev.den.select(i), float(ev.value[i])
        used, cond = self.particles, p.cond(1)
        default = max((budget - used) // max(last, 1), 1)
        allowance, k, tried, step_best = default, 0, 0, None
        while used < budget and last > 0:
            cand = p.sde.step(x, den, times[k], times[k + 1], torch.randn(x.shape, generator=p.generator))
            e = evaluate(p.sde, p.model, cand, times[k + 1], cond, p.value, with_grad=False)
            used, tried, v = used + 1, tried + 1, float(e.value[0])
            if step_best is None or v > step_best[2]:
                step_best = (cand, e.den, v)
            advance = False
            if k + 1 < last:  # at the last intermediate time: keep sampling until the budget is spent
                if v > best:  # rollover: accept now and carry the step's unused budget forward
                    advance, allowance = True, default + (allowance - tried)
                elif tried >= allowance:
                    advance, allowance = True, default
            best = max(best, v)
            if advance:
                x, den, _ = step_best
                k, tried, step_best = k + 1, 0, None
        if step_best is not None:
            x, den, _ = step_best
        if self.output == "tweedie" or last == 0:
            x0 = den.x0
        else:
            x0 = p.sde.step(x, den, times[last], times[last + 1], torch.randn(x.shape, generator=p.generator))
        with torch.no_grad():
            return Result(x0, float(p.value(x0)[0]), {"budget": budget})
