"""The evaluation stage: score saved outputs with held-out evaluators, one evaluator at a time.

    python -m ntrk_bench.evaluate [RUN_DIR_OR_ROOT ...] [--only NAME,...] [--env NAME=PYTHON ...]
                                  [--set NAME.KEY=VALUE ...]

Every finished run (a directory with ``record.json``) lists its task's held-out evaluators. For each
evaluator in turn - so only one evaluator model is in memory - every run that lacks ``eval/<name>.json``
is scored from its saved images (what a user would hand to an evaluator) and the file is written
atomically: a killed evaluation loses at most the run in flight, and a rerun skips finished files.

An evaluator whose package cannot share an environment with diffusers (ImageReward, VQAScore, VBench;
see ``rewards/external.py``) runs behind a subprocess boundary: ``--env vqascore=/envs/t2v/bin/python``
(or ``eval_envs`` in the Hydra config) runs this same module, as ``--worker``, in that environment, which
needs only this package installed (``pip install --no-deps -e .``) beside the evaluator's own.

``--set imagereward.checkpoint=/ckpt/ImageReward.pt`` replaces a value of ``conf/reward/<NAME>.yaml`` (YAML
syntax: numbers, lists, mappings). An evaluator whose weights (or package) are missing is skipped, writing
nothing; the others run, and the stage then exits with one line per missing weight naming how to fetch it
(``scripts/prefetch_weights.py`` lists and fetches every weight of an experiment).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from .hub import MissingModel
from .io import load_output
from .rundir import EvalRecord, RunDir, find_runs
from .schema import ConfigError, check_interpreter

#: exit status of a worker whose evaluator could not be built (missing weights or package), lines in --missing-to
WORKER_MISSING = 3


class RewardEvaluator:
    """A reward as a held-out evaluator: per-sample scores (and accuracy where the reward has one), in batches."""

    def __init__(self, name: str, reward, batch_size: int = 16):
        self.name, self.reward, self.batch_size = name, reward, batch_size

    def evaluate(self, pixels, prompts: Sequence[str], latents=None) -> dict:
        import torch

        out: dict[str, list] = {}
        with torch.no_grad():
            for i in range(0, len(pixels), self.batch_size):
                x, p = pixels[i:i + self.batch_size], list(prompts[i:i + self.batch_size])
                out.setdefault(self.name, []).extend(self.reward(x, p).float().tolist())
                if hasattr(self.reward, "accuracy"):
                    out.setdefault(f"{self.name}_accuracy", []).extend(self.reward.accuracy(x, p).float().tolist())
        return out


def build_evaluator(name: str, **overrides):
    """The evaluator ``conf/reward/<name>.yaml`` builds; a plain reward is wrapped as a per-sample scorer."""
    from .config import build_reward

    r = build_reward(name, **overrides)
    return r if hasattr(r, "evaluate") or getattr(r, "reads_files", False) else RewardEvaluator(name, r)


def _runs(runs: Iterable) -> list[RunDir]:
    return [r if isinstance(r, RunDir) else RunDir(r) for r in runs]


def score_run(run: RunDir, name: str, evaluator=None) -> EvalRecord:
    """Scores of one run by one evaluator: ``{metric: [per sample] or scalar}``, written to eval/<name>.json."""
    run = _runs([run])[0]
    summary, items = run.read_summary(), run.items()
    evaluator = evaluator or build_evaluator(name)
    files = [run.item_dir(n) / it.output for n, it in items]
    prompts = [it.prompt for _, it in items]
    if getattr(evaluator, "reads_files", False):
        scores = evaluator.score_files(files, prompts)
    else:
        import torch

        scores = evaluator.evaluate(torch.stack([load_output(f) for f in files]), prompts, latents=run.latents())
    record = EvalRecord(evaluator=name, config_hash=summary.config_hash, scores=scores)
    run.write_eval(record)
    return record


def evaluate(runs: Sequence, only: Sequence[str] | None = None, envs: dict | None = None,
             progress: bool = True, overrides: dict | None = None) -> None:
    """Every pending (run, evaluator) pair, evaluator by evaluator; isolated evaluators in their own env.
    ``overrides``: {evaluator: {config key: value}}. Evaluators that cannot be built (weights or package
    missing) write nothing; the others run, then MissingModel lists what is missing, one line per weight."""
    from tqdm.auto import tqdm

    runs, envs, overrides = _runs(runs), dict(envs or {}), dict(overrides or {})
    names = sorted({n for r in runs for n in r.held_out()})
    missing: list[str] = []
    for name in names if not only else [n for n in names if n in only]:
        todo = [r for r in runs if name in r.held_out() and not r.has_eval(name)]
        if not todo:
            continue
        if envs.get(name):
            missing += run_worker(envs[name], name, todo, overrides.get(name, {}))
            continue
        for task_args, runs_ in by_task_records(name, todo).items():
            try:
                evaluator = build_evaluator(name, **{**dict(task_args), **overrides.get(name, {})})
            except (MissingModel, ImportError) as err:
                missing += [f"{name}: {line}" for line in str(err).splitlines()]
                break
            for run in tqdm(runs_, desc=name, disable=not progress):
                score_run(run, name, evaluator)
            del evaluator
    if missing:
        raise MissingModel("\n".join(missing))


def run_worker(python: str, name: str, runs: Sequence[RunDir], overrides: dict) -> list[str]:
    """Evaluator ``name`` over ``runs`` with the python of its own environment; the lines naming what that
    environment lacks (weights, package), empty when it ran."""
    import json

    sets = [f"--set={name}.{k}={json.dumps(v)}" for k, v in overrides.items()]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "missing.txt")
        cmd = [python, "-m", "ntrk_bench.evaluate", "--worker", name, f"--missing-to={report}", *sets,
               *(str(r.path) for r in runs)]
        print(f"{name}: {len(runs)} runs in its own environment ({python})")
        if not (Path(python).is_file() and os.access(python, os.X_OK)):
            raise MissingModel(f"--env {name}={python}: no such interpreter (build the environment, e.g. "
                               f"`make env-{name}`, or point --env at its bin/python)")
        done = subprocess.run(cmd)
        if done.returncode == WORKER_MISSING and report.exists():
            return [f"{name}: {line}" for line in report.read_text().splitlines()]
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, cmd)
    return []


def parse_sets(sets: Sequence[str]) -> dict[str, dict]:
    """``["imagereward.batch_size=2", ...]`` -> {"imagereward": {"batch_size": 2}}; values are YAML."""
    import yaml

    out: dict[str, dict] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        name, dot, field = key.partition(".")
        if not (sep and dot and name and field):
            raise SystemExit(f"error: --set {item!r}: expected NAME.KEY=VALUE")
        out.setdefault(name, {})[field] = yaml.safe_load(value)
    return out


def by_task_records(name: str, runs: Sequence[RunDir]) -> dict[tuple, list[RunDir]]:
    """Runs grouped by what an evaluator that reads prompt records (``prompts_file``: CountGD's counts, the VLM
    questions) must be given: their task's own prompts file."""
    from .config import load_group

    reads_records = "prompts_file" in load_group("reward", name)
    groups: dict[tuple, list[RunDir]] = {}
    for run in runs:
        files = run.read_summary().config.get("task", {}).get("prompts_file") if reads_records else None
        key = (("prompts_file", files if isinstance(files, str) else tuple(files)),) if files else ()
        groups.setdefault(key, []).append(run)
    return groups


def summary(run) -> dict[str, float]:
    """Mean of every per-sample metric (scalars as they are) over the run's finished evaluations."""
    out = {}
    for rec in _runs([run])[0].evals():
        for metric, v in rec.scores.items():
            defined = [x for x in (v if isinstance(v, list) else [v]) if x is not None]  # null: undefined (NaN)
            out[metric] = sum(defined) / len(defined) if defined else float("nan")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    ap = argparse.ArgumentParser(prog="python -m ntrk_bench.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", default=["results/runs"], help="run directories or roots to search")
    ap.add_argument("--only", default="", help="comma-separated evaluators to run (default: every held-out one)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=PYTHON",
                    help="run evaluator NAME with the python of another environment")
    ap.add_argument("--set", action="append", default=[], metavar="NAME.KEY=VALUE", dest="sets",
                    help="replace a value of evaluator NAME's conf/reward/NAME.yaml (YAML syntax)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one evaluator, in-process (subprocess side)
    ap.add_argument("--missing-to", default=None, help=argparse.SUPPRESS)  # worker: where to list what is missing
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    overrides = parse_sets(args.sets)
    if args.worker:
        runs = _runs(args.paths)
        groups = by_task_records(args.worker, runs)
        for task_args, runs_ in groups.items():
            try:
                evaluator = build_evaluator(args.worker, **{**dict(task_args), **overrides.get(args.worker, {})})
            except (MissingModel, ImportError) as err:
                if not args.missing_to:
                    sys.exit(f"error: {err}")
                Path(args.missing_to).write_text(str(err) + "\n")  # the parent reports it
                sys.exit(WORKER_MISSING)
            for run in runs_:
                score_run(run, args.worker, evaluator)
        return
    runs, damaged = intact_runs(find_runs(args.paths))
    if not runs and not damaged:
        sys.exit(f"error: no finished runs under {', '.join(args.paths)} (run.py writes them)")
    bad = [e for e in args.env if "=" not in e or not e.split("=", 1)[1]]
    if bad:
        sys.exit(f"error: --env {bad[0]}: expected NAME=PYTHON (an evaluator and its environment's interpreter)")
    envs = dict(e.split("=", 1) for e in args.env)
    only = [s for s in args.only.split(",") if s]
    held = sorted({n for r in runs for n in r.held_out()})
    for flag, names in (("--only", only), ("--env", list(envs))):
        unknown = [n for n in names if n not in held]
        if unknown:
            sys.exit(f"error: {flag} {','.join(unknown)}: no run under {', '.join(args.paths)} holds it out "
                     f"(held out there: {', '.join(held) or 'none'})")
    for name, python in envs.items():
        try:
            check_interpreter(f"--env {name}", name, python)
        except ConfigError as err:
            sys.exit(f"error: {err}")
    try:
        evaluate(runs, only, envs, progress=not args.no_progress, overrides=overrides)
    except MissingModel as err:
        lines = str(err).splitlines()
        names = " ".join(f"reward={n}" for n in dict.fromkeys(line.split(":", 1)[0] for line in lines))
        sys.exit("\n".join(f"error: {line}" for line in lines) + "\nevery weight these evaluators need, "
                 f"missing or not: python scripts/prefetch_weights.py --check {names}")
    for run in runs:
        s = summary(run)
        print(f"{run.path}: " + ", ".join(f"{k} {v:.4f}" for k, v in s.items()))
    if damaged:
        sys.exit(1)


def intact_runs(runs: Sequence[RunDir]) -> tuple[list[RunDir], list[RunDir]]:
    """Runs whose items all read back, and the others - each named in one line (never scored: a damaged
    item is regenerated by rerunning run.py, which checks every item it reuses)."""
    good, damaged = [], []
    for run in runs:
        problem = run.summary_problem(needs_latent=bool(run.read_summary().config.get("save_latents", False)))
        if problem:
            print(f"error: {run.path}: {problem}; rerun run.py with the same arguments to regenerate it",
                  file=sys.stderr)
        (damaged if problem else good).append(run)
    return good, damaged


if __name__ == "__main__":
    main()
