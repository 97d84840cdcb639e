"""Orthogonal transform domains for the whitening operator (paper App. B.4, Props. B.5-B.6).

Each domain is a pair of pure functions (forward, inverse) mapping a (B, C, H, W) field to a (B, C, H, W)
coefficient field with Q^T Q = I. Because Q is orthogonal, projecting onto a set S in the transformed
domain and mapping back is the Euclidean projection onto the pulled-back set Q^T S (Prop. B.5), and
i.i.d. N(0, 1) coefficients stay i.i.d. N(0, 1) (Prop. B.6), so the same confidence bounds apply.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .project import groups, patch_dims, ungroup

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
