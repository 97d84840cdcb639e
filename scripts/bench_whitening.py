"""Whitening operator cost per call: ms, floor, kernels, host syncs, and the speed-up over the previous operator.

    python scripts/bench_whitening.py [--device cuda] [--batches 1 8] [--latents flux512 ...] [--quick]

Latents: FLUX 512 px (16x64x64), FLUX 1024 px (16x128x128), Wan2.1 (16x21x60x104); ``--quick`` runs small
ones in seconds. For each latent and batch, every number comes from the same run on the same machine, with
the operators timed interleaved (medians):

* ``ms``: one call of W (``conf/whitening/full`` or ``full_wan``) on fresh noise (CPU: thread CPU time);
* ``floor``: the sorts, scatters, gathers and transforms that call issues - every ``torch.sort`` and packed-key
  sort (``ntrk_bench::sort_keys`` / ``sort_rows``), every gather (take, index_select) and scatter, every matrix product and
  FFT (``FLOOR_OPS``) - captured with their arguments and replayed alone: the work this configuration cannot
  avoid, done the way the operator does it. ``ratio`` = ms / floor (median of the per-round ratios) is what
  everything else costs on top:
  building the integer sort keys, clipping, the tile statistics, layout copies, dispatch;
* ``kernels`` / ``syncs``: aten ops per call that launch work (views and bare allocations excluded) and
  that read a value back to the host, counted with a dispatch-mode census (``ntrk_bench.whitening.census``);
* ``vs ref``: speed-up over the previous operator (``scripts/whitening_reference.py``; median of the per-round
  ratios), and ``max|dW|``
  the largest output difference between the two on the same noise;
* ``ulp``: the largest output change when the input is scaled by (1 + 2^-23), on noise and on a smooth field.

On a GPU it also times W compiled with ``torch.compile`` (first-call compile time printed separately).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ntrk_bench import diagnostics as D
from ntrk_bench.config import load_group
from ntrk_bench.whitening import Whitening, two_level_bounds
from ntrk_bench.whitening.census import OpCensus, run_decomposed

sys.path.insert(0, str(Path(__file__).resolve().parent))
import whitening_reference as reference  # noqa: E402  (the previous operator; only this script imports it)

LATENTS = {"flux512": ((16, 64, 64), "full"), "flux1024": ((16, 128, 128), "full"), "wan21": ((16, 21, 60, 104), "full_wan")}
QUICK = {"flux_small": ((4, 32, 32), "full"), "video_small": ((4, 3, 12, 16), "quick_video")}
FLOOR_OPS = frozenset({"sort", "argsort", "sort_keys", "sort_rows", "scatter", "scatter_", "gather", "index", "index_select", "take",
                       "mm", "bmm", "matmul",
                       "_fft_r2c", "_fft_c2r", "_fft_c2c"})


class FloorRecorder(TorchDispatchMode):
    """Record every floor op of a call with (cloned) arguments, to replay them alone."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = run_decomposed(self, func, args, kwargs)  # e.g. matmul as the mm / bmm that run
        if out is not NotImplemented:
            return out
        if func.overloadpacket.__name__ in FLOOR_OPS:
            clone = lambda a: a.clone() if isinstance(a, torch.Tensor) else a  # noqa: E731
            self.calls.append((func, [clone(a) for a in args], {k: clone(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)

    def replay(self) -> None:
        with torch.inference_mode():  # as W runs them
            for func, args, kwargs in self.calls:
                func(*args, **kwargs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call of each function, one warm-up each, then the functions in turn, ``repeats``
    rounds: ``times[name][i]`` is round i, so that ratios can be taken within a round (see :func:`paired`).

    On CPU the clock is the calling thread's CPU time (run with OMP_NUM_THREADS=1, so all the work is on
    that thread): on a shared machine it leaves out the time the process waits for a core. On a GPU it is
    wall time between device synchronisations."""
    clock = time.thread_time if device.type == "cpu" else time.perf_counter
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t = clock()
            fn()
            sync(device)
            times[name].append((clock() - t) * 1000)
    return times


def paired(num: list[float], den: list[float]) -> float:
    """Median over rounds of num_i / den_i. The calls of one round run back to back, so a slow spell of a
    shared machine (other tenants, frequency changes: medians here drift by 30-50% over minutes) scales
    both; the ratio of the two medians would carry that drift."""
    return statistics.median(a / b for a, b in zip(num, den))


def census(fn) -> OpCensus:
    with OpCensus() as c:
        fn()
    return c


def config(cfg_name: str):
    if cfg_name == "quick_video":  # full_wan's recipe scaled to a 12 x 16 frame
        cfg = load_group("whitening", "full")
        for b in cfg.blocks:
            b.tiles = [2, [4, 8]]
            if b.domain == "hadamard" and b.tile:
                b.tile = [4, 8]
        return cfg
    return load_group("whitening", cfg_name)


def bench(name: str, shape, cfg_name: str, batch: int, device: torch.device, repeats: int, compiled: bool) -> dict:
    cfg = config(cfg_name)
    two_level_bounds.cache_clear()
    t = time.perf_counter()
    W = Whitening(cfg, shape, device)
    precompute = (time.perf_counter() - t) * 1000
    W_ref = reference.Whitening(config(cfg_name), shape, device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen, device=device)
    smooth = D.structured_inputs(shape)["smooth"].to(device).expand(batch, *shape).contiguous()

    floor = FloorRecorder()
    with floor:
        W(x)
    fns = {"W": lambda: W(x), "floor": floor.replay, "ref": lambda: W_ref(x)}
    if compiled:
        W_compiled = torch.compile(W.__call__, dynamic=False)
        t = time.perf_counter()
        W_compiled(x)
        sync(device)
        compile_s = time.perf_counter() - t
        fns["compiled"] = lambda: W_compiled(x)
    times = interleaved(fns, device, repeats)
    ms = {name: statistics.median(v) for name, v in times.items()}
    best = {name: min(v) for name, v in times.items()}
    new, old = census(lambda: W(x)), census(lambda: W_ref(x))
    ulp = 1.0 + 2.0 ** -23
    row = {"latent": name, "shape": "x".join(map(str, shape)), "batch": batch, "device": str(device),
           "ms": ms["W"], "floor_ms": ms["floor"], "ratio": paired(times["W"], times["floor"]), "kernels": new.kernels,
           "syncs": new.n_syncs, "ref_ms": ms["ref"], "ref_kernels": old.kernels, "ref_syncs": old.n_syncs,
           "speedup": paired(times["ref"], times["W"]), "max_diff_vs_ref": (W(x) - W_ref(x)).abs().max().item(),
           "ulp_noise": (W(x * ulp) - W(x)).abs().max().item(), "ulp_smooth": (W(smooth * ulp) - W(smooth)).abs().max().item(),
           "precompute_ms": precompute,
           # minima: what a quiet machine gives (on a shared CPU, medians carry the other processes' load)
           "ms_min": best["W"], "floor_ms_min": best["floor"], "ref_ms_min": best["ref"]}
    if compiled:
        row.update(compiled_ms=ms["compiled"], compile_s=compile_s)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--latents", nargs="+", default=None, choices=list(LATENTS) + list(QUICK))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small latents, batch 1 and 2, 3 repeats: a few seconds")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile on a GPU")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    device = torch.device(args.device)
    latents = {**LATENTS, **QUICK}
    names = args.latents or (list(QUICK) if args.quick else list(LATENTS))
    batches = args.batches or ([1, 2] if args.quick else [1, 8])
    repeats = 3 if args.quick else args.repeats
    compiled = device.type == "cuda" and not args.no_compile
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    rows = []
    for name in names:
        shape, cfg_name = latents[name]
        for batch in batches:
            big = torch.Size(shape).numel() * batch > 4e6 and device.type == "cpu"
            rows.append(bench(name, shape, cfg_name, batch, device, 1 if big else repeats, compiled))
            print_row(rows[-1], header=len(rows) == 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"whitening_{device.type}{'_quick' if args.quick else ''}.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nwritten {path}")


def print_row(r: dict, header: bool) -> None:
    if header:
        print("| latent | batch | ms | floor ms | ratio | kernels | syncs | ref ms | ref kernels | ref syncs | vs ref "
              "| max\\|dW\\| | ulp noise | ulp smooth | compiled ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    comp = f"{r['compiled_ms']:.2f} ({r['compile_s']:.0f} s compile)" if "compiled_ms" in r else "-"
    print(f"| {r['latent']} {r['shape']} | {r['batch']} | {r['ms']:.1f} | {r['floor_ms']:.1f} | {r['ratio']:.2f} "
          f"| {r['kernels']} | {r['syncs']} | {r['ref_ms']:.1f} | {r['ref_kernels']} | {r['ref_syncs']} "
          f"| {r['speedup']:.2f}x | {r['max_diff_vs_ref']:.1e} | {r['ulp_noise']:.1e} | {r['ulp_smooth']:.1e} | {comp} |",
          flush=True)


if __name__ == "__main__":
    main()
