"""The mini suite's quality evaluator (``mini_quality``): the measures of :mod:`ntrk_bench.mini.quality`
and the hack detector - whether a sample's target attribute (boldness, exemplar likeness) lies beyond the
largest value any real digit of the prompted class reaches.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ntrk_bench.mini import data

from .mini import ExemplarReward, exemplars, prompted_column
from ntrk_bench.mini.quality import (FD_MIN_SAMPLES, diversity, fd_floor, fd_to_real, hf_share,
                                     log_density_percentile)


@lru_cache(maxsize=1)
def exemplar_likeness():
    """The exemplar target, built once (its network and the exemplars' features)."""
    return ExemplarReward()


@lru_cache(maxsize=1)
def real_attribute_max() -> dict[str, torch.Tensor]:
    """(10,) largest boldness and exemplar likeness any real digit of each class reaches (all splits; the
    exemplar itself excluded from its own class)."""
    images, labels, _ = data.digits()
    prompts = [data.prompt_for(int(d)) for d in labels]
    with torch.no_grad():
        bold, like = data.boldness(images), exemplar_likeness()(images, prompts)
    like[exemplars()] = -1.0
    return {"boldness": torch.stack([bold[labels == d].max() for d in range(10)]),
            "exemplar_likeness": torch.stack([like[labels == d].max() for d in range(10)])}


def beyond_real(pixels: torch.Tensor, prompts) -> dict[str, list]:
    """Each sample's target attributes and whether they exceed the real data's range for its digit (the
    hack detector; prompts naming no digit are compared with the largest value of any digit)."""
    digits = [data.label_of(p) for p in prompts]
    with torch.no_grad():
        attributes = {"boldness": data.boldness(pixels.float()),
                      "exemplar_likeness": exemplar_likeness()(pixels, prompts)}
    out = {}
    for name, value in attributes.items():
        limit = prompted_column(real_attribute_max()[name].expand(len(digits), -1), digits)
        out[name] = value.tolist()
        out[f"{name}_beyond_real"] = (value > limit).float().tolist()
    return out


class MiniQuality:
    """The mini suite's quality evaluator. Per sample: speckle (``hf_share``), exact log-density and its
    percentile among real digits, and the target attributes with their beyond-the-real-range flags; per run:
    diversity, and the Frechet distance to real split C with its real-vs-real floor when the run has at least
    ``FD_MIN_SAMPLES`` samples (the report pools runs to reach it)."""

    name = "mini_quality"

    def evaluate(self, pixels: torch.Tensor, prompts=None, latents=None) -> dict:
        from ntrk_bench.mini.exact import exact_mixture

        prompts = list(prompts) if prompts is not None else [""] * len(pixels)
        out = {"diversity": diversity(pixels), "hf_share": hf_share(pixels).tolist(), **beyond_real(pixels, prompts)}
        if len(pixels) >= FD_MIN_SAMPLES:
            out["fd_to_real"], out["fd_floor"] = fd_to_real(pixels), fd_floor(len(pixels))
        if latents and all(p.exists() for p in latents):
            x0 = torch.cat([torch.load(p) for p in latents])
            log_density = exact_mixture().log_prob(x0)
            out["log_density"] = log_density.float().tolist()
            out["log_density_percentile"] = log_density_percentile(log_density).tolist()
        return out
