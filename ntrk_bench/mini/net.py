"""The learned tier (``model=mini``): a small conditional conv net distilled from the exact tier's velocity.

Trained by ``scripts/train_mini.py`` on forward-process samples x_t = (1 - t) x0 + t eps with x0 from the
exact mixture, it is - like FLUX - accurate on the noise it was trained on and unreliable off it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data

WEIGHTS = Path(__file__).resolve().parent / "weights"
NULL_CLASS = 10


class MissingWeights(FileNotFoundError):
    pass


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = (t.float() * 1000)[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        h = self.c2(F.silu(self.n2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class VelocityNet(nn.Module):
    """A two-level U-Net on (4, 32, 32) latents with FiLM time and class conditioning."""

    def __init__(self, channels: Sequence[int] = (64, 128), emb: int = 128, in_ch: int = 4):
        super().__init__()
        c1, c2 = channels
        self.config = {"channels": list(channels), "emb": emb, "in_ch": in_ch}
        self.emb_dim = emb
        self.t_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.cls = nn.Embedding(11, emb)
        self.inp = nn.Conv2d(in_ch, c1, 3, padding=1)
        self.d1 = ResBlock(c1, c1, emb)
        self.down1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.d2 = ResBlock(c2, c2, emb)
        self.down2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.mid1, self.mid2 = ResBlock(c2, c2, emb), ResBlock(c2, c2, emb)
        self.u2 = ResBlock(2 * c2, c2, emb)
        self.u1 = ResBlock(c2 + c1, c1, emb)
        self.out = nn.Sequential(nn.GroupNorm(8, c1), nn.SiLU(), nn.Conv2d(c1, in_ch, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = self.t_mlp(timestep_embedding(t, self.emb_dim)) + self.cls(y)
        h1 = self.d1(self.inp(x), e)  # 32 x 32
        h2 = self.d2(self.down1(h1), e)  # 16 x 16
        h = self.mid2(self.mid1(self.down2(h2), e), e)  # 8 x 8
        h = self.u2(torch.cat([F.interpolate(h, scale_factor=2.0), h2], 1), e)
        h = self.u1(torch.cat([F.interpolate(h, scale_factor=2.0), h1], 1), e)
        return self.out(h)


class MiniLearnedFlow:
    """``model=mini``: the distilled network behind the FlowModel protocol."""

    latent_shape = data.LATENT

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", dtype: str = "float32"):
        path = Path(weights) if weights else WEIGHTS / "mini_flow.safetensors"
        if not path.exists():
            raise MissingWeights(f"mini flow weights not found at {path}; train them with `make mini-train` "
                                 "(scripts/train_mini.py, about 15 minutes on a CPU)")
        from safetensors.torch import load_file

        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise MissingWeights(f"{sidecar} (the architecture of {path.name}) is missing; it is written beside the "
                                 "weights by `make mini-train` (scripts/train_mini.py)")
        meta = json.loads(sidecar.read_text())
        self.net = VelocityNet(**meta["config"]).to(device)
        self.net.load_state_dict(load_file(str(path), device=str(device)))
        self.net.eval().requires_grad_(False)
        self.meta = meta
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)  # the sampler state's (weights: fp32)

    def condition(self, prompts: Sequence[str] | None) -> torch.Tensor:
        labels = [data.label_of(p) for p in (prompts or [""])]
        return torch.tensor([NULL_CLASS if lab is None else lab for lab in labels])

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
        y = cond.to(x.device).expand(x.shape[0]) if cond.numel() == 1 else cond.to(x.device)
        return self.net(x.float(), t, y).to(x.dtype)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return data.decode(x0)
