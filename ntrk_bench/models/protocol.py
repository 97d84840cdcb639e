"""The interface every model implements, and the NFE counter that wraps it.

A :class:`FlowModel` is a rectified flow (x_t = (1 - t) x0 + t eps, t = 1 is noise) seen in its *unpacked*
latent layout (FLUX: 16 x H/8 x W/8, Wan: 16 x F x H/8 x W/8): whitening tiles and transforms must act on
that layout, never on a packed token sequence. Samplers only reach the denoiser through
:class:`CountingModel`, so NFE is always measured, never computed by formula.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class FlowModel(Protocol):
    #: Shape of one latent, without batch dims, in the unpacked layout the whitening operator sees.
    latent_shape: tuple[int, ...]
    #: Where the model lives: every state, draw and gradient of a sampler is put on this device ...
    device: torch.device
    #: ... in this dtype (the sampler state's: float32 for the real models, whose weights may be bf16).
    dtype: torch.dtype

    def condition(self, prompts: Sequence[str]) -> Any:
        """Encode prompts once; the result is passed back to :meth:`velocity` and :meth:`decode`."""

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Linear-interpolant velocity v = eps - x0 at x (B, *latent_shape) and times t (B,) in [0, 1], both on
        ``device`` in ``dtype``; returned in ``dtype``."""

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Differentiable map from a clean latent to pixels in [0, 1] (images (B, 3, H, W), videos
        (B, 3, F, H, W)), in ``dtype``."""


@dataclass
class NFECounter:
    """Counts denoiser work per sample: ``nfe`` forward evaluations, ``grads`` of them differentiated, and
    ``recomputed`` replays of an evaluation already counted (gradient checkpointing re-runs the forward
    pass during backward: memory bookkeeping, not a new function evaluation of the sampler)."""

    nfe: int = 0
    grads: int = 0
    calls: int = 0
    recomputed: int = 0
    replaying: bool = False

    def reset(self) -> None:
        self.nfe = self.grads = self.calls = self.recomputed = 0

    def snapshot(self) -> dict:
        out = {"nfe": self.nfe, "grad_nfe": self.grads, "calls": self.calls}
        if self.recomputed:
            out["recomputed"] = self.recomputed
        return out


class CountingModel:
    """Wraps a FlowModel; every velocity call adds its number of samples to the counter."""

    def __init__(self, model: FlowModel, counter: NFECounter | None = None):
        self.model = model
        self.counter = counter if counter is not None else NFECounter()
        self.latent_shape = tuple(model.latent_shape)
        self._event = math.prod(self.latent_shape)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        n = x.numel() // self._event
        if self.counter.replaying:
            self.counter.recomputed += n
        else:
            self.counter.nfe += n
            self.counter.calls += 1
            if x.requires_grad:
                self.counter.grads += n
        return self.model.velocity(x, t, cond)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def counted(model: FlowModel) -> CountingModel:
    return model if isinstance(model, CountingModel) else CountingModel(model)
