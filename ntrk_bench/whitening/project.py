"""Euclidean projections onto Gaussian confidence sets (paper App. B.2-B.3, B.7).

All functions take a float32 tensor of shape (B, C, H, W) - a batch of "fields" - and are pure. Chunks
(2OS) and tiles (mean / energy statistics) are k x k (or kh x kw) patches of one channel, so that the
constraints see local spatial structure; ``groups`` / ``ungroup`` convert between the field and the
(B, m, kh*kw) matrix whose rows are the patches, and ``tiles`` views the field as (B, C, H/kh, kh, W/kw, kw)
without copying. The same layout is used in every transform domain, because every domain maps (C, H, W) to
(C, H, W) (see ``domains.py``).

Everything here runs on the input's device with a static sequence of tensor operations: no value is read
back to Python and no branch depends on the data, so the projections run unchanged under ``torch.compile``
and CUDA graphs.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .bounds import bounds_tensor


Patch = "int | tuple[int, int]"


def patch_dims(k) -> tuple[int, int]:
    """A patch side ``k`` (square) or ``(kh, kw)`` (rectangular, e.g. for Wan's 60 x 104 frames)."""
    kh, kw = (k, k) if isinstance(k, int) else tuple(k)
    return int(kh), int(kw)


def tiles(x: torch.Tensor, k) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/kh, kh, W/kw, kw), a view: the k x k patches without a layout copy."""
    b, c, h, w = x.shape
    kh, kw = patch_dims(k)
    if h % kh or w % kw:
        raise ValueError(f"patch {kh}x{kw} does not tile the spatial size {h}x{w}")
    return x.reshape(b, c, h // kh, kh, w // kw, kw)


def groups(x: torch.Tensor, k) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * H/kh * W/kw, kh*kw): rows are patches in (C, H/kh, W/kw) order."""
    b = x.shape[0]
    kh, kw = patch_dims(k)
    return tiles(x, k).permute(0, 1, 2, 4, 3, 5).reshape(b, -1, kh * kw)


def ungroup(g: torch.Tensor, k, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`groups`."""
    b, c, h, w = shape
    kh, kw = patch_dims(k)
    return g.reshape(b, c, h // kh, w // kw, kh, kw).permute(0, 1, 2, 4, 3, 5).reshape(shape)


# ----------------------------------------------------------------------------- 2OS (Prop. B.3, eqs. 85-86)
@torch.library.custom_op("ntrk_bench::sort_keys", mutates_args=())
def sort_keys(keys: torch.Tensor) -> torch.Tensor:
    """Ascending sort of a 1-D int64 tensor of distinct keys (values only): a radix sort (``torch.sort``) on
    accelerators; on CPU NumPy's ``np.sort``, whose SIMD introsort (x86-simd-sort) beats ``torch.sort`` on
    long int64 rows several times over (measured by ``scripts/bench_whitening.py``). A custom op, so that
    ``torch.compile`` treats it as one opaque call on every device."""
    return keys.sort().values


@sort_keys.register_kernel("cpu")
def _sort_keys_cpu(keys: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.sort(keys.numpy()))


@sort_keys.register_fake
def _sort_keys_fake(keys: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(keys)


def ordered_int32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int32 with the same order: IEEE 754 bit patterns of negative numbers run backwards, so
    their 31 magnitude bits are flipped (the classic radix-sort key for floats; -0.0 sorts just below +0.0)."""
    bits = x.view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


#: Below this many entries per matrix, the across-chunk sort is a plain row sort of the transposed matrices
#: (fewer operations; small sorts are cheap); from it on, one sort of packed int64 keys (``sort_clip_unsort``).
PACKED_SORT_MIN = 1 << 14


def packed_key_tables(n_mat: int, m: int, c: int, device, cache: dict | None = None):
    """Static tables of the packed across-chunk sort of ``n_mat`` (m, c) matrices, memoised per device.

    key = segment << (32 + r_bits) | ordered value << r_bits | row, with segment = matrix * c + inner rank
    and the value's 32 order-preserving bits offset by 2^31 to be non-negative; equal values are thus
    ranked in chunk order. Returns ``base`` (the key without the value, (n_mat, m, c)), ``r_bits`` and
    ``position`` ((n_mat, c, 1): flat index in the matrices of row 0 of each segment; row r sits r * c on).
    """
    key = ("packed", n_mat, m, c, str(device))
    if cache is not None and key in cache:
        return cache[key]
    r_bits = max(1, (m - 1).bit_length())
    if (n_mat * c - 1).bit_length() + 32 + r_bits > 63:
        raise ValueError(f"{n_mat} chunk matrices of {m} x {c} do not fit a 63-bit sort key")
    seg = torch.arange(n_mat * c, dtype=torch.int64, device=device).view(n_mat, 1, c)
    row = torch.arange(m, dtype=torch.int64, device=device).view(1, m, 1)
    base = (seg << (32 + r_bits)) + ((1 << 31) << r_bits) + row
    position = (seg // c) * (m * c) + seg % c
    tables = (base, r_bits, position.view(n_mat, c, 1))
    if cache is not None:
        cache[key] = tables
    return tables


def sort_clip_unsort(g: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, passes: int = 1,
                     cache: dict | None = None) -> torch.Tensor:
    """2OS projection of a (..., m, c) stack of chunk matrices onto the box sets of eq. (85) (Prop. B.3).

    Sort within each chunk (rows), then across chunks for every inner rank (columns), clip each rank pair
    (i, j) into [lo_ij, hi_ij], and undo both permutations. ``lo`` / ``hi`` are (m, c) or broadcast against
    ``g`` (e.g. (S, 1, m, c) for S statistics projected together in one sort).

    Large matrices sort every column of every matrix in *one* 1-D sort of packed int64 keys (matrix and
    inner rank in the high bits, the value's order-preserving bits (:func:`ordered_int32`) in the middle,
    the row in the low bits; :func:`packed_key_tables`): the sorted keys list each column's values in
    ascending order, column after column - exactly the order ``sort(dim=-2)`` gives - and carry the
    permutation with them. Small ones (below ``PACKED_SORT_MIN`` entries) sort the transposed columns as rows. Either way the clipped values
    go back by two scatters (the inverse permutations). Equal values are ranked in chunk order, which
    can differ from ``torch.sort``'s order of ties, so tied entries may swap bounds; on noise there are no
    ties and the result is the same bit for bit. (A random order of ties was tried: it left the whitened
    ramp and checkerboard of the tests less typical.)

    Clipping keeps every column sorted (bounds increase with the outer rank), but it can reorder values
    *inside* a chunk, because a chunk's inner ranks sit at different outer ranks with different bounds.
    Then the result's own doubly sorted statistic is not the clipped matrix and it may lie outside the set,
    a case Prop. B.3's argument does not cover (seen on strongly structured inputs, never on noise).
    ``passes`` repeats the sort-clip-unsort: once a pass leaves every chunk in order, the next pass clips
    nothing and returns its input unchanged, so a fixed number of passes gives the same result as stopping
    at the first ordered pass, without reading anything back to decide. Structured inputs typically settle
    in 2-4 passes, noise in one. Where the box of one inner rank lies wholly above the next rank's box, no
    point keeps the chunk's order and the exact projection would have to reorder the chunk; the passes then
    end in a small cycle that leaves a handful of entries up to ~2e-3 outside their bounds (measured on a
    pure smooth field).
    """
    *lead, m, c = g.shape
    n_mat = math.prod(lead)
    lo_t, hi_t = lo.transpose(-1, -2), hi.transpose(-1, -2)  # (.., c, m): the across-chunk sort's layout
    x = g.reshape(n_mat, m, c)
    packed = m * c >= PACKED_SORT_MIN  # per matrix, so that a sample's result does not depend on its batch
    if packed:
        base, r_bits, position = packed_key_tables(n_mat, m, c, g.device, cache)
    for _ in range(passes):
        s1, i1 = x.sort(dim=-1)
        if packed:
            keys = sort_keys(torch.add(base, ordered_int32(s1), alpha=1 << r_bits).flatten())
            order = torch.add(position, (keys & ((1 << r_bits) - 1)).view(n_mat, c, m), alpha=c).flatten()
            t = torch.clamp(s1.flatten().gather(0, order).view(*lead, c, m), lo_t, hi_t)
            s1 = torch.empty_like(s1).flatten().scatter_(0, order, t.flatten()).view(n_mat, m, c)
        else:
            s2, i2 = s1.transpose(-1, -2).contiguous().sort(dim=-1)
            t = torch.clamp(s2.view(*lead, c, m), lo_t, hi_t).view(n_mat, c, m)
            s1 = torch.empty_like(s2).scatter_(-1, i2, t).transpose(-1, -2)
        x = torch.empty_like(x).scatter_(-1, i1, s1)
    return x.view(g.shape)


def project_2os(x: torch.Tensor, k, level: float, ref: tuple = ("normal",), cache: dict | None = None,
                passes: int = 16) -> torch.Tensor:
    """2OS confidence-interval projection of a field with k x k chunks (eq. 86)."""
    cache = {} if cache is None else cache
    g = groups(x, k)
    lo, hi = bounds_tensor(g.shape[-2], g.shape[-1], level, ref, x.device, cache)
    return ungroup(sort_clip_unsort(g, lo, hi, passes, cache), k, x.shape)


# ----------------------------------------------------------------------------- tile statistics (Prop. B.4)
def stat_chunk_side(field_hw: tuple[int, int], stat_chunk: int) -> int:
    """The 2OS chunk side on a statistic field: ``stat_chunk`` where it divides, else 1 (singletons, where
    2OS reduces to the one-level order-statistic projection of Prop. B.2)."""
    fh, fw = field_hw
    return stat_chunk if (fh % stat_chunk == 0 and fw % stat_chunk == 0) else 1


def tile_stat_bounds(x_shape, k, level: float, stat_chunk: int, device, cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of the two tile statistics stacked as (2, 1, m, c), memoised per device, for the tile mean
    and the tile's mean centred square, i.e. the statistics of eq. (91) over sqrt(s) and s: sqrt(s) * mean
    ~ N(0, 1) and the centred energy ~ chi2(s - 1). 2OS commutes with a positive scale a (sorting does,
    and clip(a v, lo, hi) = a clip(v, lo / a, hi / a)), so projecting the rescaled statistics against the
    rescaled bounds is the same projection."""
    _, c, h, w = x_shape
    kh, kw = patch_dims(k)
    s = kh * kw
    kc = stat_chunk_side((h // kh, w // kw), stat_chunk)
    m = c * (h // kh // kc) * (w // kw // kc)
    key = ("tile_bounds", m, kc, s, level, str(device))
    if key not in cache:
        mean_b = bounds_tensor(m, kc * kc, level, ("normal",), device, cache)
        energy_b = bounds_tensor(m, kc * kc, level, ("chi2", s - 1), device, cache)
        cache[key] = tuple(torch.stack([a / math.sqrt(s), b / s])[:, None] for a, b in zip(mean_b, energy_b))
    return cache[key]


def project_tile_stats(x: torch.Tensor, k, level: float, stat_chunk: int = 2, cache: dict | None = None,
                       passes: int = 16, rel_eps: float = 1e-10) -> torch.Tensor:
    """Tile-wise mean and centred-energy projection with k x k (or kh x kw) tiles (eqs. 89-95, Prop. B.4).

    For a tile of size s, sqrt(s) * mean ~ N(0, 1) and the centred energy ~ chi2(s - 1) (eq. 91). Both
    statistic fields, laid out as (C, H/kh, W/kw) so that neighbouring tiles share a stat_chunk x stat_chunk
    chunk, are projected with 2OS (eq. 93) in one batched sort-clip-unsort (as mean and mean centred
    square, see :func:`tile_stat_bounds`); each tile is then shifted to its target mean and its centred part
    rescaled to its target energy (eq. 95), the Euclidean projection of Prop. B.4. A tile whose centred
    energy is zero (at most ``rel_eps`` times the sample's average tile energy, i.e. float round-off) has
    no unique projection (Prop. B.4); it takes its target mean and keeps zero energy.

    Tile averages are ``avg_pool2d`` with a tile-sized window and stride; the targets broadcast back onto
    the tiles through views, so no layout copy of the field is made.
    """
    cache = {} if cache is None else cache
    b, c, h, w = x.shape
    kh, kw = patch_dims(k)
    x6 = tiles(x, k)
    fh, fw = h // kh, w // kw
    kc = stat_chunk_side((fh, fw), stat_chunk)
    mean = torch.nn.functional.avg_pool2d(x, (kh, kw))  # (b, c, fh, fw)
    centred = x6 - mean[:, :, :, None, :, None]
    # the rounding of the mean leaves centred tiles a residual mean that a large gain would turn into a
    # shift of the tile's mean; one more centring removes it to round-off of the residual
    centred = centred - torch.nn.functional.avg_pool2d(centred.view(x.shape), (kh, kw))[:, :, :, None, :, None]
    mean_sq = torch.nn.functional.avg_pool2d(centred.square().view(x.shape), (kh, kw))  # energy / s

    def chunked(f):  # (b, c, fh, fw) -> (b, c, fh/kc, fw/kc, kc, kc) view: rows of the 2OS chunk matrices
        return f.view(b, c, fh // kc, kc, fw // kc, kc).permute(0, 1, 2, 4, 3, 5)

    stats = torch.stack([chunked(mean), chunked(mean_sq)])  # contiguous (2, b, m, kc * kc)
    lo, hi = tile_stat_bounds(x.shape, k, level, stat_chunk, x.device, cache)
    target = sort_clip_unsort(stats.view(2, b, -1, kc * kc), lo, hi, passes, cache).view(stats.shape)
    target = target.permute(0, 1, 2, 3, 5, 4, 6).reshape(2, b, c, fh, fw)  # back to the field's tile order
    threshold = mean_sq.mean(dim=(1, 2, 3), keepdim=True) * rel_eps
    gain = (target[1] / mean_sq).masked_fill(mean_sq <= threshold, 0.0).sqrt()  # dead tiles: gain 0
    out = torch.addcmul(target[0][:, :, :, None, :, None], centred, gain[:, :, :, None, :, None])
    return out.view(x.shape)


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
    kh, kw = patch_dims(k)
    x6 = tiles(x, k)
    norm = torch.linalg.vector_norm(x6, dim=(3, 5), keepdim=True).clamp_min(eps)
    return (x6 * (math.sqrt(kh * kw) / norm)).view(x.shape)
