"""SVDD-PM: soft value-based decoding with the posterior-mean value (Li et al., NeurIPS 2025; paper
Sec. 3.4, eq. 9; reference masa-ue/SVDD-image and RBF's FLUX port, anchors Sec. 3.4).

At every step draw M candidates from the *base* kernel, evaluate each at the next time (M NFE; the
velocity of the kept one is reused for its next step), score the reward of its Tweedie estimate and keep
the argmax (the alpha -> 0 limit). The final step's candidates are clean samples, scored directly.
The start is the best of M initial noises (M NFE), which makes the ledger exactly M x steps
(20 x 25 = 500) as in the paper's tables; no gradients anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ntrk_bench.methods import Problem, Result
from ntrk_bench.sampling import evaluate

@dataclass
class SVDD:
    candidates: int = 20

    def __call__(self, p: Problem) -> Result:
        m, times = self.candidates, p.sde.times(p.steps)
        cond = p.cond(m)
        cand = p.noise(m)
        ev = evaluate(p.sde, p.model, cand, times[0], cond, p.value, with_grad=False)
        for k in range(p.steps + 1):
            i = int(ev.value.argmax())
            x, den, best = cand[i:i + 1], ev.den.select(i), float(ev.value[i])
            if k == p.steps:
                break
            eps = torch.randn((m, *x.shape[1:]), generator=p.generator)
            cand = p.sde.step(x.expand(m, *x.shape[1:]), den, times[k], times[k + 1], eps)
            if k + 1 == p.steps:  # clean samples: score them directly (no NFE)
                with torch.no_grad():
                    ev = type(ev)(den, p.value(cand))
            else:
                ev = evaluate(p.sde, p.model, cand, times[k + 1], cond, p.value, with_grad=False)
        return Result(x, best)
