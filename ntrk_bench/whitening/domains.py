"""Orthogonal transform domains for the whitening operator (paper App. B.4, Props. B.5-B.6).

Each domain is a pair of pure functions (forward, inverse) mapping a (B, C, H, W) field to a (B, C, H, W)
coefficient field with Q^T Q = I. Because Q is orthogonal, projecting onto a set S in the transformed
domain and mapping back is the Euclidean projection onto the pulled-back set Q^T S (Prop. B.5), and
i.i.d. N(0, 1) coefficients stay i.i.d. N(0, 1) (Prop. B.6), so the same confidence bounds apply.

``log2 n`` butterfly stages on n = 2^p entries are the Sylvester-ordered Walsh-Hadamard transform
H_2 (x) ... (x) H_2 / sqrt(n) (:func:`sylvester_hadamard`), which factors into Hadamard matrices of any
split of the index bits, so complete Hadamard domains run as a few small matrix products on views of the
field (no layout copies); the matrices are built once in float64 and cached per device and dtype.
Butterflies of other depths or lengths run stage by stage. The Fourier domain stays an FFT: as two dense
products M_H^T X M_W (2x faster on CPU) its round-off replaces the FFT's exact zeros on degenerate inputs
(a checkerboard) with structured residue that 2OS then ranks, and the whitened checkerboard came out
measurably less typical (spectral flatness 0.54 against >= 0.556 for fresh noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .project import groups, patch_dims, tiles, ungroup

_SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------- compact real Fourier (eq. 111-112)
def compact_scale(n: int, like: torch.Tensor) -> torch.Tensor:
    """[1, sqrt 2, ..., sqrt 2, 1] (length n): the weights of the compact layout's n outputs, eq. (112)."""
    return _COMPACT_SCALE(n, like)


def compact_rfft(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Orthonormal compact real Fourier transform along the last axis (even length n), eq. (111)-(112).

    Keeps the two real boundary bins (DC, Nyquist) and the n/2 - 1 interior bins as sqrt(2) Re and
    sqrt(2) Im; the sqrt(2) accounts for Hermitian symmetry and preserves the norm. The order of the n
    outputs is free (any order is orthogonal); we interleave them as [DC, Re_1, Im_1, ..., Nyquist] so
    that a frequency's real and imaginary parts, and neighbouring frequencies, share a 2OS chunk: chunks
    then constrain spectral *power* locally, which measurably flattens the spectrum of whitened
    structured inputs compared with the [real parts | imaginary parts] concatenation.

    That order is the spectrum's own (Re_0, Im_0, Re_1, Im_1, ..., Re_n/2, Im_n/2) without the two
    imaginary parts that are zero: DC is copied into the slot of its imaginary part, and one weighted
    product reads the n entries from there on into ``out`` (any layout, e.g. a transposed view).
    """
    n = x.shape[-1]
    if n % 2:
        raise ValueError(f"the compact Fourier domain needs an even length, got {n}")
    f = torch.view_as_real(torch.fft.rfft(x, dim=-1, norm="ortho")).flatten(-2)  # (..., n + 2)
    f[..., 1] = f[..., 0]
    return torch.mul(f[..., 1:-1], compact_scale(n, x), out=out)


def compact_irfft(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`compact_rfft`: the weighted entries go back into a spectrum's (Re, Im) slots, the
    two imaginary parts that the compact layout drops are set to zero."""
    n = y.shape[-1]
    f = y.new_empty(*y.shape[:-1], n + 2)
    torch.div(y, compact_scale(n, y), out=f[..., 1:-1])
    f[..., 0] = f[..., 1]
    f[..., 1::n] = 0.0  # Im_0 and Im_n/2
    return torch.fft.irfft(torch.view_as_complex(f.view(*y.shape[:-1], n // 2 + 1, 2)), n=n, dim=-1, norm="ortho")


def fourier2d(x: torch.Tensor) -> torch.Tensor:
    """Separable compact Fourier transform over both spatial axes (W, then H); the second transform writes
    straight into the (H, W) layout."""
    out = torch.empty_like(x)
    compact_rfft(compact_rfft(x).transpose(-1, -2), out=out.transpose(-1, -2))
    return out


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


# ----------------------------------------------------------------------------- dense separable forms
def sylvester_hadamard(n: int) -> torch.Tensor:
    """H_2 (x) ... (x) H_2 / sqrt(n) for n = 2^p, in Sylvester's natural order (float64, symmetric).

    It equals ``butterfly(., p)`` on length-n rows: a stage applies H_2 to the lowest index bit and moves
    the result to the highest bit, so p stages apply H_2 once to every bit and rotate the bits back home.
    """
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / _SQRT2
    h = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(int(math.log2(n))):
        h = torch.kron(h, h2)
    return h


def power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def hadamard_factors(n: int, max_bits: int = 6) -> list[int]:
    """Split n = 2^p into as few balanced power-of-two factors of at most 2^max_bits as possible.

    A factor of size f costs f multiply-adds per entry, so smaller factors do less work (2^16 entries:
    64 + 32 + 32 = 128 per entry against 256 + 256 = 512 with max_bits 8, measured ~2x faster on CPU)
    at the price of one more product."""
    p = int(math.log2(n))
    parts = max(1, math.ceil(p / max_bits))
    bits = [p // parts + (i < p % parts) for i in range(parts)]
    return [1 << b for b in bits]


class MatrixCache:
    """Float64 tables built once, then cast and moved per (device, dtype) on first use (the only tensors W
    makes on the CPU: one Hadamard matrix and one compact-Fourier weight vector per size)."""

    def __init__(self, build: Callable[[int], torch.Tensor]):
        self.build, self.master, self.copies = build, {}, {}

    def __call__(self, n: int, like: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        key = (n, transpose, like.device, like.dtype)
        if key not in self.copies:
            with torch.inference_mode(False):  # shared tables stay normal tensors, whoever asks first (W runs in inference mode)
                if n not in self.master:
                    self.master[n] = self.build(n)
                m = self.master[n].T if transpose else self.master[n]
                self.copies[key] = m.to(device=like.device, dtype=like.dtype).contiguous()
        return self.copies[key]


_HADAMARD = MatrixCache(sylvester_hadamard)
_COMPACT_SCALE = MatrixCache(lambda n: torch.full((n,), _SQRT2, dtype=torch.float64).index_fill_(0, torch.tensor([0, n - 1]), 1.0))


def hadamard_along(v: torch.Tensor, factors: list[int]) -> torch.Tensor:
    """Apply H_{n_1} (x) ... (x) H_{n_k} to the last axis of ``v`` (length prod n_i, index bits in that
    order): each factor is one matrix product on a view, H along a middle axis, X H along the last."""
    shape = v.shape
    for i, n in enumerate(factors):
        inner = math.prod(factors[i + 1:])
        h = _HADAMARD(n, v)
        v = v.reshape(-1, n) @ h if inner == 1 else h @ v.reshape(-1, n, inner)
    return v.reshape(shape)


def hadamard_tiles(x: torch.Tensor, tile) -> torch.Tensor:
    """The Walsh-Hadamard transform of every kh x kw patch (row-major patch index: H_kh (x) H_kw), in place
    in the field's layout: H_kh along the patch rows, H_kw along the patch columns. It is its own inverse."""
    kh, kw = patch_dims(tile)
    x6 = tiles(x, tile)
    x6 = x6 @ _HADAMARD(kw, x)
    return (_HADAMARD(kh, x) @ x6.reshape(*x6.shape[:4], -1)).reshape(x.shape)


# ----------------------------------------------------------------------------- domain registry
@dataclass(frozen=True)
class Domain:
    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    inverse: Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def hadamard_depth(n: int, repeats: int | None = None) -> int:
    """Butterfly stages over n entries: ``repeats``, or log2 n (a complete Walsh-Hadamard mixing) when None."""
    return max(1, math.ceil(math.log2(n))) if repeats is None else repeats


def butterfly_domain(tile=0, repeats: int | None = None) -> Domain:
    """``repeats`` butterfly stages (Prop. B.6) over the whole flattened field (``tile=0``) or within every
    k x k patch of a channel, as explicit stages."""
    def depth(n: int) -> int:
        return hadamard_depth(n, repeats)

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


def make_domain(name: str, tile=0, repeats: int | None = None) -> Domain:
    """Build a domain by name.

    * ``spatial``: the latent's own coordinates.
    * ``fourier``: separable 2-D compact real Fourier transform (H and W even).
    * ``hadamard``: ``repeats`` butterfly stages over the whole flattened field (``tile=0``, "full latent
      resolution") or within every k x k patch of a channel (``tile=k``, "tiled mixing"). ``repeats=None``
      means log2 of the mixed length, i.e. a complete Walsh-Hadamard mixing; on a power-of-two length it
      runs as matrix products of :func:`sylvester_hadamard` (the same transform, see there).
    """
    if name == "spatial":
        return Domain("spatial", _identity, _identity)
    if name == "fourier":
        return Domain("fourier", fourier2d, ifourier2d)
    if name == "hadamard":
        def depth(n: int) -> int:
            return hadamard_depth(n, repeats)

        def complete(n: int) -> bool:  # log2(n) stages on n = 2^p: the Walsh-Hadamard transform
            return power_of_two(n) and n > 1 and depth(n) == int(math.log2(n))

        stages = butterfly_domain(tile, repeats)
        if tile == 0:
            def fwd(x):
                v = x.flatten(1)
                if complete(v.shape[-1]):  # symmetric and orthogonal: its own inverse
                    return hadamard_along(v, hadamard_factors(v.shape[-1])).reshape(x.shape)
                return stages.forward(x)

            def inv(y):
                v = y.flatten(1)
                if complete(v.shape[-1]):
                    return hadamard_along(v, hadamard_factors(v.shape[-1])).reshape(y.shape)
                return stages.inverse(y)
        else:
            kh, kw = patch_dims(tile)
            if not (complete(kh * kw) and power_of_two(kh) and power_of_two(kw)):
                return stages

            def fwd(x):
                return hadamard_tiles(x, tile)

            inv = fwd
        return Domain(stages.name, fwd, inv)
    raise ValueError(f"unknown whitening domain {name!r}; expected spatial, fourier or hadamard")
