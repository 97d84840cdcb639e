"""Train the mini suite's target rewards (CNNs, split A) and held-out evaluators (MLPs, split B).

    python scripts/train_mini_rewards.py [--steps 1500] [--seed 0]

Reports, on the untouched split C: ink R^2 and classification accuracy of every model.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ntrk_bench.mini import data
from rewards.mini import ARCHS, SPECS, WEIGHTS


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 4 px and mild pixel noise, so scores depend on shape, not position."""
    dx, dy = (torch.randint(-4, 5, (2,), generator=gen)).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return (x + 0.03 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def train(name: str, steps: int, seed: int) -> dict:
    arch, out, split, _ = SPECS[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = data.subset(split)
    target = data.ink(x) if out == 1 else y
    net = ARCHS[arch](out)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        pred = net(augment(x[idx], gen))
        loss = F.mse_loss(pred.squeeze(-1), target[idx]) if out == 1 else F.cross_entropy(pred, target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    xc, yc = data.subset("C")
    with torch.no_grad():
        pc = net(xc)
    if out == 1:
        t = data.ink(xc)
        metric = {"r2_split_C": float(1 - (pc.squeeze(-1) - t).square().mean() / t.var())}
    else:
        metric = {"accuracy_split_C": float((pc.argmax(-1) == yc).float().mean())}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(WEIGHTS / f"{name}.safetensors"))
    print(name, metric)
    return metric


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    meta = {name: {**train(name, args.steps, args.seed + i), "split": SPECS[name][2], "arch": SPECS[name][0]}
            for i, name in enumerate(SPECS)}
    meta["steps"], meta["seed"] = args.steps, args.seed
    (WEIGHTS / "mini_rewards.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
