"""Typicality statistics: how much a latent-shaped tensor looks like a fresh N(0, I) draw.

Each statistic is computed on one sample rescaled to unit RMS (the scale the whitening operator and the
noise term work at) and viewed as a (C', H, W) field. Fresh noise gives the reference range; the tests,
the whitening benchmark and the noise-compatibility probe compare structured inputs against it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from .whitening.operator import field_shape
from .whitening.project import groups

_EULER_GAMMA = 0.5772156649015329


def _field(x: torch.Tensor, event_shape) -> torch.Tensor:
    f = x.detach().float().reshape(field_shape(event_shape))
    return f / f.square().mean().sqrt().clamp_min(1e-12)


def value_ks(x: torch.Tensor, event_shape) -> float:
    """Kolmogorov-Smirnov distance between the values and N(0, 1)."""
    return float(stats.kstest(_field(x, event_shape).flatten().numpy(), "norm").statistic)


def tile_energy_ks(x: torch.Tensor, event_shape, k: int = 8) -> float:
    """KS distance between the centred energies of k x k tiles and chi2(k^2 - 1) (eq. 91)."""
    g = groups(_field(x, event_shape)[None], k)[0]
    energy = (g - g.mean(-1, keepdim=True)).square().sum(-1)
    return float(stats.kstest(energy.numpy(), "chi2", args=(k * k - 1,)).statistic)


def tile_mean_ks(x: torch.Tensor, event_shape, k: int = 8) -> float:
    """KS distance between sqrt(k^2) x (tile means) and N(0, 1) (eq. 91)."""
    g = groups(_field(x, event_shape)[None], k)[0]
    return float(stats.kstest((g.mean(-1) * k).numpy(), "norm").statistic)


def spectral_flatness(x: torch.Tensor, event_shape) -> float:
    """Wiener entropy of the per-channel 2-D periodogram (DC excluded), averaged over channels.

    White noise has exponentially distributed periodogram ordinates, so its flatness is about
    exp(-Euler gamma) = 0.56; any spatial correlation lowers it.
    """
    f = _field(x, event_shape)
    p = torch.fft.fft2(f, norm="ortho").abs().square().flatten(1)[:, 1:].double().clamp_min(1e-30)
    return float((p.log().mean(1).exp() / p.mean(1)).mean())


def lag1_correlation(x: torch.Tensor, event_shape) -> float:
    """Mean correlation of horizontally and vertically adjacent entries (0 for white noise)."""
    f = _field(x, event_shape)
    f = f - f.mean(dim=(-1, -2), keepdim=True)
    h = (f[..., :, 1:] * f[..., :, :-1]).mean() / f.square().mean()
    v = (f[..., 1:, :] * f[..., :-1, :]).mean() / f.square().mean()
    return float((h + v) / 2)


STATISTICS = {
    "value_ks": value_ks,
    "tile_energy_ks": tile_energy_ks,
    "tile_mean_ks": tile_mean_ks,
    "spectral_flatness": spectral_flatness,
    "lag1_corr": lag1_correlation,
}


def typicality(x: torch.Tensor, event_shape) -> dict[str, float]:
    """Every statistic of :data:`STATISTICS` for one sample."""
    return {name: fn(x, event_shape) for name, fn in STATISTICS.items()}


def noise_reference(event_shape, n: int = 32, seed: int = 0) -> dict[str, tuple[float, float]]:
    """(min, max) of every statistic over ``n`` fresh N(0, I) draws."""
    g = torch.Generator().manual_seed(seed)
    rows = [typicality(torch.randn(tuple(event_shape), generator=g), event_shape) for _ in range(n)]
    return {k: (min(r[k] for r in rows), max(r[k] for r in rows)) for k in STATISTICS}


def structured_inputs(event_shape, seed: int = 0) -> dict[str, torch.Tensor]:
    """Structured latent-shaped test inputs: smooth field, checkerboard, ramp and a natural photograph.

    The photograph is scikit-learn's bundled ``china.jpg``; channels are distinct grey-level crops.
    """
    c, h, w = field_shape(event_shape)
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    freq = torch.rand(c, 2, generator=g) * 3 + 0.5
    phase = torch.rand(c, generator=g) * 2 * math.pi
    smooth = torch.sin(2 * math.pi * (freq[:, :1, None] * xx + freq[:, 1:, None] * yy) + phase[:, None, None])
    checker = (((torch.arange(h)[:, None] + torch.arange(w)[None]) % 2) * 2 - 1).float().expand(c, h, w)
    ramp = (xx + 0.5 * yy).expand(c, h, w)
    out = {"smooth": smooth, "checkerboard": checker, "ramp": ramp, "photo": _photo(c, h, w)}
    return {k: v.reshape(tuple(event_shape)).contiguous() for k, v in out.items()}


def _photo(c: int, h: int, w: int) -> torch.Tensor:
    from sklearn.datasets import load_sample_image

    img = load_sample_image("china.jpg").astype(np.float32).mean(-1) / 255.0  # 427 x 640 grey levels
    rows, cols = img.shape[0] // h, img.shape[1] // w
    if rows * cols == 0:  # latent larger than the photo: resample it up
        t = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], size=(h, w), mode="bilinear")
        return t[0].expand(c, h, w).clone()
    crops = [img[(i // cols % rows) * h:(i // cols % rows + 1) * h, (i % cols) * w:(i % cols + 1) * w] for i in range(c)]
    return torch.from_numpy(np.stack(crops))
