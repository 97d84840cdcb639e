"""The Noise-Tilted Reverse Kernel (paper Sec. 3.5, eqs. 10-13, App. A.4).

NTRK keeps the base reverse mean and the nominal std, and replaces the standard Gaussian draw by

    eps_tilde = gamma * W(grad) + sqrt(1 - gamma^2) * eps,        eps ~ N(0, I)          (eq. 11)

where grad is the reward gradient of the decoded Tweedie estimate w.r.t. the current state (taken
through the denoiser) and W the whitening operator. Since W(grad) is typical N(0, I)-looking noise and
independent of eps, eps_tilde keeps the Gaussian form of eq. 10: the step stays noise-compatible
(eq. 13). gamma in [0, 1] is the guidance strength (paper: 0.3 on FLUX aesthetic).

The reward-aligned displacement of one step is std * gamma * cos(W(g), g) * sqrt(D) (App. A.5, eq. 63), so
a fixed gamma means different things at different latent sizes. ``gamma="auto"`` holds that effective
strength fixed instead: gamma = strength / (cos(W(g), g) sqrt(D)) per sample and step (cos is measured on
the spot, for free), capped at ``gamma_max``. The default strength is the paper's setting: gamma = 0.3 on
FLUX's 65,536-dim latent, where whitening leaves structured gradients with cos ~ 0.1 (measured, 0.01-0.2).
Where W has erased the gradient's direction (cos below the value at which gamma reaches ``gamma_max``), the
injected direction carries little reward and auto fades gamma with cos instead of holding it at the cap.

``decorrelate`` (off by default: ``method=ntrk`` is the paper's kernel): W(g) barely changes from step to
step, so the part of it orthogonal to g - typical noise, but the same noise every step - adds up across
steps into a fixed texture. Each step, the variant whitens a randomly shifted gradient and shifts the result
back (:func:`shifted_whitening`): still W's output under a symmetry of N(0, I) (typical, same reward
alignment, same cost), but with W's chunk and tile grid landing elsewhere on the content, so the rest no
longer repeats (consecutive-step cosine 0.86 -> 0.27 on a slowly changing smooth gradient at 4 x 32 x 32).
Flips and channel permutations do not work: W is nearly equivariant to them. The run records how much the
injection repeated (:class:`InjectionTrace`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch

from .limits import Limit, interval, positive
from .method import Chain, Problem
from .sampling import Evaluation, NoiseRule


#: effective strength gamma cos sqrt(D) of the paper's FLUX setting (App. A.5): 0.3 x 0.1 x 256
STRENGTH_REF = 0.3 * 0.1 * math.sqrt(65_536)


def alignment(grad: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B,) cos(W(g), g): the share of the whitened direction that points along the reward gradient."""
    return torch.nn.functional.cosine_similarity(w.flatten(1).float(), grad.flatten(1).float(), dim=1)


def strength_gamma(grad: torch.Tensor, w: torch.Tensor, strength: float = STRENGTH_REF,
                   gamma_max: float = 0.95) -> torch.Tensor:
    """Per-sample gamma with effective strength gamma cos(W(g), g) sqrt(D) = ``strength`` (App. A.5, eq. 63).

    It reaches ``gamma_max`` at cos_cap = strength / (gamma_max sqrt(D)); below that, W(g) carries less and
    less of the reward direction and gamma fades linearly to 0 with cos (gamma_max cos / cos_cap), so an
    uninformative direction never gets most of the noise."""
    cos = alignment(grad, w)
    cos_cap = strength / (gamma_max * math.sqrt(grad[0].numel()))
    gamma = torch.where(cos >= cos_cap, strength / (cos.clamp_min(cos_cap) * math.sqrt(grad[0].numel())),
                        gamma_max * cos / cos_cap)
    return gamma.clamp(0.0, gamma_max)


def resolve_gamma(gamma: float | str, grad: torch.Tensor, w: torch.Tensor, strength: float,
                  gamma_max: float = 0.95) -> torch.Tensor:
    """(B,) guidance strengths: a fixed gamma, or ``"auto"`` (dimension-aware, see the module docstring)."""
    if gamma == "auto":
        return strength_gamma(grad, w, strength, gamma_max)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"NTRK guidance strength gamma must lie in [0, 1] or be 'auto', got {gamma}")
    return torch.full((grad.shape[0],), float(gamma), device=grad.device)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def shifted_whitening(whiten: Callable[[torch.Tensor], torch.Tensor], grad: torch.Tensor,
                      shifts: tuple[int, int]) -> torch.Tensor:
    """S^-1 W(S g) for a circular shift S of the two spatial axes. N(0, I) is shift-invariant, so the result
    is typical whenever W's outputs are, and <S^-1 W(S g), g> = <W(S g), S g> keeps the reward alignment; but
    W's chunks and tiles sit elsewhere on the content, so the part of W(g) that is not g changes with S."""
    back = tuple(-s for s in shifts)
    return torch.roll(whiten(torch.roll(grad, shifts, dims=(-2, -1))), back, dims=(-2, -1))


class InjectionTrace:
    """How much NTRK's injected noise repeats across steps, per sample: the mean cos(W_k, W_k+1) of
    consecutive whitened gradients and the norms of the summed injected part sum_k std_k gamma_k W_k and of
    the summed fresh part sum_k std_k sqrt(1 - gamma_k^2) eps_k, beside the norm the injected part would
    have if its steps were independent, sqrt(sum_k ||std_k gamma_k W_k||^2)."""

    def __init__(self, stds: list[float]):
        self.stds, self.previous, self.cos = stds, None, []
        self.injected = self.fresh = self.independent = 0.0  # running sums (tensors after the first step)

    def add(self, k: int, w: torch.Tensor, gamma: torch.Tensor, eps: torch.Tensor) -> None:
        injected = (self.stds[k] * gamma * w).flatten(1).double()
        self.fresh = self.fresh + (self.stds[k] * (1 - gamma * gamma).sqrt() * eps).flatten(1).double()
        self.injected = self.injected + injected
        self.independent = self.independent + injected.square().sum(1)
        if self.previous is not None:
            self.cos.append(torch.nn.functional.cosine_similarity(self.previous, w.flatten(1).double(), dim=1))
        self.previous = w.flatten(1).double()

    def diagnostics(self) -> dict[str, torch.Tensor]:
        if self.previous is None:
            return {}
        out = {"injected_sum_norm": self.injected.norm(dim=1), "fresh_sum_norm": self.fresh.norm(dim=1),
               "injected_independent_norm": self.independent.sqrt()}
        if self.cos:
            out["w_step_cos"] = torch.stack(self.cos).mean(0)
        return out


def tilted_noise(grad: torch.Tensor, eps: torch.Tensor, gamma: float | str,
                 whiten: Callable[[torch.Tensor], torch.Tensor], strength: float = STRENGTH_REF,
                 gamma_max: float = 0.95, trace: Callable | None = None) -> torch.Tensor:
    """eq. 11. Samples whose gradient vanished carry no direction and get the plain draw eps. ``trace``
    (w, gamma, eps) records the injection (module docstring)."""
    if gamma == 0.0:
        return eps
    w = whiten(grad).to(eps.dtype)
    g = _per_sample(resolve_gamma(gamma, grad, w, strength, gamma_max), eps)
    alive = _per_sample(grad.flatten(1).abs().amax(dim=1) > 0, eps).bool()
    if trace is not None:
        trace(torch.where(alive, w, 0.0), torch.where(alive, g, 0.0), eps)
    return torch.where(alive, g * w + (1.0 - g * g).sqrt() * eps, eps)


class NTRKRule:
    """The noise rule of NTRK for :func:`ntrk_bench.sampling.sample_chain` (needs a ``value``), with the
    record of its injections (:class:`InjectionTrace`) when step stds are given."""

    def __init__(self, gamma: float | str, whiten: Callable[[torch.Tensor], torch.Tensor],
                 strength: float = STRENGTH_REF, gamma_max: float = 0.95, stds: list[float] | None = None,
                 noise=None, decorrelate: bool = False):
        self.gamma, self.whiten, self.strength, self.gamma_max = gamma, whiten, strength, gamma_max
        self.trace = InjectionTrace(stds) if stds is not None else None
        if decorrelate and noise is None:
            raise ValueError("decorrelate needs a seeded noise source for its shifts")
        self.noise, self.decorrelate = noise, decorrelate

    def shifted(self, grad: torch.Tensor) -> torch.Tensor:
        """The decorrelated variant's W: a fresh shift each step, drawn from the item's CPU generator."""
        shifts = tuple(int(torch.randint(n, (1,), generator=self.noise.generator)) for n in grad.shape[-2:])
        return shifted_whitening(self.whiten, grad, shifts)

    def __call__(self, ev: Evaluation, eps: torch.Tensor, k: int) -> torch.Tensor:
        if ev.grad is None:
            raise ValueError("NTRK needs the reward gradient: pass a value function to the sampler")
        trace = None if self.trace is None else (lambda w, g, e: self.trace.add(k, w, g, e))
        return tilted_noise(ev.grad, eps, self.gamma, self.shifted if self.decorrelate else self.whiten,
                            self.strength, self.gamma_max, trace)

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {} if self.trace is None else self.trace.diagnostics()


def ntrk_rule(gamma: float | str, whiten: Callable[[torch.Tensor], torch.Tensor],
              strength: float = STRENGTH_REF) -> NoiseRule:
    """The plain noise rule of NTRK (eq. 11), without a record."""
    return NTRKRule(gamma, whiten, strength)


def mean_shift_rule(gamma: float | str, whiten: Callable[[torch.Tensor], torch.Tensor],
                    strength: float = STRENGTH_REF):
    """The mean-shift control: the mean of NTRK's tilted noise, std gamma W(g), moved into the kernel mean,
    with the full fresh noise kept. Same direction and expected displacement as NTRK; only where the
    guidance enters (mean vs noise) differs - "noise tilt" vs "stronger guidance"."""

    def shift(ev: Evaluation, std: float, k: int) -> torch.Tensor:
        w = whiten(ev.grad).to(ev.grad.dtype)
        return std * _per_sample(resolve_gamma(gamma, ev.grad, w, strength), w) * w

    return shift


#: gamma: a fixed strength in [0, 1] (eq. 11) or "auto"
GAMMA = Limit(lambda v: v == "auto" if isinstance(v, str) else 0 <= v <= 1,
              "in [0, 1] (NTRK mixes gamma W(g) with sqrt(1 - gamma^2) noise) or auto")


@dataclass
class NTRK(Chain):
    """NTRK (eqs. 10-13): 1 NFE per step; particles > 1 is NTRK-dagger (Best-of-N over independent runs)."""

    gamma: float | str = "auto"
    strength: float = STRENGTH_REF
    gamma_max: float = 0.95  # gamma="auto"'s cap (module docstring)
    decorrelate: bool = False  # the decorrelated variant (module docstring); False is the paper's kernel
    whitening: Optional[Any] = None  # a conf/whitening block (None: ``full``)
    label: ClassVar[str] = "NTRK"
    ledger_name: ClassVar[str] = "ntrk"
    needs_grad: ClassVar[bool] = True
    dagger: ClassVar[bool] = True
    limits: ClassVar[dict] = {"gamma": GAMMA, "strength": positive, "gamma_max": interval(0.0, 1.0, open_low=True)}

    def noise_rule(self, problem: Problem) -> NoiseRule:
        times = problem.sde.times(problem.steps)
        stds = [problem.sde.std(times[k], times[k + 1]) for k in range(problem.steps)]
        return NTRKRule(self.gamma, problem.whitening(self.whitening), self.strength, self.gamma_max, stds,
                        problem.noise, self.decorrelate)

    @property
    def whitening_name(self) -> str | None:
        return (self.whitening or {}).get("name", "full")
