"""The whitening operator W: a configured composition of confidence-set projections (paper Sec. 4, App. B).

W maps an arbitrary latent-shaped tensor (e.g. a reward gradient) to a typical-looking N(0, I) draw:

1. **Input normalisation** (explicit, because 2OS is not scale-equivariant): ``input_norm="rms"`` rescales
   each sample to unit RMS, i.e. onto the sphere of radius sqrt(D) where N(0, I) concentrates. The
   gradient's scale carries no information for NTRK (eq. 11 mixes a unit-scale direction), so this loses
   nothing. ``"none"`` passes the raw input (the identity comparator of App. B.7 uses it).
2. **Blocks**, applied in order. Each block picks an orthogonal domain (spatial, compact Fourier, or
   Hadamard-style butterflies, full or tiled), and inside it applies 2OS projections for every chunk side,
   then tile mean/energy projections for every tile side, ``repeats`` times, then maps back. Every
   projection sees the previous one's output (sequential, as the paper composes them); tile sides that nest
   (each a multiple of the first) are applied as one composition on the finest tiles' statistics
   (``project.project_tile_stats_nested``: the same maps, the field read and written once).

Shapes: the last ``len(event_shape)`` dims of the input form one sample; any leading dims are batch. An
event (C, ..., H, W) is viewed as a (C', H, W) field with C' the product of the non-spatial event dims.

Device and dtype: W runs on the input's device and computes and returns float32 whatever the input dtype.
Confidence bounds for every statistic the configuration uses are computed at construction (App. B.6, in
float64 NumPy); their float32 tensors, the sort-key offsets and the transform matrices are made on a
device the first time W sees it (or by ``precompute(device)``) and cached. A call is a fixed sequence of
tensor operations - nothing is read back to the host and no branch depends on the values - so it runs
unchanged under ``torch.compile`` and CUDA graphs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .bounds import two_level_bounds
from .domains import make_domain
from .project import (check_patches, dead_tile_threshold, nested_runs, project_2os, project_block_norms, project_norm,
                      project_tile_stats_nested, stat_chunk_side)


@dataclass
class BlockConfig:
    domain: str = "spatial"  # spatial | fourier | hadamard
    tile: Any = 0  # hadamard only: 0 = the whole latent ("full resolution"), k = k x k patches ("tiled")
    mix: int | None = None  # hadamard only: butterfly stages ("repeated ... times"); None = log2(length)
    # Patch sides are k (square k x k) or [kh, kw] (rectangular).
    chunks: list[Any] = field(default_factory=list)  # 2OS chunk sides (chunk size k^2)
    tiles: list[Any] = field(default_factory=list)  # tile sides for mean/energy statistics (tile size k^2)
    block_norms: list[Any] = field(default_factory=list)  # hard block-norm sides (WGNC-style comparator)
    repeats: int = 1  # how often the block's projections are cycled inside the domain


@dataclass
class WhiteningConfig:
    name: str = "custom"  # the conf/whitening option it came from (a label: records and tables)
    input_norm: str = "rms"  # rms | none
    level: float = 0.999  # per-entry confidence level of every interval
    stat_chunk: int = 2  # 2OS chunk side used on the tile-statistic fields
    passes: int = 1  # sort-clip-unsort passes per 2OS projection (1 = the paper's single pass; see project.py)
    blocks: list[BlockConfig] = field(default_factory=list)
    cycles: int = 1  # passes over all blocks (alternating projections towards the sets' intersection)
    norm_projection: bool = False  # final sqrt(D) x/|x| (the norm comparator of App. B.7)


def field_shape(event_shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, ..., H, W) -> (C', H, W)."""
    if len(event_shape) < 2:
        raise ValueError(f"whitening needs an event with two spatial dims, got shape {tuple(event_shape)}")
    *rest, h, w = event_shape
    return (math.prod(rest), h, w)


class Whitening:
    """The whitening operator for one latent shape. Call it on (*batch, *event_shape) tensors."""

    def __init__(self, cfg: WhiteningConfig | dict, event_shape: Sequence[int], device: str | torch.device | None = None):
        self.cfg = _as_config(cfg)
        if self.cfg.input_norm not in ("rms", "none"):
            raise ValueError(f"whitening.input_norm must be 'rms' or 'none', got {self.cfg.input_norm!r}")
        self.event_shape = tuple(event_shape)
        self.field = field_shape(self.event_shape)
        self.blocks = [(b, make_domain(b.domain, b.tile, b.mix)) for b in self.cfg.blocks]
        self._runs = [nested_runs(b.tiles) for b in self.cfg.blocks]  # tile sides composed together
        self._cache: dict = {}  # per-device tensors: bounds, sort-key offsets, statistic scales
        self._check_and_compute_bounds()
        if device is not None:
            self.precompute(device)

    # ------------------------------------------------------------------ bounds
    def _check_and_compute_bounds(self) -> None:
        """Validate every patch side against the field and compute every confidence bound (float64, cached)."""
        c, h, w = self.field
        for block, _ in self.blocks:
            if block.domain == "hadamard" and block.tile:
                check_patches((h, w), block.tile)
            for k in block.chunks:
                kh, kw = check_patches((h, w), k)
                two_level_bounds(c * (h // kh) * (w // kw), kh * kw, self.cfg.level, ("normal",))
            for k in block.tiles:
                kh, kw = check_patches((h, w), k)
                kc = stat_chunk_side((h // kh, w // kw), self.cfg.stat_chunk)
                m = c * (h // kh // kc) * (w // kw // kc)
                for ref in (("normal",), ("chi2", kh * kw - 1)):
                    two_level_bounds(m, kc * kc, self.cfg.level, ref)
            for k in block.block_norms:
                check_patches((h, w), k)

    def precompute(self, device: str | torch.device = "cpu", batch: int = 1) -> None:
        """Make every device-side table this configuration needs on ``device`` now (else on first call)."""
        self(torch.zeros(batch, *self.event_shape, device=device))

    # ------------------------------------------------------------------ apply
    def fields(self, x: torch.Tensor) -> torch.Tensor:
        """(*batch, *event_shape) -> float32 (N, C', H, W) fields, normalised as the configuration says."""
        n = len(self.event_shape)
        if tuple(x.shape[x.dim() - n:]) != self.event_shape:
            raise ValueError(f"whitening built for event shape {self.event_shape}, got tensor of shape {tuple(x.shape)}")
        y = torch.nan_to_num(x.float().reshape(-1, *self.field), nan=0.0, posinf=0.0, neginf=0.0)
        return project_norm(y) if self.cfg.input_norm == "rms" else y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """W(x): float32, shaped like ``x``. W is not differentiable (sorts, clips) and is applied to detached
        gradients, so its ops run in inference mode, without autograd's per-op bookkeeping (5% of a call at
        16x64x64, 19% on a 1x32x32 field, on CPU); the result leaves as a normal tensor."""
        with torch.inference_mode():
            y = self._whiten(x)
        return y.clone()

    def _whiten(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fields(x)
        level, cache, passes = self.cfg.level, self._cache, self.cfg.passes
        dead = dead_tile_threshold(y) if any(self._runs) else None
        for (block, domain), runs in zip(self.blocks * self.cfg.cycles, self._runs * self.cfg.cycles):
            q = domain.forward(y)
            for _ in range(block.repeats):
                for k in block.chunks:
                    q = project_2os(q, k, level, ("normal",), cache, passes)
                for run in runs:  # the sides in order, nested ones composed
                    q = project_tile_stats_nested(q, run, level, self.cfg.stat_chunk, cache, passes, threshold=dead)
                for k in block.block_norms:
                    q = project_block_norms(q, k)
            y = domain.inverse(q)
        if self.cfg.norm_projection:
            y = project_norm(y)
        return y.reshape(x.shape)


def _as_config(cfg) -> WhiteningConfig:
    if isinstance(cfg, WhiteningConfig):
        return cfg
    if hasattr(cfg, "items"):  # dict or DictConfig
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
        data.pop("_target_", None)
        blocks = [b if isinstance(b, BlockConfig) else BlockConfig(**b) for b in data.pop("blocks", [])]
        return WhiteningConfig(blocks=blocks, **data)
    raise TypeError(f"cannot build a whitening configuration from {type(cfg).__name__}")
