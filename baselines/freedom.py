"""FreeDoM: energy-guided mean shift with time travel (Yu et al., ICCV 2023; anchors Sec. 3.3).

On guided steps the kernel mean is shifted along the reward gradient by ``rho`` times the RMS of the
base denoising increment (the adaptive step of the reference code: a fixed fraction of the update);
on time-travel steps the step is repeated: re-noise from the new time back to the old one and redo
it, ``repeats`` times in all (1 NFE each). The Stable-Diffusion recipe (guidance for 30 <= i < 70 of
100 steps, repeat 3 for 40 <= i < 70) scaled to 25 steps gives 25 + 8 x 2 = 41 NFE per trajectory, the
paper's 123 = 3 x 41 and 533 = 13 x 41. Particles > 1 is FreeDoM-dagger (Best-of-N).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ntrk_bench.methods import Problem, Result, best_of
from ntrk_bench.sampling import evaluate


@dataclass
class FreeDoM:
    particles: int = 1
    rho: float = 0.2
    guide: tuple = (0.3, 0.7)  # fraction of steps with guidance
    travel: tuple = (0.4, 0.7)  # fraction of steps with time travel
    repeats: int = 3

    def __call__(self, p: Problem) -> Result:
        n, times = self.particles, p.sde.times(p.steps)
        cond, x = p.cond(n), p.noise(n)
        for k in range(p.steps):
            frac = k / p.steps
            guided = self.guide[0] <= frac < self.guide[1]
            reps = self.repeats if self.travel[0] <= frac < self.travel[1] else 1
            for r in range(reps):
                ev = evaluate(p.sde, p.model, x, times[k], cond, p.value if guided else None)
                shift = None
                if guided:
                    mean, _ = p.sde.kernel(x, ev.den, times[k], times[k + 1])
                    inc = (mean - x.float()).flatten(1).square().mean(1).sqrt()
                    scale = self.rho * inc / ev.grad.flatten(1).square().mean(1).sqrt().clamp_min(1e-30)
                    shift = scale.view(-1, *([1] * (x.dim() - 1))) * ev.grad
                eps = torch.randn(x.shape, generator=p.generator)
                x_next = p.sde.step(x, ev.den, times[k], times[k + 1], eps, shift)
                if r + 1 < reps:  # travel back in time and redo the step
                    x = p.sde.renoise(x_next, times[k + 1], times[k], torch.randn(x.shape, generator=p.generator))
                else:
                    x = x_next
        return best_of(p, x)
