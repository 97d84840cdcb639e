"""The mini suite's evidence in one command (`make tables SUITE=mini`): run the mini sweeps (resumable:
finished items are skipped), evaluate, build results/mini/ tables and plots, and write docs/RESULTS.md.

    python scripts/mini_paper.py [--seeds 0,1,2] [--only mini_paper,...]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ["mini_paper", "mini_frontier", "mini_frontier_dps", "mini_ablation", "mini_gamma_auto"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default=",".join(EXPERIMENTS))
    ap.add_argument("--root", default="results/runs")
    ap.add_argument("--out", default="results/mini")
    args = ap.parse_args()
    start = time.time()
    for name in args.only.split(","):
        t0 = time.time()
        cmd = [sys.executable, "run.py", "-m", f"experiment={name}", f"seed={args.seeds}", "progress=false",
               f"results_root={args.root}"]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        print(f"   {time.time() - t0:.0f} s", flush=True)
    subprocess.run([sys.executable, "-m", "ntrk_bench.evaluate", args.root, "--no-progress"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "ntrk_bench.tables", "--root", args.root, "--out", args.out,
                    "--suite", "mini"], cwd=ROOT, check=True)
    subprocess.run([sys.executable, "-m", "ntrk_bench.report", "--root", args.root, "--tables", args.out,
                    "--out", "docs/RESULTS.md"], cwd=ROOT, check=True)
    print(f"mini suite evidence rebuilt in {(time.time() - start) / 60:.1f} min: docs/RESULTS.md, {args.out}/")


if __name__ == "__main__":
    main()
