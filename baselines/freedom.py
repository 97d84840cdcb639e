"""FreeDoM: energy-guided mean shift with time travel (Yu et al., ICCV 2023; reference vvictoryuki/FreeDoM).

On guided steps the kernel mean is shifted along the reward gradient by ``rho`` times the RMS of the
base denoising increment (the adaptive step of the reference code: a fixed fraction of the update);
on time-travel steps the step is repeated: re-noise from the new time back to the old one and redo
it, ``repeats`` times in all (1 NFE each). The Stable-Diffusion recipe (guidance for 30 <= i < 70 of
100 steps, repeat 3 for 40 <= i < 70) scaled to 25 steps gives 25 + 8 x 2 = 41 NFE per trajectory, the
paper's 123 = 3 x 41 and 533 = 13 x 41. Particles > 1 is FreeDoM-dagger (Best-of-N).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ntrk_bench.limits import at_least, count
from ntrk_bench.method import Cost, Method, Problem, Result, best_of


def travel_steps(steps: int, travel) -> int:
    """Steps k whose fraction k / steps lies in the time-travel window [travel[0], travel[1])."""
    return sum(travel[0] <= k / steps < travel[1] for k in range(steps))


@dataclass
class FreeDoM(Method):
    particles: int = 1
    rho: float = 0.2
    guide: tuple = (0.3, 0.7)  # fraction of steps with guidance
    travel: tuple = (0.4, 0.7)  # fraction of steps with time travel
    repeats: int = 3
    label: ClassVar[str] = "FreeDoM"
    ledger_name: ClassVar[str] = "freedom"
    dagger: ClassVar[bool] = True
    limits: ClassVar[dict] = {"particles": count, "rho": at_least(0), "repeats": count}

    def cost(self, steps: int) -> Cost:
        """One trajectory: every step once, time-travel steps ``repeats`` times."""
        return Cost(0, steps + (self.repeats - 1) * travel_steps(steps, self.travel))

    def __call__(self, p: Problem) -> Result:
        n, times = self.particles, p.sde.times(p.steps)
        x = p.initial_noise(n)
        for k in range(p.steps):
            frac = k / p.steps
            guided = self.guide[0] <= frac < self.guide[1]
            reps = self.repeats if self.travel[0] <= frac < self.travel[1] else 1
            for r in range(reps):
                ev = p.evaluate(x, times[k], value=guided)
                shift = None
                if guided:
                    mean, _ = p.sde.kernel(x, ev.den, times[k], times[k + 1])
                    inc = (mean - x).flatten(1).square().mean(1).sqrt()
                    scale = self.rho * inc / ev.grad.flatten(1).square().mean(1).sqrt().clamp_min(1e-30)
                    shift = scale.view(-1, *([1] * (x.dim() - 1))) * ev.grad
                eps = p.randn(x.shape)
                x_next = p.sde.step(x, ev.den, times[k], times[k + 1], eps, shift)
                if r + 1 < reps:  # travel back in time and redo the step
                    x = p.sde.renoise(x_next, times[k + 1], times[k], p.randn(x.shape))
                else:
                    x = x_next
        return best_of(p, x)
