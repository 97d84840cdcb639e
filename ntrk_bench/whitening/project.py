"""Euclidean projections onto Gaussian confidence sets (paper App. B.2-B.3, B.7).

All functions take a float32 tensor of shape (B, C, H, W) - a batch of "fields" - and are pure. Chunks
(2OS) and tiles (mean / energy statistics) are k x k (or kh x kw) patches of one channel, so that the
constraints see local spatial structure; ``patch_rows`` / ``patch_rows_inverse`` lay the patches out as
rows and back (``groups`` / ``ungroup``: as the (B, m, kh*kw) matrix whose rows are the patches), and
``tiles`` views the field as (B, C, H/kh, kh, W/kw, kw) without copying. The same layout is used in every
transform domain, because every domain maps (C, H, W) to (C, H, W) (see ``domains.py``). Large 2OS
projections never build the chunk matrix: they sort packed integer keys made in the field's own layout and
scatter the clipped values straight back to it (:func:`packed_two_level_clip`).

Everything here runs on the input's device with a static sequence of tensor operations: no value is read
back to Python and no branch depends on the data, so the projections run unchanged under ``torch.compile``
and CUDA graphs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .bounds import bounds_tensor


Patch = "int | tuple[int, int]"


def patch_dims(k) -> tuple[int, int]:
    """A patch side ``k`` (square) or ``(kh, kw)`` (rectangular, e.g. for Wan's 60 x 104 frames)."""
    kh, kw = (k, k) if isinstance(k, int) else tuple(k)
    return int(kh), int(kw)


def check_patches(shape, k) -> tuple[int, int]:
    """The patch dims of ``k``, after checking that they tile the spatial size of a (..., H, W) shape."""
    kh, kw = patch_dims(k)
    h, w = shape[-2:]
    if h % kh or w % kw:
        raise ValueError(f"patch {kh}x{kw} does not tile the spatial size {h}x{w}")
    return kh, kw


def tiles(x: torch.Tensor, k) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/kh, kh, W/kw, kw), a view: the k x k patches without a layout copy."""
    b, c, h, w = x.shape
    kh, kw = check_patches(x.shape, k)
    return x.reshape(b, c, h // kh, kh, w // kw, kw)


def groups(x: torch.Tensor, k) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * H/kh * W/kw, kh*kw): rows are patches in (C, H/kh, W/kw) order."""
    kh, kw = patch_dims(k)
    return patch_rows(x, k).view(x.shape[0], -1, kh * kw)


def ungroup(g: torch.Tensor, k, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`groups`."""
    return patch_rows_inverse(g, k, shape)


def _wide(x: torch.Tensor, kw: int) -> tuple[torch.Tensor, int]:
    """``x`` viewed with its rows of kw 4-byte entries as kw / 4 16-byte or kw / 2 8-byte elements where kw
    allows, and that factor: a layout copy's cost is per element, so the same bytes move 2-4x faster."""
    if x.element_size() == 4 and x.is_contiguous():
        for wide, per in ((torch.complex128, 4), (torch.int64, 2)):
            if kw % per == 0:
                return x.view(wide), per
    return x, 1


def patch_rows(x: torch.Tensor, k) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/kh, W/kw, kh, kw), contiguous: every kh x kw patch's entries together, a patch
    row moving as one wide element (:func:`_wide`)."""
    b, c, h, w = x.shape
    kh, kw = check_patches(x.shape, k)
    src, per = _wide(x, kw)
    rows = src.reshape(b, c, h // kh, kh, w // kw, kw // per).transpose(3, 4).contiguous()
    return rows.view(-1).view(x.dtype).view(b, c, h // kh, w // kw, kh, kw) if per > 1 else rows


def patch_rows_inverse(rows: torch.Tensor, k, shape) -> torch.Tensor:
    """Inverse of :func:`patch_rows`: any tensor holding the (B, C, H/kh, W/kw, kh, kw) entries back to
    ``shape``."""
    b, c, h, w = shape
    kh, kw = patch_dims(k)
    src, per = _wide(rows, kw)
    field = src.reshape(b, c, h // kh, w // kw, kh, kw // per).transpose(3, 4).contiguous()
    return (field.view(-1).view(rows.dtype) if per > 1 else field).view(shape)


# ----------------------------------------------------------------------------- 2OS (Prop. B.3, eqs. 85-86)
# The sorts are operators of their own ("ntrk_bench::..."), so that ``torch.compile`` and the dispatch-mode
# census see each as one opaque call on every device: ``torch.sort`` (a radix sort on accelerators) by
# default, NumPy's ``np.sort`` (its SIMD quicksort, x86-simd-sort) on CPU, which beats ``torch.sort`` on
# int64 keys several times over (``scripts/bench_whitening.py``). They are registered with
# ``torch.library.Library`` rather than ``torch.library.custom_op``: the latter's Python wrapper costs ~60 us
# per call on CPU against ~12 us, and one call of W issues dozens of sorts.
_OPS = torch.library.Library("ntrk_bench", "DEF")
_OPS.define("sort_keys(Tensor keys) -> Tensor")
_OPS.define("sort_rows(Tensor keys) -> Tensor")


def _sort_keys_default(keys: torch.Tensor) -> torch.Tensor:
    return keys.sort(dim=-1).values


def _sort_keys_cpu(keys: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.sort(keys.numpy(), axis=-1))


for _name in ("sort_keys", "sort_rows"):
    _OPS.impl(_name, _sort_keys_default, "CompositeExplicitAutograd")
    _OPS.impl(_name, _sort_keys_cpu, "CPU")


def sort_keys(keys: torch.Tensor) -> torch.Tensor:
    """Ascending sort of a 1-D int64 tensor of distinct keys (values only)."""
    return torch.ops.ntrk_bench.sort_keys(keys)


def sort_rows(keys: torch.Tensor) -> torch.Tensor:
    """Ascending sort of every row of a 2-D int64 tensor (values only): for rows of 8 and more keys it beats
    one long sort of row-tagged keys (n log c instead of n log n work)."""
    return torch.ops.ntrk_bench.sort_rows(keys)


def ordered_int32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int32 with the same order: IEEE 754 bit patterns of negative numbers run backwards, so
    their 31 magnitude bits are flipped (the classic radix-sort key for floats; -0.0 sorts just below +0.0)."""
    bits = x.view(torch.int32)
    return (bits >> 31).bitwise_and_(0x7FFFFFFF).bitwise_xor_(bits)


#: Below this many entries per matrix (per sample of a field), 2OS sorts rows and transposed columns with
#: ``torch.sort`` (few operations; small sorts are cheap); from it on, two sorts of packed int64 keys
#: (:func:`packed_two_level_clip`).
PACKED_SORT_MIN = 1 << 14


#: From this chunk size on, the within-chunk sort sorts the chunks as rows (:func:`sort_rows`, keys laid out
#: chunk by chunk); below it, one long sort of keys carrying their chunk (row) in the high bits.
ROW_SORT_MIN_CHUNK = 8
#: Field-layout within-chunk keys are sorted in blocks of at most this many keys holding whole rows of chunks
#: (every key of a block sorts after the previous block's, because the chunk index leads the key): the same
#: result as one sort of all keys, with less work (n log block) on pieces that stay in cache.
SORT_BLOCK = 4096


def packed_tables(shape: tuple, k, device, cache: dict | None = None):
    """Static tables of the packed 2OS of an (N, C, H, W) field with kh x kw chunks, memoised per device.

    Rows are the chunks in (N, C, H/kh, W/kw) order (as :func:`groups` lists them), ``offset`` = a * W + b
    the position of entry (a, b) inside its chunk relative to the chunk's first entry in the field. Both
    keys hold the value at the same bit position ``fb`` (the bits of a field index), so one integer add turns
    the sorted within-chunk keys into the across-chunk keys:

    * within-chunk key: ``row | value | offset``, laid out like the field and sorted in blocks of whole chunk
      rows (``row`` counts the chunks within their block: keys of different blocks are never compared); or,
      for chunks of ``ROW_SORT_MIN_CHUNK`` or more entries, ``value | offset`` laid out chunk by chunk,
      (N, C, H/kh, W/kw, kh, kw), for a sort of every row;
    * across-chunk key: ``sample | inner rank | value | field index`` (the flat index in the whole field)
      = the sorted within-chunk key + ``shift2``, a static table: at sorted position p (inner rank
      j = p % c of chunk p // c) it adds the sample, j and the chunk's first field index and removes the row.

    ``value`` is the order-preserving int32 (:func:`ordered_int32`) offset by 2^31 (32 non-negative bits).
    Returns ``base1`` (the within-chunk key without its value), ``shift2``, ``fb``, the index mask, whether
    the chunks sort as rows, and the number of keys per sorted row.
    """
    key = ("packed2", tuple(shape), patch_dims(k), str(device))
    if cache is not None and key in cache:
        return cache[key]
    n_s, c_, h, w = shape
    kh, kw = patch_dims(k)
    c, hb, wb = kh * kw, h // kh, w // kw
    m = c_ * hb * wb  # chunks per sample
    n_rows, n_all = n_s * m, n_s * c_ * h * w
    fb = max(1, (n_all - 1).bit_length())
    jb = max(1, (c - 1).bit_length())
    sb = (n_s - 1).bit_length()
    by_rows = c >= ROW_SORT_MIN_CHUNK

    def row_bits(d: int) -> int:  # bits of the chunk count of a block of d chunk rows
        return max(1, (d * wb - 1).bit_length())

    # the field-layout keys sort in blocks of whole chunk rows (a block's rows all follow the previous block's)
    rows_per_block = max((d for d in range(1, hb + 1) if hb % d == 0 and d * kh * w <= SORT_BLOCK
                          and row_bits(d) + 32 + fb <= 63), default=1)
    if sb + jb + 32 + fb > 63 or (not by_rows and row_bits(rows_per_block) + 32 + fb > 63):
        raise ValueError(f"a {tuple(shape)} field with {kh}x{kw} chunks does not fit a 63-bit sort key")
    i64 = dict(dtype=torch.int64, device=device)
    offset = torch.arange(kh, **i64).view(kh, 1, 1) * w + torch.arange(kw, **i64)  # (kh, 1, kw)
    # base1 repeats with every sorted row (a chunk, or a block of chunk rows): one period of it is broadcast,
    # so the key add reads a table that stays in cache instead of one as large as the keys
    if by_rows:  # chunk layout (kh, kw), no row bits
        base1 = ((1 << 31) << fb) + offset.view(kh, kw)
    else:  # field layout, one block of rows_per_block chunk rows, the rows counted within it
        local = torch.arange(rows_per_block * wb, **i64)
        base1 = ((local.view(rows_per_block, 1, wb, 1) << (32 + fb)) + ((1 << 31) << fb) + offset).view(1, -1)
    p = torch.arange(n_rows * c, **i64)
    srow, j = p // c, p % c
    sample, rest = srow // m, srow % m
    ch, rest = rest // (hb * wb), rest % (hb * wb)
    first = sample * (c_ * h * w) + ch * (h * w) + (rest // wb) * kh * w + (rest % wb) * kw  # chunk's first entry
    shift2 = (sample << (jb + 32 + fb)) + (j << (32 + fb)) + first
    if not by_rows:
        shift2 -= (srow % (rows_per_block * wb)) << (32 + fb)
    tables = (base1, shift2, fb, (1 << fb) - 1, by_rows, rows_per_block * kh * w)
    if cache is not None:
        cache[key] = tables
    return tables


def packed_two_level_clip(x: torch.Tensor, k, lo_t: torch.Tensor, hi_t: torch.Tensor,
                          cache: dict | None = None) -> torch.Tensor:
    """One 2OS sort-clip-unsort pass on an (N, C, H, W) field with kh x kw chunks, as two sorts of packed
    int64 keys (:func:`packed_tables`) and one scatter, without a layout copy of the field.

    1. Within-chunk sort: keys ``row | value | offset`` (sorted in blocks of whole chunk rows, see
       ``SORT_BLOCK``; chunks of ``ROW_SORT_MIN_CHUNK`` or more entries: ``value | offset`` sorted chunk by
       chunk) list every chunk's entries in ascending order, chunk after chunk, so sorted position p holds
       inner rank j = p % c of chunk p // c.
    2. Across-chunk sort: the sorted keys plus the static ``shift2`` are ``sample | j | value | field
       index``: sorted, they list, for every sample and inner rank, the values in ascending order across
       chunks - the doubly sorted statistic (outer rank i = position within the segment) - and carry each
       value's field index.
    3. Clip each (j, i) into its bounds (``lo_t``, ``hi_t``: (.., c, m), the transposed (m, c) bounds) and
       scatter the clipped values straight back to their field indices: both permutations undone at once.

    Equal values are ranked by their position (within a chunk, then in the field), which can differ from
    ``torch.sort``'s order of ties; on tie-free input the result is the same bit for bit as two
    ``torch.sort`` calls and two scatters (``tests/test_whitening.py``).
    """
    return _packed_clip(x, k, lo_t, hi_t, packed_tables(tuple(x.shape), k, x.device, cache))


def _packed_clip(x: torch.Tensor, k, lo_t: torch.Tensor, hi_t: torch.Tensor, tables: tuple) -> torch.Tensor:
    """:func:`packed_two_level_clip` with its tables."""
    base1, shift2, fb, fmask, by_rows, block = tables
    c = math.prod(patch_dims(k))
    values = ordered_int32(x)  # the adds below promote it to int64
    if by_rows:  # the keys in chunk layout, each chunk a row
        keys1 = sort_rows(torch.add(base1, patch_rows(values, k), alpha=1 << fb).view(-1, c))
    else:  # sorted in blocks of whole chunk rows: the same order as one sort of all keys, in cache-sized pieces
        keys1 = sort_rows(torch.add(base1, values.view(-1, block), alpha=1 << fb))
    # integer temporaries are updated in place: fewer live buffers, so the call stays in cache
    index = sort_keys(keys1.view(-1).add_(shift2)).bitwise_and_(fmask)
    # index_select, not take or gather: the same gather, 3-7x faster on CPU (65k to 2M entries); clipped in place
    clipped = x.reshape(-1).index_select(0, index)
    # bounds (.., 1, c, m) against the clipped values as (.., samples, c, m); the integer values, spent, take
    # the result
    clipped.view(*lo_t.shape[:-3], -1, c, x[0].numel() // c).clamp_(lo_t, hi_t)
    return values.view(x.dtype).view(-1).scatter_(0, index, clipped).view(x.shape)


def rowsort_two_level_clip(g: torch.Tensor, lo_t: torch.Tensor, hi_t: torch.Tensor) -> torch.Tensor:
    """One 2OS pass on a (..., m, c) stack of chunk matrices with two ``torch.sort`` calls (rows, then
    columns) and two scatters (the inverse permutations); ``lo_t`` / ``hi_t`` are the transposed (c, m)
    bounds, or broadcast against the transposed matrices."""
    s1, i1 = g.sort(dim=-1)
    s2, i2 = s1.sort(dim=-2)
    s2.transpose(-1, -2).clamp_(lo_t, hi_t)
    return s2.scatter_(-1, i1, s1.scatter_(-2, i2, s2))  # each scatter writes every entry: spent sorts take it


def sort_clip_unsort(g: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, passes: int = 1,
                     cache: dict | None = None) -> torch.Tensor:
    """2OS projection of a (..., m, c) stack of chunk matrices onto the box sets of eq. (85) (Prop. B.3).

    Sort within each chunk (rows), then across chunks for every inner rank (columns), clip each rank pair
    (i, j) into [lo_ij, hi_ij], and undo both permutations. ``lo`` / ``hi`` are (m, c) or broadcast against
    ``g`` (e.g. (S, 1, m, c) for S statistics projected together in one sort). Small matrices (below
    ``PACKED_SORT_MIN`` entries) use :func:`rowsort_two_level_clip`, large ones the packed-key sorts of
    :func:`packed_two_level_clip` on the matrices seen as fields with 1 x c chunks.

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
    return clip_matrices(g, lo.transpose(-1, -2), hi.transpose(-1, -2), passes, cache)


def clip_matrices(g: torch.Tensor, lo_t: torch.Tensor, hi_t: torch.Tensor, passes: int = 1,
                  cache: dict | None = None) -> torch.Tensor:
    """:func:`sort_clip_unsort` with the bounds already transposed to (.., c, m), the across-chunk sort's
    layout."""
    *lead, m, c = g.shape
    packed = m * c >= PACKED_SORT_MIN  # per matrix, so that a sample's result does not depend on its batch
    x = g.contiguous()
    for _ in range(passes):
        if packed:
            n_mat = math.prod(lead)
            x = packed_two_level_clip(x.view(n_mat, 1, m, c), (1, c), lo_t, hi_t, cache).view(g.shape)
        else:
            x = rowsort_two_level_clip(x, lo_t, hi_t)
    return x


def transposed_bounds(m: int, c: int, level: float, ref: tuple, device, cache: dict):
    """The (c, m) transposed bounds, contiguous, memoised per device: the across-chunk sort's layout."""
    key = ("transposed", m, c, level, ref, str(device))
    if key not in cache:
        cache[key] = tuple(b.t().contiguous() for b in bounds_tensor(m, c, level, ref, device, cache))
    return cache[key]


def project_2os(x: torch.Tensor, k, level: float, ref: tuple = ("normal",), cache: dict | None = None,
                passes: int = 16) -> torch.Tensor:
    """2OS confidence-interval projection of a field with k x k chunks (eq. 86).

    Large fields sort in their own layout (:func:`packed_two_level_clip`: no layout copy); small ones
    through the chunk matrix of :func:`groups` (:func:`rowsort_two_level_clip`)."""
    cache = {} if cache is None else cache
    # one lookup per call for the static part (bounds, sort-key tables): W makes 24 such calls
    key = ("2os", x.shape, k if isinstance(k, int) else tuple(k), level, ref, x.device)
    if key not in cache:
        kh, kw = check_patches(x.shape, k)
        m = x[0].numel() // (kh * kw)
        bounds = transposed_bounds(m, kh * kw, level, ref, x.device, cache)
        packed = m * kh * kw >= PACKED_SORT_MIN
        cache[key] = (*bounds, packed_tables(tuple(x.shape), k, x.device, cache) if packed else None)
    lo_t, hi_t, tables = cache[key]
    if tables is None:
        g = groups(x, k)
        for _ in range(passes):
            g = rowsort_two_level_clip(g, lo_t, hi_t)
        return ungroup(g, k, x.shape)
    x = x.contiguous()
    for _ in range(passes):
        x = _packed_clip(x, k, lo_t, hi_t, tables)
    return x


# ----------------------------------------------------------------------------- tile statistics (Prop. B.4)
def stat_chunk_side(field_hw: tuple[int, int], stat_chunk: int) -> int:
    """The 2OS chunk side on a statistic field: ``stat_chunk`` where it divides, else 1 (singletons, where
    2OS reduces to the one-level order-statistic projection of Prop. B.2)."""
    fh, fw = field_hw
    return stat_chunk if (fh % stat_chunk == 0 and fw % stat_chunk == 0) else 1


def tile_stat_bounds(x_shape, k, level: float, stat_chunk: int, device, cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of the two tile statistics stacked as (2, 1, c, m) (transposed: the across-chunk sort's
    layout, see :func:`clip_matrices`), memoised per device, for the tile mean
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
        cache[key] = tuple(torch.stack([a / math.sqrt(s), b / s])[:, None].transpose(-1, -2).contiguous()
                           for a, b in zip(mean_b, energy_b))
    return cache[key]


def nested_runs(ks: list) -> list[list]:
    """Split a sequence of tile sides into maximal runs whose tiles are unions of the run's first tile
    (each side a multiple of the first's), the runs :func:`project_tile_stats_nested` composes exactly."""
    runs: list[list] = []
    for k in ks:
        kh, kw = patch_dims(k)
        if runs:
            h0, w0 = patch_dims(runs[-1][0])
            if kh % h0 == 0 and kw % w0 == 0:
                runs[-1].append(k)
                continue
        runs.append([k])
    return runs


def dead_tile_threshold(x: torch.Tensor, rel_eps: float = 1e-10) -> torch.Tensor:
    """(B, 1, 1, 1): ``rel_eps`` times each sample's mean square. A tile whose centred mean square is at most
    this is dead - float round-off, no unique projection (Prop. B.4): it gets gain 0. One threshold serves
    every tile side (a side's mean tile energy is at most the sample's mean square, so no tile a per-side
    threshold would kill survives) and every domain (orthogonal maps keep the mean square; W computes it once
    per call)."""
    norm = torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)
    return norm.square_().mul_(rel_eps / x[0].numel()).view(-1, 1, 1, 1)


@dataclass(frozen=True)
class TileLevel:
    """One tile side of a nested run, on the finest tiles' statistic fields."""
    ratio: tuple[int, int]  # (rh, rw): finest tiles per tile of this side along H and W
    kc: int  # the 2OS chunk side on this side's statistic field
    lo: torch.Tensor  # (2, 1, kc^2, m) bounds, transposed (tile_stat_bounds)
    hi: torch.Tensor


@dataclass(frozen=True)
class TilePlan:
    """The static part of :func:`project_tile_stats_nested` for one field shape, tile run and device."""
    tile: tuple[int, int]  # the finest tile (kh0, kw0)
    grid: tuple[int, int]  # the finest tiles' grid (H / kh0, W / kw0)
    levels: tuple[TileLevel, ...]
    average: torch.Tensor  # (kh0 * kw0,) of 1 / (kh0 * kw0): a tile's mean as a matrix-vector product


def tile_plan(shape, ks: list, level: float, stat_chunk: int, device, cache: dict) -> TilePlan:
    """The :class:`TilePlan` of a (B, C, H, W) field and a run of nested tile sides, memoised per device."""
    key = ("tile_plan", shape[1:], *map(patch_dims, ks), level, stat_chunk, device)
    if key in cache:
        return cache[key]
    kh0, kw0 = check_patches(shape, ks[0])
    fh, fw = shape[-2] // kh0, shape[-1] // kw0
    levels = []
    for k in ks:
        kh, kw = check_patches(shape, k)
        if kh % kh0 or kw % kw0:
            raise ValueError(f"tile {kh}x{kw} is not a union of {kh0}x{kw0} tiles")
        rh, rw = kh // kh0, kw // kw0
        levels.append(TileLevel((rh, rw), stat_chunk_side((fh // rh, fw // rw), stat_chunk),
                                *tile_stat_bounds(shape, k, level, stat_chunk, device, cache)))
    average = torch.full((kh0 * kw0,), 1.0 / (kh0 * kw0), device=device)
    cache[key] = TilePlan((kh0, kw0), (fh, fw), tuple(levels), average)
    return cache[key]


def project_tile_stats_nested(x: torch.Tensor, ks: list, level: float, stat_chunk: int = 2,
                              cache: dict | None = None, passes: int = 16, rel_eps: float = 1e-10,
                              threshold: torch.Tensor | None = None) -> torch.Tensor:
    """The tile mean/energy projections of :func:`project_tile_stats` for the nested tile sides ``ks``
    (each a multiple of ``ks[0]``, in that order), applied one after the other, but composed on the
    statistics of the finest tiles instead of on the field.

    Each projection of Prop. B.4 is, per tile, an affine map: shift to the target mean, rescale the centred
    part. So after projections at sides ks[0], ..., ks[l - 1], every finest tile is still its own centred
    part times a gain plus a mean, and the statistics the next side needs follow from the finest tiles'
    means and mean squares alone - a coarse tile's mean is the average of its finest tiles' means, its
    centred mean square the average of theirs plus the variance of their means (the parallel-axis
    identity). The field is read once (finest means and centred parts) and written once (mean + gain x
    centred part): the same result as projecting the field side after side, up to float round-off.
    """
    cache = {} if cache is None else cache
    b, c = x.shape[:2]
    plan = tile_plan(x.shape, ks, level, stat_chunk, x.device, cache)
    fh, fw = plan.grid
    # the finest tiles as rows (:func:`patch_rows`, our own copy): per-tile means are matrix-vector products
    rows = patch_rows(x, plan.tile).view(-1, plan.average.shape[0])
    mean = rows.mv(plan.average)
    centred = rows.sub_(mean.view(-1, 1))
    # the rounding of the mean leaves centred tiles a residual mean (float round-off) that a large gain would
    # turn into a shift of the tile's mean: it is taken out of the output at the end
    residual = centred.mv(plan.average)
    mean_sq = centred.square().mv(plan.average)
    if threshold is None:
        threshold = dead_tile_threshold(x, rel_eps)
    threshold = threshold.view(b, 1, 1, 1, 1, 1)
    pool = torch.nn.functional.avg_pool2d
    # the finest tiles' statistics are viewed (b, c, gh, rh, gw, rw) at each side: rh x rw finest tiles in each
    # of the gh x gw tiles of that side, whose statistics keep unit dims (b, c, gh, 1, gw, 1) and so broadcast
    gain = None  # per finest tile: the product of the gains so far
    for i, lv in enumerate(plan.levels):
        rh, rw = lv.ratio
        six = (b, c, fh // rh, rh, fw // rw, rw)
        mean, mean_sq = mean.view(six), mean_sq.view(six)
        if (rh, rw) == (1, 1):
            tile_mean, tile_sq = mean, mean_sq
        else:  # coarse tile statistics from the finest tiles' (parallel-axis identity)
            onto = (b, c, fh // rh, 1, fw // rw, 1)
            tile_mean = pool(mean.view(b, c, fh, fw), (rh, rw)).view(onto)
            spread = mean - tile_mean
            tile_sq = pool(torch.addcmul(mean_sq, spread, spread).view(b, c, fh, fw), (rh, rw)).view(onto)
        target_mean, target_sq = _project_stats(tile_mean, tile_sq, lv, passes, cache)
        gain_sq = (target_sq / tile_sq).masked_fill_(tile_sq <= threshold, 0.0)  # dead tiles: gain 0
        tile_gain = gain_sq.sqrt()
        if (rh, rw) == (1, 1):
            mean, gain = target_mean, tile_gain
        else:
            mean = torch.addcmul(target_mean, spread, tile_gain)
            gain = gain.view(six) * tile_gain
        if i < len(plan.levels) - 1:
            mean_sq = mean_sq * gain_sq
    mean, gain = mean.reshape(-1, 1), gain.reshape(-1, 1)
    # every finest tile: its final mean plus its gain times its centred part (less the residual mean)
    out = centred.mul_(gain).add_(torch.addcmul(mean, gain, residual.view(-1, 1), value=-1.0))
    return patch_rows_inverse(out, plan.tile, x.shape)


def _project_stats(tile_mean: torch.Tensor, tile_sq: torch.Tensor, lv: TileLevel, passes: int,
                   cache: dict) -> torch.Tensor:
    """2OS (eq. 93) of a tile-mean and a tile-mean-square field, each (B, C, gh, 1, gw, 1) (the tile grid,
    with the unit dims that broadcast it onto the finest tiles), in one batched sort-clip-unsort, chunked
    kc x kc so that neighbouring tiles share a chunk (the chunk matrices laid out by :func:`patch_rows`);
    returns the two target fields stacked, (2, B, C, gh, 1, gw, 1), contiguous."""
    b, c, gh, _, gw, _ = tile_mean.shape
    fields = (2 * b, c, gh, gw)
    chunks = patch_rows(torch.stack([tile_mean, tile_sq]).view(fields), lv.kc).view(2, b, -1, lv.kc * lv.kc)
    target = clip_matrices(chunks, lv.lo, lv.hi, passes, cache)
    return patch_rows_inverse(target, lv.kc, fields).view(2, b, c, gh, 1, gw, 1)


def project_tile_stats(x: torch.Tensor, k, level: float, stat_chunk: int = 2, cache: dict | None = None,
                       passes: int = 16, rel_eps: float = 1e-10) -> torch.Tensor:
    """Tile-wise mean and centred-energy projection with k x k (or kh x kw) tiles (eqs. 89-95, Prop. B.4).

    For a tile of size s, sqrt(s) * mean ~ N(0, 1) and the centred energy ~ chi2(s - 1) (eq. 91). Both
    statistic fields, laid out as (C, H/kh, W/kw) so that neighbouring tiles share a stat_chunk x stat_chunk
    chunk, are projected with 2OS (eq. 93) in one batched sort-clip-unsort (as mean and mean centred
    square, see :func:`tile_stat_bounds`); each tile is then shifted to its target mean and its centred part
    rescaled to its target energy (eq. 95), the Euclidean projection of Prop. B.4. A tile whose centred
    energy is zero (its centred mean square at most ``rel_eps`` times the sample's mean square, i.e. float
    round-off) has no unique projection (Prop. B.4); it takes its target mean and keeps zero energy.

    The finest tiles are read as rows (see :func:`project_tile_stats_nested`).
    """
    return project_tile_stats_nested(x, [k], level, stat_chunk, cache, passes, rel_eps)


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
