"""The whitening operator W as it stood before the batched, sync-free rewrite: the benchmark's reference.

The parts of ``ntrk_bench/whitening/{project,domains,operator}.py`` that the rewrite changed, as they were
(butterfly Hadamard domains, two sorts and two scatters per 2OS projection, a per-pass order check read
back to Python); what it left unchanged is imported from there. ``scripts/bench_whitening.py`` imports it to print the speed-up of the current operator in the
same run, and to report how far the two operators' outputs differ. Nothing else may import it.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ntrk_bench.whitening.bounds import bounds_tensor
from ntrk_bench.whitening.domains import Domain, butterfly_domain
from ntrk_bench.whitening.domains import make_domain as current_make_domain
from ntrk_bench.whitening.operator import Whitening as CurrentWhitening
from ntrk_bench.whitening.operator import WhiteningConfig
from ntrk_bench.whitening.project import patch_dims, project_norm


# ============================================================================= project.py
Patch = "int | tuple[int, int]"


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
def make_domain(name: str, tile=0, repeats: int | None = None) -> Domain:
    """Hadamard domains as explicit butterfly stages always (no matrix products); the others as now."""
    return butterfly_domain(tile, repeats) if name == "hadamard" else current_make_domain(name, tile, repeats)


# ============================================================================= operator.py


class Whitening(CurrentWhitening):
    """The whitening operator for one latent shape. Call it on (*batch, *event_shape) tensors."""

    def __init__(self, cfg: WhiteningConfig | dict, event_shape: Sequence[int], device: str | torch.device = "cpu"):
        super().__init__(cfg, event_shape)  # configuration, shapes and checks as now
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
        y = self.fields(x)  # input handling is unchanged
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


