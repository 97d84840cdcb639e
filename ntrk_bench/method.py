"""What every method shares: the problem it solves, its noise source, its cost model, the result it returns,
and the batched chain of single-trajectory methods.

A :class:`Problem` is one item of a benchmark - one prompt, one seed - with the model (behind the NFE
counter), the reverse SDE, the target reward and the step count. The model owns the device and the dtype
of the sampler's state (``model.device``, ``model.dtype``); the problem carries them, draws every random
number from one seeded CPU generator and moves it there (a seed gives the same numbers on a CPU and a
GPU), and evaluates particles in chunks of at most ``batch_size`` samples (forward and backward), which
bounds memory without changing results or NFE.

A method is a dataclass deriving from :class:`Method`: its fields are its configuration, and it owns what is
true of it - its cost model (fixed NFE and NFE per unit of the parameter a budget sets), the limits of its
parameters, whether it applies the whitening operator, its row in the paper's ledger and its display name.
Budgets, validation, generation and tables ask the method; adding one is a module plus a ``conf/method``
YAML naming its class (``_target_``).

Single-trajectory methods (base, DPS, NTRK) differ only in the noise they inject or the mean shift they
apply, so they are one :class:`Chain` with ``particles`` independent trajectories and Best-of-N selection
on the final target reward (the paper's dagger rows; particles = 1 is the plain method).
"""
from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch

from .limits import Limit, count
from .sampling import (Evaluation, NoiseRule, NoiseSource, NonFiniteReward, ShiftRule, check_finite, evaluate_denoiser,
                       sample_chain)
from .sde import FlowSDE


# ----------------------------------------------------------------------------- problems
def chunks(n: int, size: int | None) -> list[slice]:
    """Slices of at most ``size`` samples covering range(n) (all of it when size is None)."""
    size = n if not size else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


_OPERATORS: dict = {}  # (whitening config, latent shape) -> operator; its bounds are cached per device inside


def whitening_operator(cfg, shape: tuple[int, ...]):
    """The whitening operator of a configuration for one latent shape, built once per process."""
    from .whitening import Whitening

    if cfg is None:
        from .config import load_group

        cfg = load_group("whitening", "full")
    plain = cfg if isinstance(cfg, dict) else _container(cfg)
    key = (json.dumps(plain, sort_keys=True, default=str), tuple(shape))
    if key not in _OPERATORS:
        _OPERATORS[key] = Whitening(plain, shape)
    return _OPERATORS[key]


def _container(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dataclasses.asdict(cfg)


@dataclass
class Problem:
    sde: FlowSDE
    model: Any  # a CountingModel; ``model.device`` and ``model.dtype`` are the state's device and dtype
    prompt: str
    reward: Callable  # reward(pixels, prompts) -> (B,), differentiable
    steps: int
    generator: torch.Generator  # CPU generator: the item's seed stream
    condition_model: bool = True
    batch_size: Optional[int] = None  # most samples per denoiser / reward call (None: all at once)
    guard: Optional[Callable[[str, Any], Any]] = None  # wraps the reward and W (placement checks)
    _conds: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        self.noise = NoiseSource(self.generator, self.device, self.dtype)
        if self.guard is not None:
            self.reward = self.guard("reward", self.reward)

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.model, "device", "cpu"))

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.model, "dtype", torch.float32)

    def randn(self, shape) -> torch.Tensor:
        """Fresh standard-normal draws of ``shape`` on the state's device and dtype."""
        return self.noise.normal(shape)

    def initial_noise(self, n: int) -> torch.Tensor:
        """x at tau = 1 for n particles: standard normal, used as is in either schedule."""
        return self.randn((n, *self.model.latent_shape))

    def cond(self, n: int):
        """The prompt encoded for n samples (once per batch size)."""
        if n not in self._conds:
            self._conds[n] = self.model.condition([self.prompt if self.condition_model else ""] * n)
        return self._conds[n]

    def value(self, x0: torch.Tensor) -> torch.Tensor:
        """Target reward of decoded clean latents (B,) - the quantity every method maximises."""
        return self.reward(self.model.decode(x0), [self.prompt] * len(x0))

    def score(self, x0: torch.Tensor) -> torch.Tensor:
        """The target reward of clean latents without gradients (no NFE: the reward sees pixels), chunked."""
        with torch.no_grad(), self.naming_the_reward():
            parts = [check_finite("value", self.value(x0[s]), 0.0) for s in chunks(len(x0), self.batch_size)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def evaluate(self, x: torch.Tensor, tau, value: bool = True, grad: bool = True) -> Evaluation:
        """One denoiser pass per particle at (x, tau), chunked by ``batch_size``; with ``value``, the target
        reward of each Tweedie estimate and, with ``grad``, its gradient w.r.t. x through the denoiser."""
        fn = self.value if value else None
        with self.naming_the_reward():
            parts = [evaluate_denoiser(self.sde, self.model, x[s], tau, self.cond(s.stop - s.start), fn, grad)
                     for s in chunks(len(x), self.batch_size)]
        return parts[0] if len(parts) == 1 else Evaluation.cat(parts)

    @contextmanager
    def naming_the_reward(self):
        """NonFiniteReward raised inside names the reward and the kernel step (tau on this item's grid)."""
        try:
            yield
        except NonFiniteReward as err:
            step = int((self.sde.times(self.steps) - err.tau).abs().argmin())
            name = getattr(self.reward, "name", type(self.reward).__name__)
            raise NonFiniteReward(err.what, err.tau, f" (step {step} of {self.steps}) from reward {name!r}") from None

    def whitening(self, cfg):
        """The whitening operator for this model's latent shape (placement-checked when guarded)."""
        op = whitening_operator(cfg, tuple(self.model.latent_shape))
        return op if self.guard is None else self.guard("whitening", op)


@dataclass
class Result:
    x0: torch.Tensor  # (1, *latent_shape): the method's answer for this item
    reward: float
    info: dict = field(default_factory=dict)


def best_of(problem: Problem, x0: torch.Tensor, info: dict | None = None,
            diagnostics: dict[str, torch.Tensor] | None = None) -> Result:
    """Select the particle with the highest final target reward (no NFE: the reward sees pixels).
    ``diagnostics``: per-particle (B,) values a method recorded; the chosen particle's go into the record."""
    scores = problem.score(x0)
    i = int(scores.argmax())
    chosen = {k: float(v[i]) for k, v in (diagnostics or {}).items()}
    return Result(x0[i:i + 1], float(scores[i]), {"particle_rewards": scores.tolist(), **(info or {}),
                                                   **({"diagnostics": chosen} if chosen else {})})


# ----------------------------------------------------------------------------- cost model and ledger
@dataclass(frozen=True)
class Row:
    """A run's row in the paper's ledger, keyed as ``paper_results.csv`` is (dagger = ``bon`` augment)."""

    method: str
    augment: str = ""
    particles: int = 1
    steps: int | str = 25
    nfe: int = 25


@dataclass(frozen=True)
class Cost:
    """NFE per sample = ``fixed`` + ``per_unit`` x the value of the method's budget parameter."""

    fixed: int
    per_unit: int


class BudgetError(ValueError):
    """A total NFE that no setting of a method spends exactly."""


class Method:
    """Base of every sampling method (a dataclass subclass; see the module docstring)."""

    label: ClassVar[str] = ""  # display name in tables and reports
    ledger_name: ClassVar[str] = ""  # the method's key in the paper's ledger
    budget_key: ClassVar[str] = "particles"  # the parameter a budget (``nfe=``) sets
    dagger: ClassVar[bool] = False  # budget units > 1 is the paper's dagger (Best-of-N) augment of this method
    limits: ClassVar[dict[str, Limit]] = {}

    def __call__(self, problem: Problem) -> Result:
        raise NotImplementedError

    def cost(self, steps: int) -> Cost:
        """Fixed NFE and NFE per unit of ``budget_key`` at ``steps`` kernel steps (measured by the tests)."""
        return Cost(0, steps)

    @property
    def whitening_name(self) -> str | None:
        """The whitening configuration this method applies (None: it does not whiten)."""
        return None

    def units(self) -> int:
        """The value of the budget parameter (particles, candidates, ...)."""
        return getattr(self, self.budget_key, 1)

    def display_name(self) -> str:
        return self.label + ("†" if self.dagger and self.units() > 1 else "")

    def budget_units(self, nfe: int, steps: int) -> int:
        c = self.cost(steps)
        n, rest = divmod(nfe - c.fixed, c.per_unit)
        if n < 1 or rest:
            name = self.ledger_name or type(self).__name__
            raise BudgetError(f"nfe={nfe} cannot be spent exactly by {name} at {steps} steps "
                              f"({c.fixed} fixed + a multiple of {c.per_unit} NFE per {self.budget_key})")
        return n

    def with_budget(self, nfe: int, steps: int) -> "Method":
        """This method with its budget parameter set so that one sample costs exactly ``nfe``."""
        return dataclasses.replace(self, **{self.budget_key: self.budget_units(nfe, steps)})

    def ledger_row(self, steps: int, nfe: int) -> Row:
        return Row(self.ledger_name, "bon" if self.dagger and self.units() > 1 else "", self.units(), steps, nfe)


@dataclass
class Chain(Method):
    """``particles`` independent reverse-SDE trajectories, then Best-of-N (eq. 4 with a method's hooks)."""

    particles: int = 1
    limits: ClassVar[dict] = {"particles": count}
    needs_grad: ClassVar[bool] = False

    def noise_rule(self, problem: Problem) -> NoiseRule | None:
        return None

    def shift_rule(self, problem: Problem) -> ShiftRule | None:
        return None

    def __call__(self, problem: Problem) -> Result:
        x = problem.initial_noise(self.particles)
        rule = self.noise_rule(problem)
        x0 = sample_chain(problem.sde, x, problem.steps, problem.randn,
                          lambda x, tau: problem.evaluate(x, tau, value=self.needs_grad),
                          noise_rule=rule, shift_rule=self.shift_rule(problem))
        return best_of(problem, x0, diagnostics=getattr(rule, "diagnostics", dict)())


@dataclass
class Base(Chain):
    """The unguided reverse kernel (paper Sec. 3.2): 1 NFE per step."""

    label: ClassVar[str] = "Base"
    ledger_name: ClassVar[str] = "base"

    def with_budget(self, nfe: int, steps: int) -> "Method":
        if self.budget_units(nfe, steps) > 1:
            raise BudgetError(f"nfe={nfe} at {steps} steps is Best-of-{nfe // steps}: use method=bon")
        return super().with_budget(nfe, steps)


@dataclass
class BestOfN(Base):
    """Best-of-N (Stiennon et al., NeurIPS 2020): N independent base trajectories, keep the best final reward."""

    particles: int = 20
    label: ClassVar[str] = "BoN"
    ledger_name: ClassVar[str] = "bon"

    def with_budget(self, nfe: int, steps: int) -> "Method":
        return Method.with_budget(self, nfe, steps)


def build_method(cfg, nfe: int | None = None, steps: int | None = None) -> Method:
    """A method from its ``conf/method`` block: the class named by ``_target_``, built with every other key
    (``name`` is the option's label), then, with a budget ``nfe``, its budget parameter set from it."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    block = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    block.pop("name", None)
    method = instantiate(block, _convert_="all")
    return method.with_budget(nfe, steps) if nfe else method


__all__ = ["Base", "BestOfN", "BudgetError", "Chain", "Cost", "Method", "NoiseSource", "Problem", "Result", "Row",
           "best_of", "build_method", "chunks", "whitening_operator"]
