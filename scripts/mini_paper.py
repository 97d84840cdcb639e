"""The mini suite's evidence in one command (`make tables SUITE=mini`): run the mini sweeps (resumable:
finished items are skipped), evaluate, build results/mini/ tables and plots, and write docs/RESULTS.md.

    python scripts/mini_paper.py [--seeds 0,1,2,3,4] [--only mini_paper,mini_exact_tier,...] [--workers 2]

The two tasks' sweeps run side by side, one single-threaded worker each (the small models do not use two
threads well: two workers give ~1.8x the throughput of one on two cores). About 65 minutes here for the
default experiments, measured under load: 32 minutes for the learned tier's 70 main runs (1,400 samples),
~5 for the exact tier, 25 for the frontiers' 102 runs (1,020 samples), 2 for evaluation and the report.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the main tables (5 seeds) and the strength frontiers (3 seeds); mini_ablation and mini_gamma_auto: --only
EXPERIMENTS = ["mini_paper", "mini_exact_tier", "mini_frontier", "mini_frontier_dps", "mini_frontier_freedom",
               "mini_frontier_das", "mini_frontier_bon"]
TASKS = ["mini_aesthetic", "mini_text"]


def worker(task: str, experiments: list[str], seeds: str, root: str) -> subprocess.Popen:
    """One task's sweeps, one after another, in a single-threaded process chain."""
    runs = " && ".join(f"{sys.executable} run.py -m experiment={name} task={task} seed={seeds} progress=false "
                       f"results_root={root} > /dev/null" for name in experiments)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(["bash", "-c", f"set -e; {runs}"], cwd=ROOT, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--only", default=",".join(EXPERIMENTS))
    ap.add_argument("--root", default="results/runs")
    ap.add_argument("--out", default="results/mini")
    ap.add_argument("--workers", type=int, default=2, help="1: both tasks in one process, one after another")
    args = ap.parse_args()
    start, experiments = time.time(), args.only.split(",")
    print(f"sweeping {', '.join(experiments)} over seeds {args.seeds} for {', '.join(TASKS)} -> {args.root}",
          flush=True)
    groups = [TASKS] if args.workers == 1 else [[t] for t in TASKS]
    procs = [worker(",".join(g), experiments, args.seeds, args.root) for g in groups]
    if any(p.wait() for p in procs):
        sys.exit("error: a sweep failed (rerun to resume; finished items are kept)")
    print(f"sweeps done in {(time.time() - start) / 60:.1f} min", flush=True)
    subprocess.run([sys.executable, "-m", "ntrk_bench.evaluate", args.root, "--no-progress"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "ntrk_bench.tables", "--root", args.root, "--out", args.out,
                    "--suite", "mini"], cwd=ROOT, check=True)
    subprocess.run([sys.executable, "-m", "ntrk_bench.report", "--root", args.root, "--tables", args.out,
                    "--out", "docs/RESULTS.md"], cwd=ROOT, check=True)
    print(f"mini suite evidence rebuilt in {(time.time() - start) / 60:.1f} min: docs/RESULTS.md, {args.out}/")


if __name__ == "__main__":
    main()
