"""Quality measures no target reward sees: exact log-density, Frechet distance, diversity.

The feature space for the Frechet distance and diversity is a PCA of 16 x 16 pooled pixels fitted on the
real split C (independent of every reward's training data and architecture).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from ntrk_bench.mini import data


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


class MiniQuality:
    """The mini suite's quality evaluator: exact log-density per sample (from the saved latents), FD to real
    split C and diversity per run."""

    name = "mini_quality"

    def evaluate(self, pixels: torch.Tensor, prompts=None, latents=None) -> dict:
        from ntrk_bench.mini.exact import exact_mixture

        out = {"diversity": diversity(pixels)}
        if len(pixels) >= 8:
            out["fd_to_real"] = fd_to_real(pixels)
        if latents and all(p.exists() for p in latents):
            x0 = torch.cat([torch.load(p) for p in latents])
            out["log_density"] = exact_mixture().log_prob(x0).float().tolist()
        return out
