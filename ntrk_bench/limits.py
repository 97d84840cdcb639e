"""Allowed values of configuration parameters, declared by the code that owns each parameter.

A class lists its parameters' limits in a ``limits`` class attribute (``{"gamma": unit | choice("auto")}``);
validation (``ntrk_bench.schema``) collects them along the class's MRO, so a new parameter is checked where
it is defined and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Limit:
    check: Callable[[Any], bool]
    allowed: str  # what the error message says is allowed

    def __or__(self, other: "Limit") -> "Limit":
        return Limit(lambda v: _ok(self, v) or _ok(other, v), f"{self.allowed} or {other.allowed}")

    def __call__(self, value) -> bool:
        return _ok(self, value)


def _ok(limit: Limit, value) -> bool:
    try:
        return bool(limit.check(value))
    except TypeError:  # a number compared with a string, ...
        return False


def at_least(low: float) -> Limit:
    return Limit(lambda v: not isinstance(v, str) and v >= low, f">= {low:g}")


def interval(low: float, high: float, open_low: bool = False) -> Limit:
    left = "(" if open_low else "["
    return Limit(lambda v: not isinstance(v, str) and (low < v if open_low else low <= v) and v <= high,
                 f"in {left}{low:g}, {high:g}]")


def choice(*options: str) -> Limit:
    return Limit(lambda v: v in options, " | ".join(options))


positive = Limit(lambda v: not isinstance(v, str) and v > 0, "> 0")
count = at_least(1)  # particles, steps, iterations, ...
unit = interval(0.0, 1.0)


def collect(cls) -> dict[str, Limit]:
    """Every ``limits`` entry along ``cls``'s MRO (subclasses override their bases)."""
    out: dict[str, Limit] = {}
    for klass in reversed(getattr(cls, "__mro__", (cls,))):
        out.update(vars(klass).get("limits", {}))
    return out


__all__ = ["Limit", "at_least", "choice", "collect", "count", "interval", "positive", "unit"]
