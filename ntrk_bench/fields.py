"""Deterministic random fields for toy data laws and analytic rewards."""
from __future__ import annotations

import torch


def smooth_field(shape, seed: int = 0, cells: int = 4) -> torch.Tensor:
    """Random fields (N, C, H, W) with about ``cells`` x ``cells`` degrees of freedom per channel, unit RMS."""
    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.interpolate(torch.randn(n, c, cells, cells, generator=g), size=(h, w), mode="bicubic",
                                        align_corners=False)
    return f / f.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
