"""The mean-shift control of NTRK (not a method of the paper): the mean of NTRK's tilted noise,
std gamma W(g), moved into the kernel mean, with the full fresh noise kept. Same direction and expected
displacement as NTRK (eq. 12); only where the guidance enters (mean vs noise) differs, which tells
"noise tilt" from "stronger guidance along the same rescaled gradient"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ntrk_bench.method import Problem
from ntrk_bench.ntrk import NTRK, mean_shift_rule
from ntrk_bench.sampling import ShiftRule


@dataclass
class MeanShift(NTRK):
    label: ClassVar[str] = "mean-shift control"
    ledger_name: ClassVar[str] = "meanshift"
    dagger: ClassVar[bool] = False

    def noise_rule(self, problem: Problem):
        return None

    def shift_rule(self, problem: Problem) -> ShiftRule:
        return mean_shift_rule(self.gamma, problem.whitening(self.whitening), self.strength)
