"""Train the mini suite's networks: the target classifier (CNN, split A; its features carry the exemplar
target) and the held-out evaluators (MLPs, split B): a digit classifier and a stroke-width regressor.

    python scripts/train_mini_rewards.py [--steps 1500] [--seed 0]

Each network has its own seed (``--seed`` + its offset in ``rewards.mini.SPECS``), so retraining one
reproduces the others. Reports, on the untouched split C: accuracy or R^2, and for the held-out stroke
width its correlation with the target attribute (boldness), which should stay well below 1.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
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


def labels_for(kind: str, images: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    if kind == "digit":
        return digits
    return data.stroke_width(images)


def train(name: str, steps: int, seed: int) -> dict:
    arch, out, split, kind, offset = SPECS[name]
    torch.manual_seed(seed + offset)
    gen = torch.Generator().manual_seed(seed + offset)
    x, y = data.subset(split)
    target = labels_for(kind, x, y)
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
        t = labels_for(kind, xc, yc)
        metric = {"r2_split_C": float(1 - (pc.squeeze(-1) - t).square().mean() / t.var()),
                  "corr_with_boldness_split_C": float(np.corrcoef(pc.squeeze(-1), data.boldness(xc))[0, 1])}
    else:
        metric = {"accuracy_split_C": float((pc.argmax(-1) == yc).float().mean())}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(WEIGHTS / f"{name}.safetensors"))
    print(name, metric)
    return metric


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=",".join(SPECS), help="comma-separated names of rewards.mini.SPECS")
    args = ap.parse_args()
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    path = WEIGHTS / "mini_rewards.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    meta = {k: v for k, v in meta.items() if k in SPECS}
    for name in args.only.split(","):
        meta[name] = {**train(name, args.steps, args.seed), "split": SPECS[name][2], "arch": SPECS[name][0],
                      "label": SPECS[name][3], "steps": args.steps, "seed": args.seed + SPECS[name][4]}
    path.write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
