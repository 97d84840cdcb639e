"""The evaluation stage: score saved outputs with held-out evaluators, one evaluator at a time.

    python -m ntrk_bench.evaluate [RUN_DIR_OR_ROOT ...] [--only NAME,...] [--env NAME=PYTHON ...]

Every finished run (a directory with ``record.json``) lists its task's held-out evaluators. For each
evaluator in turn - so only one evaluator model is in memory - every run that lacks ``eval/<name>.json``
is scored from its saved images (what a user would hand to an evaluator) and the file is written
atomically: a killed evaluation loses at most the run in flight, and a rerun skips finished files.

An evaluator whose package cannot share an environment with diffusers (ImageReward, VQAScore, VBench;
see ``rewards/external.py``) runs behind a subprocess boundary: ``--env vqascore=/envs/t2v/bin/python``
(or ``eval_envs`` in the Hydra config) runs this same module, as ``--worker``, in that environment, which
needs only this package installed (``pip install --no-deps -e .``) beside the evaluator's own.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence

from .io import load_image, write_json_atomic

EVAL_DIR = "eval"


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (holding a generation ``record.json``) at or under the given paths."""
    runs = set()
    for path in map(Path, paths):
        candidates = [path / "record.json"] if (path / "record.json").exists() else path.rglob("record.json")
        runs.update(p.parent for p in candidates if p.parent.name != "items" and p.parent.parent.name != "items")
    return sorted(r for r in runs if "config" in json.loads((r / "record.json").read_text()))


def evaluators_of(run: Path) -> list[str]:
    return list(json.loads((run / "record.json").read_text())["config"]["task"].get("held_out", []))


def pending(run: Path, name: str) -> bool:
    return not (run / EVAL_DIR / f"{name}.json").exists()


def score_run(run: Path, name: str, evaluator=None) -> dict:
    """Scores of one run by one evaluator: ``{metric: [per sample] or scalar}``, written to eval/<name>.json."""
    from rewards import build_evaluator

    record = json.loads((run / "record.json").read_text())
    items = [json.loads((run / "items" / d / "record.json").read_text()) for d in record["items"]]
    evaluator = evaluator or build_evaluator(name)
    files = [run / "items" / d / it["output"] for d, it in zip(record["items"], items)]
    prompts = [it["prompt"] for it in items]
    if getattr(evaluator, "reads_files", False):
        scores = evaluator.score_files(files, prompts)
    else:
        import torch

        scores = evaluator.evaluate(torch.stack([load_image(f) for f in files]), prompts,
                                    latents=[run / "items" / d / "latent.pt" for d in record["items"]])
    out = {"evaluator": name, "config_hash": record["config_hash"], "scores": scores}
    write_json_atomic(run / EVAL_DIR / f"{name}.json", out)
    return out


def evaluate(runs: Sequence[Path], only: Sequence[str] | None = None, envs: dict | None = None,
             progress: bool = True) -> None:
    """Every pending (run, evaluator) pair, evaluator by evaluator; isolated evaluators in their own env."""
    from tqdm.auto import tqdm

    from rewards import build_evaluator

    envs = dict(envs or {})
    names = sorted({n for r in runs for n in evaluators_of(r)})
    for name in names if not only else [n for n in names if n in only]:
        todo = [r for r in runs if name in evaluators_of(r) and pending(r, name)]
        if not todo:
            continue
        if envs.get(name):
            cmd = [envs[name], "-m", "ntrk_bench.evaluate", "--worker", name, *map(str, todo)]
            print(f"{name}: {len(todo)} runs in its own environment ({envs[name]})")
            subprocess.run(cmd, check=True)
            continue
        evaluator = build_evaluator(name)
        for run in tqdm(todo, desc=name, disable=not progress):
            score_run(run, name, evaluator)
        del evaluator


def summary(run: Path) -> dict[str, float]:
    """Mean of every per-sample metric (scalars as they are) over the run's finished evaluations."""
    out = {}
    for path in sorted((run / EVAL_DIR).glob("*.json")):
        for metric, v in json.loads(path.read_text())["scores"].items():
            out[metric] = sum(v) / len(v) if isinstance(v, list) else v
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    ap = argparse.ArgumentParser(prog="python -m ntrk_bench.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", default=["results/runs"], help="run directories or roots to search")
    ap.add_argument("--only", default="", help="comma-separated evaluators to run (default: every held-out one)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=PYTHON",
                    help="run evaluator NAME with the python of another environment")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one evaluator, in-process (subprocess side)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.worker:
        evaluator = None
        for run in map(Path, args.paths):
            evaluator = evaluator or __import__("rewards").build_evaluator(args.worker)
            score_run(run, args.worker, evaluator)
        return
    runs = find_runs(args.paths)
    if not runs:
        sys.exit(f"error: no finished runs under {', '.join(args.paths)} (run.py writes them)")
    envs = dict(e.split("=", 1) for e in args.env)
    only = [s for s in args.only.split(",") if s]
    try:
        evaluate(runs, only, envs, progress=not args.no_progress)
    except (ImportError, RuntimeError) as err:
        from .models.flux import MissingModel

        if isinstance(err, ImportError) or isinstance(err, MissingModel):
            sys.exit(f"error: {err}")
        raise
    for run in runs:
        s = summary(run)
        print(f"{run}: " + ", ".join(f"{k} {v:.4f}" for k, v in s.items()))


if __name__ == "__main__":
    main()
