"""Validation of a composed configuration before anything loads: types and ranges, one line naming the key.

Types come from the code that consumes each block - the top-level schema below, each method's constructor
signature (``baselines.METHODS``), ``FlowSDE`` and ``WhiteningConfig`` - so a new parameter is validated
the moment it exists. Ranges and choices are the table ``RULES``.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A bad configuration value: the message names the key, the value and what is allowed."""


@dataclass
class Run:
    steps: int = 25
    nfe: Optional[int] = None
    samples_per_prompt: int = 1
    seed: int = 0
    progress: bool = True
    save_latents: bool = True
    evaluate: bool = True


def _positive(v) -> bool:
    return v > 0


def _unit(v) -> bool:
    return 0 <= v <= 1


#: key -> (predicate, what is allowed); applied wherever the key occurs (top level, method, sde, whitening)
RULES: dict[str, tuple[Any, str]] = {
    "steps": (_positive, "an integer >= 1"), "nfe": (_positive, "an integer >= 1 or null"),
    "samples_per_prompt": (_positive, "an integer >= 1"), "seed": (lambda v: v >= 0, "an integer >= 0"),
    "particles": (_positive, ">= 1"), "candidates": (_positive, ">= 1"), "iterations": (_positive, ">= 1"),
    "chains": (_positive, ">= 1"), "repeats": (_positive, ">= 1"), "burn_in": (lambda v: v >= 0, ">= 0"),
    "mcmc_steps": (_positive, ">= 1"), "budget": (_positive, ">= 1 or null"),
    "gamma": (lambda v: v == "auto" if isinstance(v, str) else _unit(v),
              "in [0, 1] (NTRK mixes gamma W(g) with sqrt(1 - gamma^2) noise) or auto"),
    "strength": (_positive, "> 0"),
    "scale": (lambda v: v >= 0, ">= 0"), "rho": (lambda v: v >= 0, ">= 0"), "lr": (_positive, "> 0"),
    "alpha": (_positive, "> 0"), "alpha_mcmc": (_positive, "> 0"), "step_size": (_positive, "> 0"),
    "ess_threshold": (_unit, "in [0, 1]"), "grad_rms_cap": (_positive, "> 0 or null"),
    "reg_weight": (lambda v: v >= 0, ">= 0"), "level": (lambda v: 0 < v < 1, "in (0, 1)"),
    "diffusion_norm": (lambda v: v >= 0, ">= 0"), "cycles": (_positive, ">= 1"), "passes": (_positive, ">= 1"),
    "output": (lambda v: v in ("tweedie", "step"), "tweedie or step"),
    "proposal": (lambda v: v in ("twist", "ntrk"), "twist or ntrk"),
    "init_weights": (lambda v: v in ("uniform", "reward"), "uniform or reward"),
    "resampler": (lambda v: v in ("ssp", "multinomial"), "ssp or multinomial"),
    "schedule": (lambda v: v in ("vp", "linear"), "vp or linear"),
    "grid": (lambda v: v in ("linear", "sqrt"), "linear or sqrt"),
    "diffusion": (lambda v: v in ("rev_original", "square", "linear", "sigma", "constant", "ode"),
                  "rev_original, square, linear, sigma, constant or ode"),
    "input_norm": (lambda v: v in ("rms", "none"), "rms or none"),
}


def _check_type(key: str, value, hint) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        if hint is Any or type(None) in args:
            return
        raise ConfigError(f"{key}: null is not allowed (expected {getattr(hint, '__name__', hint)})")
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        hints = [a for a in args if a is not type(None)]
        return _check_type(key, value, hints[0]) if len(hints) == 1 else None
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
          tuple: lambda v: isinstance(v, (list, tuple)), list: lambda v: isinstance(v, (list, tuple))}.get(origin or hint)
    if ok is not None and not ok(value):
        raise ConfigError(f"{key}={value!r}: expected {getattr(origin or hint, '__name__', hint)}")


def _check(prefix: str, values: dict, hints: dict[str, Any]) -> None:
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in hints:
            raise ConfigError(f"{key}: unknown key; allowed: {', '.join(sorted(hints))}")
        _check_type(key, v, hints[k])
        if k in RULES and v is not None and not isinstance(v, (list, dict)) and not RULES[k][0](v):
            raise ConfigError(f"{key}={v!r}: must be {RULES[k][1]}")


def _hints(fn) -> dict[str, Any]:
    """Parameter -> type of a constructor (dataclass fields or a function's annotations)."""
    target = fn if not inspect.isclass(fn) else fn.__init__
    hints = typing.get_type_hints(target)
    params = inspect.signature(fn).parameters
    return {name: hints.get(name, Any) for name in params if name not in ("self", "whitening")}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError (one line, naming the key) for any bad value of a composed run configuration."""
    from baselines import METHODS

    from .sde import FlowSDE
    from .whitening.operator import BlockConfig, WhiteningConfig

    top = {f.name: f.type for f in dataclasses.fields(Run)}
    _check("", {k: cfg.get(k) for k in top}, typing.get_type_hints(Run))
    method = OmegaConf.to_container(cfg.method, resolve=True)
    name = method.pop("name")
    if name not in METHODS:
        raise ConfigError(f"method.name={name!r}: unknown method; available: {', '.join(sorted(METHODS))}")
    _check("method.", method, _hints(METHODS[name]))
    _check("sde.", OmegaConf.to_container(cfg.sde, resolve=True), typing.get_type_hints(FlowSDE))
    white = OmegaConf.to_container(cfg.whitening, resolve=True)
    blocks = white.pop("blocks", [])
    _check("whitening.", white, typing.get_type_hints(WhiteningConfig))
    for i, block in enumerate(blocks):
        _check(f"whitening.blocks[{i}].", block, typing.get_type_hints(BlockConfig))
    if cfg.get("nfe"):
        from baselines.budgets import budget_params

        try:
            budget_params(name, cfg.nfe, cfg.steps, method)
        except ValueError as err:
            raise ConfigError(str(err)) from None


__all__ = ["ConfigError", "validate"]
