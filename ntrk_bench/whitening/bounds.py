"""Confidence bounds for two-level order statistics (paper App. B.2, eqs. 74-84).

Reshape D = m * c i.i.d. draws from a reference law F into m chunks of size c, sort within each chunk
(inner rank j) and then, for each j, across chunks (outer rank i). Under the i.i.d. model:

* the j-th order statistic of a chunk, pushed through its own CDF, is U(0,1) distributed:
  I_{U_(j)}(j, c - j + 1) ~ U(0,1), so across the m chunks these values are i.i.d. uniform;
* the i-th smallest of m i.i.d. uniforms is Beta(i, m - i + 1)                  (eq. 74-75);
* hence a (1 - alpha) interval for the (i, j) entry of the doubly sorted matrix is
  F^{-1}( BetaInv( BetaInv(alpha/2; i, m-i+1); j, c-j+1) ) ... same with 1 - alpha/2   (eq. 82-84).

Upper bounds are computed through the Beta symmetry BetaInv(1-p; a, b) = 1 - BetaInv(p; b, a) and the
reference's survival function, so that extreme ranks keep full float64 precision.

Bounds are precomputed once per (m, c, level, reference) and cached (App. B.6).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy import special, stats

#: Reference laws by name. A reference is a hashable tuple ``(name, *params)``.
_REFERENCES = {
    "normal": lambda: stats.norm(),
    "chi2": lambda df: stats.chi2(df),
}


def reference_law(ref: tuple):
    name, *params = ref
    if name not in _REFERENCES:
        raise ValueError(f"unknown reference law {name!r}; expected one of {sorted(_REFERENCES)}")
    return _REFERENCES[name](*params)


@lru_cache(maxsize=64)
def two_level_bounds(m: int, c: int, level: float, ref: tuple = ("normal",)) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper value bounds, each of shape (m, c), for the doubly sorted statistic T[i, j].

    ``level`` is the per-entry confidence level 1 - alpha (paper Sec. 4, "confidence level").
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    if m < 1 or c < 1:
        raise ValueError(f"need m >= 1 chunks of size c >= 1, got m={m}, c={c}")
    half = (1.0 - level) / 2.0
    i = np.arange(1, m + 1, dtype=np.float64)[:, None]  # outer rank (across chunks)
    j = np.arange(1, c + 1, dtype=np.float64)[None, :]  # inner rank (within a chunk)
    # Outer level: quantiles of the i-th smallest of m uniforms (lower tail and complement of the upper).
    v_lo = special.betaincinv(i, m - i + 1, half)
    v_hi_c = special.betaincinv(m - i + 1, i, half)  # = 1 - BetaInv(1 - half; i, m - i + 1)
    # Inner level: map through the inverse CDF of the j-th order statistic of c uniforms.
    u_lo = special.betaincinv(j, c - j + 1, v_lo)
    u_hi_c = special.betaincinv(c - j + 1, j, v_hi_c)  # = 1 - u_hi
    law = reference_law(ref)
    lo = law.ppf(u_lo)
    hi = law.isf(u_hi_c)
    return np.ascontiguousarray(lo), np.ascontiguousarray(hi)


def bounds_tensor(m: int, c: int, level: float, ref: tuple, device, cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch (float32) copy of :func:`two_level_bounds`, memoised per device in ``cache``."""
    key = (m, c, level, ref, str(device))
    if key not in cache:
        lo, hi = two_level_bounds(m, c, level, ref)
        cache[key] = (torch.as_tensor(lo, dtype=torch.float32, device=device),
                      torch.as_tensor(hi, dtype=torch.float32, device=device))
    return cache[key]
