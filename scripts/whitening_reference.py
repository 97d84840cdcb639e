"""The whitening operator W as it stood before the batched, sync-free rewrite: the benchmark's reference.

A verbatim copy of ``ntrk_bench/whitening/{project,domains,operator}.py`` at that point (FFT Fourier domain,
butterfly Hadamard domains, two sorts and two scatters per 2OS projection, a per-pass order check read back
to Python). ``scripts/bench_whitening.py`` imports it to print the speed-up of the current operator in the
same run, and to report how far the two operators' outputs differ. Nothing else may import it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ntrk_bench.whitening.bounds import two_level_bounds


def bounds_tensor(m: int, c: int, level: float, ref: tuple, device, cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch (float32) copy of :func:`two_level_bounds`, memoised per device in ``cache``."""
    key = (m, c, level, ref, str(device))
    if key not in cache:
        lo, hi = two_level_bounds(m, c, level, ref)
        cache[key] = (torch.as_tensor(lo, dtype=torch.float32, device=device),
                      torch.as_tensor(hi, dtype=torch.float32, device=device))
    return cache[key]


# ============================================================================= project.py
Patch = "int | tuple[int, int]"


def patch_dims(k) -> tuple[int, int]:
    """A patch side ``k`` (square) or ``(kh, kw)`` (rectangular, e.g. for Wan's 60 x 104 frames)."""
    kh, kw = (k, k) if isinstance(k, int) else tuple(k)
    return int(kh), int(kw)


def groups(x: torch.Tensor, k) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * H/kh * W/kw, kh*kw): rows are patches in (C, H/kh, W/kw) order."""
    b, c, h, w = x.shape
    kh, kw = patch_dims(k)
    if h % kh or w % kw:
        raise ValueError(f"patch {kh}x{kw} does not tile the spatial size {h}x{w}")
    return x.reshape(b, c, h // kh, kh, w // kw, kw).permute(0, 1, 2, 4, 3, 5).reshape(b, -1, kh * kw)


def ungroup(g: torch.Tensor, k, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`groups`."""
    b, c, h, w = shape
    kh, kw = patch_dims(k)
    return g.reshape(b, c, h // kh, w // kw, kh, kw).permute(0, 1, 2, 4, 3, 5).reshape(shape)


def sort_clip_unsort(g: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, max_passes: int = 16) -> torch.Tensor:
    """2OS projection of a (B, m, c) chunk matrix onto the box set of eq. (85) (Prop. B.3).

    Sort within each chunk (rows), then across chunks for every inner rank (columns), clip each rank pair
    (i, j) into [lo_ij, hi_ij], and undo both permutations.

    Clipping keeps every column sorted (bounds increase with the outer rank), but it can reorder values
    *inside* a chunk, because a chunk's inner ranks sit at different outer ranks with different bounds.
    Then the result's own doubly sorted statistic is not the clipped matrix and it may lie outside the set,
    a case Prop. B.3's argument does not cover (seen on strongly structured inputs, never on noise). We
    check this for free - every chunk still non-decreasing in inner rank - and repeat the pass while it
    fails, up to ``max_passes``: structured inputs typically settle in 2-4 passes, noise in one. Where the
    box of one inner rank lies wholly above the next rank's box, no point keeps the chunk's order and the
    exact projection would have to reorder the chunk; the passes then end in a small cycle that leaves a
    handful of entries up to ~2e-3 outside their bounds (measured on a pure smooth field).
    """
    for _ in range(max_passes):
        s1, i1 = g.sort(dim=-1)
        s2, i2 = s1.sort(dim=-2)
        t = torch.minimum(torch.maximum(s2, lo), hi)
        s1 = torch.empty_like(t).scatter_(-2, i2, t)
        g = torch.empty_like(s1).scatter_(-1, i1, s1)
        if bool((s1[..., 1:] >= s1[..., :-1]).all()):
            break
    return g


def project_2os(x: torch.Tensor, k, level: float, ref: tuple = ("normal",), cache: dict | None = None,
                passes: int = 16) -> torch.Tensor:
    """2OS confidence-interval projection of a field with k x k chunks (eq. 86)."""
    g = groups(x, k)
    lo, hi = bounds_tensor(g.shape[-2], g.shape[-1], level, ref, x.device, {} if cache is None else cache)
    return ungroup(sort_clip_unsort(g, lo, hi, passes), k, x.shape)


def project_tile_stats(x: torch.Tensor, k, level: float, stat_chunk: int = 2, cache: dict | None = None,
                       passes: int = 16, rel_eps: float = 1e-10) -> torch.Tensor:
    """Tile-wise mean and centred-energy projection with k x k (or kh x kw) tiles (eqs. 89-95, Prop. B.4).

    For a tile of size s, sqrt(s) * mean ~ N(0, 1) and the centred energy ~ chi2(s - 1) (eq. 91). Both
    statistic fields, laid out as (C, H/kh, W/kw) so that neighbouring tiles share a chunk, are projected
    with 2OS (eq. 93); each tile is then shifted to its target mean and its centred part rescaled to its
    target energy (eq. 95), the Euclidean projection of Prop. B.4. A tile whose centred energy is zero
    (below ``rel_eps`` times the average tile energy, i.e. float round-off) has no unique projection
    (Prop. B.4); it takes its target mean and keeps zero energy.
    """
    b, c, h, w = x.shape
    kh, kw = patch_dims(k)
    s = kh * kw
    g = groups(x, k)
    mean = g.mean(dim=-1, keepdim=True)
    centred = g - mean
    energy = centred.square().sum(dim=-1)
    field = (b, c, h // kh, w // kw)
    # Chunk the statistic field with stat_chunk x stat_chunk neighbourhoods where it divides, else singletons
    # (then 2OS reduces to the one-level order-statistic projection of Prop. B.2).
    kc = stat_chunk if (field[2] % stat_chunk == 0 and field[3] % stat_chunk == 0) else 1
    z = project_2os((mean.squeeze(-1) * math.sqrt(s)).reshape(field), kc, level, ("normal",), cache, passes)
    e = project_2os(energy.reshape(field), kc, level, ("chi2", s - 1), cache, passes)
    alive = energy > rel_eps * energy.mean(dim=-1, keepdim=True)
    scale = torch.where(alive, (e.reshape(b, -1) / energy.clamp_min(1e-30)).sqrt(), torch.zeros_like(energy))
    centred = torch.where(alive.unsqueeze(-1), centred - centred.mean(dim=-1, keepdim=True), torch.zeros_like(centred))
    g = z.reshape(b, -1, 1) / math.sqrt(s) + centred * scale.unsqueeze(-1)
    return ungroup(g, k, x.shape)


def project_norm(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Norm projection sqrt(D) x / ||x|| onto the Gaussian concentration sphere (eq. 115)."""
    d = x[0].numel()
    norm = x.flatten(1).norm(dim=-1).clamp_min(eps)
    return x * (math.sqrt(d) / norm).view(-1, *([1] * (x.dim() - 1)))


def project_block_norms(x: torch.Tensor, k, eps: float = 1e-12) -> torch.Tensor:
    """Hard block-wise norm equalities ||x_b|| = sqrt(|b|) on k x k blocks (the WGNC-style set of App. B.7).

    Applied in the compact Fourier domain, this is the comparator operator W_WGNC: every spectral block is
    forced onto the sphere of its expected norm, which removes structure but also the natural variability
    of genuine noise.
    """
    g = groups(x, k)
    g = g * (math.sqrt(g.shape[-1]) / g.norm(dim=-1, keepdim=True).clamp_min(eps))
    return ungroup(g, k, x.shape)


# ============================================================================= domains.py
_SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------- compact real Fourier (eq. 111-112)
def compact_rfft(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal compact real Fourier transform along the last axis (even length n), eq. (111)-(112).

    Keeps the two real boundary bins (DC, Nyquist) and the n/2 - 1 interior bins as sqrt(2) Re and
    sqrt(2) Im; the sqrt(2) accounts for Hermitian symmetry and preserves the norm. The order of the n
    outputs is free (any order is orthogonal); we interleave them as [DC, Re_1, Im_1, ..., Nyquist] so
    that a frequency's real and imaginary parts, and neighbouring frequencies, share a 2OS chunk: chunks
    then constrain spectral *power* locally, which measurably flattens the spectrum of whitened
    structured inputs compared with the [real parts | imaginary parts] concatenation.
    """
    n = x.shape[-1]
    if n % 2:
        raise ValueError(f"the compact Fourier domain needs an even length, got {n}")
    f = torch.fft.rfft(x, dim=-1, norm="ortho")
    interior = torch.view_as_real(f[..., 1:-1]).flatten(-2) * _SQRT2  # Re_1, Im_1, Re_2, Im_2, ...
    return torch.cat([f[..., :1].real, interior, f[..., -1:].real], dim=-1)


def compact_irfft(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`compact_rfft`."""
    n = y.shape[-1]
    interior = torch.view_as_complex((y[..., 1:-1] / _SQRT2).reshape(*y.shape[:-1], n // 2 - 1, 2).contiguous())
    zero = torch.zeros_like(y[..., :1])
    f = torch.cat([torch.complex(y[..., :1], zero), interior, torch.complex(y[..., -1:], zero)], dim=-1)
    return torch.fft.irfft(f, n=n, dim=-1, norm="ortho")


def fourier2d(x: torch.Tensor) -> torch.Tensor:
    """Separable compact Fourier transform over both spatial axes (W, then H)."""
    return compact_rfft(compact_rfft(x).transpose(-1, -2)).transpose(-1, -2)


def ifourier2d(y: torch.Tensor) -> torch.Tensor:
    return compact_irfft(compact_irfft(y.transpose(-1, -2)).transpose(-1, -2))


# ----------------------------------------------------------------------------- Hadamard-style butterflies (eq. 113)
def butterfly(v: torch.Tensor, repeats: int) -> torch.Tensor:
    """``repeats`` butterfly stages along the last axis.

    One stage maps each adjacent pair (a, b) to ((a + b)/sqrt 2, (a - b)/sqrt 2) and writes all sums before
    all differences (an odd last entry passes through). The regrouping is what makes repetition mix further
    (a bare pairwise butterfly is an involution); log2(n) stages on n = 2^k give the Walsh-Hadamard transform.
    """
    for _ in range(repeats):
        m = v.shape[-1] // 2
        a, b = v[..., 0:2 * m:2], v[..., 1:2 * m:2]
        v = torch.cat([(a + b) / _SQRT2, (a - b) / _SQRT2, v[..., 2 * m:]], dim=-1)
    return v


def unbutterfly(v: torch.Tensor, repeats: int) -> torch.Tensor:
    """Inverse of :func:`butterfly`."""
    for _ in range(repeats):
        m = v.shape[-1] // 2
        s, d = v[..., :m], v[..., m:2 * m]
        pairs = torch.stack([(s + d) / _SQRT2, (s - d) / _SQRT2], dim=-1).flatten(-2)
        v = torch.cat([pairs, v[..., 2 * m:]], dim=-1)
    return v


# ----------------------------------------------------------------------------- domain registry
@dataclass(frozen=True)
class Domain:
    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    inverse: Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def make_domain(name: str, tile=0, repeats: int | None = None) -> Domain:
    """Build a domain by name.

    * ``spatial``: the latent's own coordinates.
    * ``fourier``: separable 2-D compact real Fourier transform (H and W even).
    * ``hadamard``: ``repeats`` butterfly stages over the whole flattened field (``tile=0``, "full latent
      resolution") or within every k x k patch of a channel (``tile=k``, "tiled mixing"). ``repeats=None``
      means log2 of the mixed length, i.e. a complete Walsh-Hadamard mixing.
    """
    if name == "spatial":
        return Domain("spatial", _identity, _identity)
    if name == "fourier":
        return Domain("fourier", fourier2d, ifourier2d)
    if name == "hadamard":
        def depth(n: int) -> int:
            return max(1, math.ceil(math.log2(n))) if repeats is None else repeats

        if tile == 0:
            def fwd(x):
                v = x.flatten(1)
                return butterfly(v, depth(v.shape[-1])).reshape(x.shape)

            def inv(y):
                v = y.flatten(1)
                return unbutterfly(v, depth(v.shape[-1])).reshape(y.shape)
        else:
            n = math.prod(patch_dims(tile))

            def fwd(x):
                return ungroup(butterfly(groups(x, tile), depth(n)), tile, x.shape)

            def inv(y):
                return ungroup(unbutterfly(groups(y, tile), depth(n)), tile, y.shape)
        return Domain(f"hadamard[{tile or 'full'}]", fwd, inv)
    raise ValueError(f"unknown whitening domain {name!r}; expected spatial, fourier or hadamard")


# ============================================================================= operator.py
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

    def __init__(self, cfg: WhiteningConfig | dict, event_shape: Sequence[int], device: str | torch.device = "cpu"):
        self.cfg = _as_config(cfg)
        if self.cfg.input_norm not in ("rms", "none"):
            raise ValueError(f"whitening.input_norm must be 'rms' or 'none', got {self.cfg.input_norm!r}")
        self.event_shape = tuple(event_shape)
        self.field = field_shape(self.event_shape)
        self.blocks = [(b, make_domain(b.domain, b.tile, b.mix)) for b in self.cfg.blocks]
        self._cache: dict = {}
        self.precompute(device)

    # ------------------------------------------------------------------ bounds
    def precompute(self, device: str | torch.device = "cpu") -> None:
        """Compute and cache every confidence bound this configuration needs on ``device``."""
        c, h, w = self.field
        probe = torch.empty(1, c, h, w, device="meta")
        for block, _ in self.blocks:
            for k in block.chunks:
                g = groups(probe, k)
                bounds_tensor(g.shape[-2], g.shape[-1], self.cfg.level, ("normal",), device, self._cache)
            for k in block.tiles:
                g = groups(probe, k)
                kh, kw = patch_dims(k)
                fh, fw = h // kh, w // kw
                kc = self.cfg.stat_chunk if (fh % self.cfg.stat_chunk == 0 and fw % self.cfg.stat_chunk == 0) else 1
                m = g.shape[-2] // (kc * kc)
                for ref in (("normal",), ("chi2", kh * kw - 1)):
                    bounds_tensor(m, kc * kc, self.cfg.level, ref, device, self._cache)
            for k in block.block_norms:
                groups(probe, k)  # validates divisibility

    # ------------------------------------------------------------------ apply
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.event_shape)
        if tuple(x.shape[x.dim() - n:]) != self.event_shape:
            raise ValueError(f"whitening built for event shape {self.event_shape}, got tensor of shape {tuple(x.shape)}")
        y = x.float().reshape(-1, *self.field)
        y = torch.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
        if self.cfg.input_norm == "rms":
            y = project_norm(y)
        level, cache = self.cfg.level, self._cache
        for block, domain in self.blocks * self.cfg.cycles:
            q = domain.forward(y)
            for _ in range(block.repeats):
                for k in block.chunks:
                    q = project_2os(q, k, level, ("normal",), cache, self.cfg.passes)
                for k in block.tiles:
                    q = project_tile_stats(q, k, level, self.cfg.stat_chunk, cache, self.cfg.passes)
                for k in block.block_norms:
                    q = project_block_norms(q, k)
            y = domain.inverse(q)
        if self.cfg.norm_projection:
            y = project_norm(y)
        return y.reshape(x.shape).to(x.dtype)


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
