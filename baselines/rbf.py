"""RBF: rollover budget forcing (Kim, Yoon, Hwang, Sung, NeurIPS 2025; reference
KAIST-Visual-AI-Group/Flow-Inference-Time-Scaling ``rbf/rbf.py``).

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

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

from ntrk_bench.limits import choice, count
from ntrk_bench.method import Method, Problem, Result


@dataclass
class RBF(Method):
    particles: int = 20  # initial noises, and the per-step share of the budget
    budget: Optional[int] = None  # total NFE; None = particles x steps (the paper's ledger)
    output: str = "tweedie"
    label: ClassVar[str] = "RBF"
    ledger_name: ClassVar[str] = "rbf"
    limits: ClassVar[dict] = {"particles": count, "budget": count, "output": choice("tweedie", "step")}

    def with_budget(self, nfe: int, steps: int) -> "RBF":
        """particles = nfe / steps, and the rollover budget is exactly ``nfe``."""
        return dataclasses.replace(super().with_budget(nfe, steps), budget=nfe)

    def __call__(self, p: Problem) -> Result:
        budget = self.budget or self.particles * p.steps
        times, last = p.sde.times(p.steps), p.steps - 1
        noise = p.initial_noise(self.particles)
        ev = p.evaluate(noise, times[0], grad=False)
        i = int(ev.value.argmax())
        x, den, best = noise[i:i + 1], ev.den.select(i), float(ev.value[i])
        used = self.particles
        default = max((budget - used) // max(last, 1), 1)
        allowance, k, tried, step_best = default, 0, 0, None
        while used < budget and last > 0:
            cand = p.sde.step(x, den, times[k], times[k + 1], p.randn(x.shape))
            e = p.evaluate(cand, times[k + 1], grad=False)
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
            x0 = p.sde.step(x, den, times[last], times[last + 1], p.randn(x.shape))
        return Result(x0, float(p.score(x0)[0]), {"budget": budget})
