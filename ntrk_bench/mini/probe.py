"""Noise-compatibility probe (paper Fig. 2, App. B.1): feed a model norm-matched structured noise, the same
noise after whitening, and fresh noise, and measure the samples with quantities no sampler sees.

Structured noise: smooth random fields rescaled to unit RMS (norm sqrt(D), i.e. on the Gaussian
concentration shell, so norm alone cannot tell them from noise). ``where="initial"`` replaces the initial
latent; ``where="steps"`` replaces the noise injected at every reverse-kernel step (what NTRK injects).
"""
from __future__ import annotations

import torch

from ..fields import smooth_field
from ..sampling import initial_noise, sample_model
from ..sde import FlowSDE
from ..whitening import Whitening
from . import data

KINDS = ("fresh", "structured", "whitened")


def structured_noise(n: int, shape, seed: int, cells: int = 6) -> torch.Tensor:
    return smooth_field((n, *shape), seed=seed, cells=cells)


def run_probe(model, whiten_cfg, held_out, fd_to_real, where: str = "initial", samples_per_digit: int = 4,
              steps: int = 25, seed: int = 0, sde: FlowSDE | None = None) -> dict[str, dict]:
    """Samples and metrics for each kind of noise. Returns {kind: {"pixels", "x0", metrics...}}. ``held_out``:
    a digit classifier with ``accuracy(pixels, prompts)``; ``fd_to_real(pixels)``: Frechet distance to real
    digits (the mini suite's held-out evaluators, passed in)."""
    from .exact import exact_mixture

    sde = sde or FlowSDE()
    W = Whitening(whiten_cfg, model.latent_shape)
    prompts = [data.prompt_for(d) for d in range(10) for _ in range(samples_per_digit)]
    n, shape = len(prompts), model.latent_shape
    cond = model.condition(prompts)
    out = {}
    for kind in KINDS:
        gen = torch.Generator().manual_seed(seed)
        x = initial_noise(model, n, gen)
        rule = None
        if kind != "fresh":
            if where == "initial":
                x = structured_noise(n, shape, seed + 1)
                x = W(x) if kind == "whitened" else x
            else:
                def rule(ev, eps, k, kind=kind):
                    s = structured_noise(n, shape, seed + 100 + k)
                    return W(s) if kind == "whitened" else s
        x0 = sample_model(sde, model, cond, x, steps, gen, noise_rule=rule)
        with torch.no_grad():
            pixels = model.decode(x0)
            out[kind] = {"pixels": pixels, "log_density": exact_mixture().log_prob(x0).mean().item(),
                         "heldout_accuracy": held_out.accuracy(pixels, prompts).mean().item(),
                         "fd_to_real": fd_to_real(pixels)}
    return out
