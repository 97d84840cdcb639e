"""Train the learned tier of the mini suite by distilling the exact tier's velocity (``make mini-train``).

Regression on forward-process samples: x0 from the exact mixture (conditioned on a digit, or on nothing
with probability ``p_uncond``), x_t = (1 - t) x0 + t eps, target = the mixture's exact velocity at
(x_t, t). The network only ever sees states on the forward process, so - like a pretrained FLUX - it is
accurate on typical noise and unreliable off it. Seeded; writes EMA weights (safetensors + JSON).

    python scripts/train_mini.py [--steps 2000] [--batch 48] [--seed 0]
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ntrk_bench.mini import data
from ntrk_bench.mini.exact import exact_mixture
from ntrk_bench.mini.net import NULL_CLASS, WEIGHTS, VelocityNet


def sample_times(n: int, groups: int, gen: torch.Generator) -> torch.Tensor:
    """Half uniform, half logit-normal times, shared within groups (the exact velocity is cheapest per time)."""
    u = torch.rand(groups, generator=gen)
    ln = torch.sigmoid(torch.randn(groups, generator=gen))
    t = torch.where(torch.rand(groups, generator=gen) < 0.5, u, ln).clamp(0.002, 0.998)
    return t.repeat_interleave(n // groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--channels", type=int, nargs=2, default=[48, 96])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(WEIGHTS / "mini_flow.safetensors"))
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    gmm = exact_mixture()
    conds = {c: gmm.condition([data.prompt_for(c)]) for c in range(10)}
    conds[NULL_CLASS] = gmm.condition([""])
    net = VelocityNet(tuple(args.channels))
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    groups = 6
    start, log = time.time(), []
    bar = tqdm(range(args.steps), desc="distilling")
    for step in bar:
        y = torch.randint(0, 10, (args.batch,), generator=gen)
        y = torch.where(torch.rand(args.batch, generator=gen) < args.p_uncond, torch.full_like(y, NULL_CLASS), y)
        cond = torch.cat([conds[int(c)] for c in y])
        x0 = torch.cat([gmm.sample_data(1, gen, cond=conds[int(c)]) for c in y])
        t = sample_times(args.batch, groups, gen)
        eps = torch.randn(x0.shape, generator=gen)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
        with torch.no_grad():
            target = gmm.velocity(xt, t, cond)
        loss = (net(xt, t, y) - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        log.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(log[-50:]) / len(log[-50:]):.4f}")
    out = args.out
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, out)
    meta = {"config": net.config, "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
            "p_uncond": args.p_uncond, "final_loss_mean_last_100": sum(log[-100:]) / 100,
            "train_minutes": (time.time() - start) / 60, "torch": torch.__version__}
    with open(out.replace(".safetensors", ".json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    print(f"saved {out}: last-100 loss {meta['final_loss_mean_last_100']:.4f}, {meta['train_minutes']:.1f} min")


if __name__ == "__main__":
    main()
