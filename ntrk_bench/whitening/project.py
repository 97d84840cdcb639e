"""Euclidean projections onto Gaussian confidence sets (paper App. B.2-B.3, B.7).

All functions take a float tensor of shape (B, C, H, W) - a batch of "fields" - and are pure. Chunks
(2OS) and tiles (mean / energy statistics) are square k x k patches of one channel, so that the
constraints see local spatial structure; ``groups`` / ``ungroup`` convert between the field and the
(B, m, k*k) matrix whose rows are the patches. The same layout is used in every transform domain,
because every domain maps (C, H, W) to (C, H, W) (see ``domains.py``).
"""
from __future__ import annotations

import math

import torch

from .bounds import bounds_tensor


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
