"""Whitening operator cost: ms per call per component and in full, bound precompute, ratio to torch.sort.

    python scripts/bench_whitening.py [--device cuda] [--batches 1 8] [--quick]

Latents: FLUX 512 px (16x64x64), FLUX 1024 px (16x128x128), Wan2.1 (16x21x60x104). Every timing in one
table is measured in the same run on the same machine, so the ratio column compares like with like.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from ntrk_bench import diagnostics as D
from ntrk_bench.config import load_group
from ntrk_bench.whitening import Whitening, make_domain, project_2os, project_tile_stats, two_level_bounds

LATENTS = {"flux512": ((16, 64, 64), "full"), "flux1024": ((16, 128, 128), "full"), "wan21": ((16, 21, 60, 104), "full_wan")}


def timeit(fn, device, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def bench(name: str, batch: int, device: torch.device, repeats: int) -> list[dict]:
    shape, cfg_name = LATENTS[name]
    cfg = load_group("whitening", cfg_name)
    two_level_bounds.cache_clear()
    t = time.perf_counter()
    W = Whitening(cfg, shape, device)
    precompute = (time.perf_counter() - t) * 1000
    cfg = W.cfg
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen, device=device)
    smooth = D.structured_inputs(shape)["smooth"].to(device).expand(batch, *shape).contiguous()
    f = x.reshape(batch, *W.field)
    rows, cache = [], W._cache
    sort_ms = timeit(lambda: x.flatten(1).sort(dim=-1), device, repeats)

    def row(component, ms):
        rows.append({"latent": name, "shape": "x".join(map(str, shape)), "batch": batch, "device": str(device),
                     "component": component, "ms": ms, "ms_per_sample": ms / batch, "ratio_to_sort": ms / sort_ms})

    row("torch.sort (same tensor)", sort_ms)
    row("bound precompute (once)", precompute)
    block = cfg.blocks[-1]
    for k in block.chunks:
        row(f"2OS chunk {k}", timeit(lambda k=k: project_2os(f, k, cfg.level, ("normal",), cache, cfg.passes), device, repeats))
    for k in block.tiles:
        row(f"tile mean/energy {k}", timeit(lambda k=k: project_tile_stats(f, k, cfg.level, cfg.stat_chunk, cache, cfg.passes),
                                            device, repeats))
    for b in cfg.blocks:
        if b.domain != "spatial":
            dom = make_domain(b.domain, b.tile, b.mix)
            row(f"domain {dom.name} fwd+inv", timeit(lambda dom=dom: dom.inverse(dom.forward(f)), device, repeats))
    row("full W, fresh noise", timeit(lambda: W(x), device, repeats))
    row("full W, structured input", timeit(lambda: W(smooth), device, repeats))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--latents", nargs="+", default=list(LATENTS), choices=list(LATENTS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    rows = []
    for name in args.latents:
        for batch in args.batches:
            big = torch.Size(LATENTS[name][0]).numel() * batch > 4e6 and device.type == "cpu"
            rows += bench(name, batch, device, 1 if big else args.repeats)
            print_table([r for r in rows if r["latent"] == name and r["batch"] == batch])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"whitening_{device.type}.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nwritten {path}")


def print_table(rows: list[dict]) -> None:
    r0 = rows[0]
    print(f"\n### {r0['latent']} {r0['shape']}, batch {r0['batch']} ({r0['device']})")
    print("| component | ms / call | ms / sample | x torch.sort |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['component']} | {r['ms']:.1f} | {r['ms_per_sample']:.1f} | {r['ratio_to_sort']:.1f} |")


if __name__ == "__main__":
    main()
