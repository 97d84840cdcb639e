"""Quality measures of the mini suite no target reward sees, each with the real data's value beside it.

* speckle: the share of an image's power above 0.25 cycles/pixel (``hf_share``; real digits ~0.002);
* exact log-density under the exact tier's mixture and its percentile among real held-out digits (split C);
* Frechet distance to real split C on >= 100 samples, with the real-vs-real floor at the same n, and
  diversity. The feature space for both is a PCA of 16 x 16 pooled pixels fitted on split C (independent of
  every reward's training data and architecture); it does not see speckle, which ``hf_share`` measures.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from . import data

#: the Frechet distance is reported from this many samples on (fewer: it sits below its own real-vs-real floor)
FD_MIN_SAMPLES = 100
#: speckle: power above this spatial frequency (cycles per pixel)
HF_CUTOFF = 0.25


@lru_cache(maxsize=1)
def _pca(dims: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    x = _pool(data.subset("C")[0])
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, v[:dims].T


def _pool(pixels: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(pixels.float(), 4).flatten(1).double()


def features(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 32) PCA features of images in [0, 1]."""
    mean, proj = _pca()
    return (_pool(pixels) - mean) @ proj


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (B, d)."""
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def fd_to_real(pixels: torch.Tensor, split: str = "C") -> float:
    """Frechet distance of generated images to the real images of ``split`` in PCA feature space."""
    return frechet_distance(features(pixels), features(data.subset(split)[0]))


def diversity(pixels: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between samples in PCA feature space."""
    f = features(pixels)
    if len(f) < 2:
        return float("nan")
    d = torch.cdist(f, f)
    n = len(f)
    return float(d.sum() / (n * (n - 1)))


def hf_share(pixels: torch.Tensor, cutoff: float = HF_CUTOFF) -> torch.Tensor:
    """(B,) share of each image's power (mean removed) above ``cutoff`` cycles per pixel (radial frequency)."""
    x = pixels.float().flatten(0, -3)  # (B, H, W) for single-channel images
    x = x.reshape(pixels.shape[0], -1, *x.shape[-2:]).mean(1)
    power = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs().square()
    fy, fx = torch.fft.fftfreq(x.shape[-2]), torch.fft.fftfreq(x.shape[-1])
    high = (fy[:, None].square() + fx[None, :].square()).sqrt() > cutoff
    return (power * high).flatten(1).sum(1) / power.flatten(1).sum(1).clamp_min(1e-12)


def fd_floor(n: int, draws: int = 5, seed: int = 0) -> float:
    """Real-vs-real Frechet distance at n samples: n real digits of splits A + B against split C, averaged
    over ``draws`` seeded draws - the value a perfect sampler would get at this n."""
    images = data.subset("AB")[0]
    gen = torch.Generator().manual_seed(seed)
    n = min(n, len(images))
    return float(np.mean([fd_to_real(images[torch.randperm(len(images), generator=gen)[:n]]) for _ in range(draws)]))


@lru_cache(maxsize=1)
def real_log_density() -> torch.Tensor:
    """Sorted exact log-densities of the real held-out digits (split C latents) under the exact mixture."""
    from .exact import exact_mixture

    return exact_mixture().log_prob(data.encode(data.subset("C")[0])).double().sort().values


def log_density_percentile(log_density: torch.Tensor) -> torch.Tensor:
    """(B,) percentile of each log-density among the real held-out digits (0: below all of them)."""
    real = real_log_density()
    return 100.0 * torch.searchsorted(real, log_density.double().contiguous()).double() / len(real)


