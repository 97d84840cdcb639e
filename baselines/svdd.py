"""SVDD-PM: soft value-based decoding with the posterior-mean value (Li et al., NeurIPS 2025; paper
Sec. 3.4, eq. 9; reference masa-ue/SVDD-image and the FLUX port in KAIST-Visual-AI-Group/
Flow-Inference-Time-Scaling).

At every step draw M candidates from the *base* kernel, evaluate each at the next time (M NFE; the
velocity of the kept one is reused for its next step), score the reward of its Tweedie estimate and keep
the argmax (the alpha -> 0 limit). The final step's candidates are clean samples, scored directly.
The start is the best of M initial noises (M NFE), which makes the ledger exactly M x steps
(20 x 25 = 500) as in the paper's tables; no gradients anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ntrk_bench.limits import count
from ntrk_bench.method import Method, Problem, Result
from ntrk_bench.sampling import Evaluation


@dataclass
class SVDD(Method):
    candidates: int = 20
    label: ClassVar[str] = "SVDD"
    ledger_name: ClassVar[str] = "svdd"
    budget_key: ClassVar[str] = "candidates"
    limits: ClassVar[dict] = {"candidates": count}

    def __call__(self, p: Problem) -> Result:
        m, times = self.candidates, p.sde.times(p.steps)
        cand = p.initial_noise(m)
        ev = p.evaluate(cand, times[0], grad=False)
        for k in range(p.steps + 1):
            i = int(ev.value.argmax())
            x, den, best = cand[i:i + 1], ev.den.select(i), float(ev.value[i])
            if k == p.steps:
                break
            eps = p.randn((m, *x.shape[1:]))
            cand = p.sde.step(x.expand(m, *x.shape[1:]), den, times[k], times[k + 1], eps)
            if k + 1 == p.steps:  # clean samples: score them directly (no NFE)
                ev = Evaluation(den, p.score(cand))
            else:
                ev = p.evaluate(cand, times[k + 1], grad=False)
        return Result(x, best)
