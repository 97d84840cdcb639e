"""Placement checks: every tensor a method hands the model, the reward or the whitening operator must be on
the model's declared device and in its declared dtype (``FlowModel.device`` / ``.dtype``).

``PlacementGuard`` wraps those three; run the mini model declared in float64 and any tensor that a method
created without asking the owner (a bare ``torch.randn``, a ``.float()``, a CPU default) shows up as float32
or on the wrong device. Used by the tests and by ``scripts/gpu_check.py`` (where it is the "every tensor
stayed on the device" column).
"""
from __future__ import annotations

from typing import Any

import torch


class PlacementError(AssertionError):
    """A tensor reached the model, the reward or W off the owner's device or dtype."""


class PlacementGuard:
    """``guard(kind, obj)`` wraps a model, a reward or a whitening operator with input checks; ``violations``
    lists what was caught (with ``strict``, the first one raises at once)."""

    def __init__(self, device: torch.device | str, dtype: torch.dtype, strict: bool = True):
        self.device, self.dtype, self.strict = torch.device(device), dtype, strict
        self.violations: list[str] = []
        self.checked = 0

    def check(self, where: str, t) -> None:
        if not torch.is_tensor(t) or not t.is_floating_point():
            return
        self.checked += 1
        same_device = t.device.type == self.device.type and (self.device.index is None or t.device == self.device)
        if not same_device or t.dtype != self.dtype:
            msg = f"{where}: got {t.dtype} on {t.device}, expected {self.dtype} on {self.device}"
            self.violations.append(msg)
            if self.strict:
                raise PlacementError(msg)

    def __call__(self, kind: str, obj: Any):
        return {"model": GuardedModel, "reward": GuardedCall, "whitening": GuardedCall}[kind](self, kind, obj)


class GuardedCall:
    """A callable (reward or W) whose tensor arguments are checked."""

    def __init__(self, guard: PlacementGuard, kind: str, inner):
        self._guard, self._kind, self._inner = guard, kind, inner

    def __call__(self, *args, **kwargs):
        for i, a in enumerate(args):
            self._guard.check(f"{self._kind} argument {i}", a)
        return self._inner(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class GuardedModel:
    """A FlowModel whose ``velocity`` and ``decode`` inputs are checked."""

    def __init__(self, guard: PlacementGuard, kind: str, model):
        self._guard, self._model = guard, model

    def velocity(self, x, t, cond):
        self._guard.check("model.velocity x", x)
        self._guard.check("model.velocity t", t)
        return self._model.velocity(x, t, cond)

    def decode(self, x0):
        self._guard.check("model.decode x0", x0)
        return self._model.decode(x0)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


__all__ = ["PlacementError", "PlacementGuard"]
