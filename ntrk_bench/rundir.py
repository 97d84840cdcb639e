"""The run directory: its layout and its records, written, found and read here and nowhere else.

    <run>/record.json                      RunRecord: the run summary (written when every item is done)
    <run>/samples.png                      grid of the items' images
    <run>/items/<index>_s<seed>/           one item (prompt, seed):
        latent.pt, image.png | video.mp4   the method's answer
        record.json                        ItemRecord (written atomically, last: it marks the item done)
    <run>/eval/<evaluator>.json            EvalRecord: held-out scores

Records are typed dataclasses stored as JSON; the generation, evaluation, tables and report stages use only
this module to touch them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .io import write_json_atomic

RECORD = "record.json"
ITEMS = "items"
EVAL = "eval"
GRID = "samples.png"
LATENT = "latent.pt"
CLAIM = ".claim"  # items/<name>/.claim: "<host> <pid>" of the process generating that item


@dataclass
class ItemRecord:
    index: int
    prompt: str
    seed: int
    method: str  # the conf/method option
    output: str  # file name of the image or video
    target: str
    target_score: float
    method_value: float  # what the method reported for its answer (its own target evaluation)
    nfe: int  # measured denoiser evaluations per sample
    grad_nfe: int  # ... of them differentiated
    wall_s: float
    config_hash: str
    method_config: dict
    diagnostics: dict = field(default_factory=dict)  # what the method recorded of its answer (e.g. NTRK's trace)


@dataclass
class RunRecord:
    method: str  # the conf/method option
    display_name: str  # the method's name in tables ("NTRK†", "BoN", ...)
    whitening: Optional[str]  # the whitening configuration the method applied (None: none)
    model: str
    family: str
    task: str
    experiment: str
    seed: int
    steps: int
    ledger: dict  # the paper-ledger row: method, augment, particles, steps, nfe
    prompts: list
    items: list  # item directory names
    target: str
    scores: dict  # metric -> mean over items
    per_sample: dict  # metric -> [per item]
    nfe_per_sample: int
    grad_nfe_per_sample: int
    wall_s: float
    config_hash: str
    config: dict = field(default_factory=dict)  # the resolved Hydra configuration
    target_conventions: dict = field(default_factory=dict)  # the target reward's conventions (preprocessing, ...)


@dataclass
class EvalRecord:
    evaluator: str
    config_hash: str
    scores: dict  # metric -> [per item] or a scalar


def _undefined_as_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _undefined_as_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_undefined_as_null(v) for v in value]
    return value


def _read(cls, path: Path):
    data = json.loads(Path(path).read_text())
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _write(path: Path, record) -> None:
    write_json_atomic(path, dataclasses.asdict(record))


class RunDir:
    """Paths and records of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ layout
    @property
    def summary_path(self) -> Path:
        return self.path / RECORD

    @property
    def grid_path(self) -> Path:
        return self.path / GRID

    def item_dir(self, name: str) -> Path:
        return self.path / ITEMS / name

    def item_record_path(self, name: str) -> Path:
        return self.item_dir(name) / RECORD

    def latent_path(self, name: str) -> Path:
        return self.item_dir(name) / LATENT

    def eval_path(self, evaluator: str) -> Path:
        return self.path / EVAL / f"{evaluator}.json"

    # ------------------------------------------------------------------ records
    def finished(self) -> bool:
        return self.summary_path.exists()

    def item_done(self, name: str) -> bool:
        return self.item_record_path(name).exists()

    def read_summary(self) -> RunRecord:
        return _read(RunRecord, self.summary_path)

    def read_summary_or_none(self) -> RunRecord | None:
        """The run summary, or None when it is absent or does not read back (then the run is not finished)."""
        try:
            return self.read_summary() if self.finished() else None
        except (OSError, ValueError, TypeError):
            return None

    def item_problem(self, name: str, needs_latent: bool = True) -> str | None:
        """What is wrong with a finished item's files (None: intact): its record reads back, its image or
        video exists, and its latent loads."""
        try:
            item = self.read_item(name)
        except (OSError, ValueError, TypeError) as err:
            return f"record.json does not read back ({type(err).__name__})"
        if not (self.item_dir(name) / item.output).is_file():
            return f"{item.output} is missing"
        if needs_latent:
            import torch

            try:
                torch.load(self.latent_path(name), weights_only=True)
            except Exception as err:  # truncated or garbled files raise many kinds of errors
                return f"{LATENT} does not load ({type(err).__name__})"
        return None

    def summary_problem(self, needs_latent: bool = True) -> str | None:
        """The first damaged item of a finished run (None: every item is intact)."""
        for name in self.read_summary().items:
            problem = self.item_problem(name, needs_latent)
            if problem:
                return f"item {name}: {problem}"
        return None

    def write_summary(self, record: RunRecord) -> None:
        _write(self.summary_path, record)

    def read_item(self, name: str) -> ItemRecord:
        return _read(ItemRecord, self.item_record_path(name))

    def write_item(self, name: str, record: ItemRecord) -> None:
        _write(self.item_record_path(name), record)

    def items(self) -> list[tuple[str, ItemRecord]]:
        """(name, record) of every item the summary lists, in order."""
        return [(name, self.read_item(name)) for name in self.read_summary().items]

    def outputs(self) -> list[Path]:
        return [self.item_dir(name) / it.output for name, it in self.items()]

    def latents(self) -> list[Path]:
        return [self.latent_path(name) for name in self.read_summary().items]

    # ------------------------------------------------------------------ claims (concurrent identical runs)
    def claim(self, name: str) -> bool:
        """Take item ``name`` for this process (False: a live process on this host, or any process on another
        host, holds it). A claim left by a dead process on this host is taken over."""
        path = self.item_dir(name) / CLAIM
        path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    host, pid = path.read_text().split()
                except (OSError, ValueError):  # being written, or vanished: let the next pass decide
                    return False
                if host != socket.gethostname() or _alive(int(pid)):
                    return f"{host} {pid}" == me
                path.unlink(missing_ok=True)  # its owner died: take it over
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            return True
        return False

    def release(self, name: str) -> None:
        (self.item_dir(name) / CLAIM).unlink(missing_ok=True)

    def has_eval(self, evaluator: str) -> bool:
        """An evaluation file that exists and reads back (a damaged one counts as missing)."""
        try:
            self.read_eval(evaluator)
            return True
        except (OSError, ValueError, TypeError):
            return False

    def read_eval(self, evaluator: str) -> EvalRecord:
        return _read(EvalRecord, self.eval_path(evaluator))

    def write_eval(self, record: EvalRecord) -> None:
        """Scores that are undefined (NaN, e.g. a Frechet distance of one sample) are stored as null."""
        _write(self.eval_path(record.evaluator), dataclasses.replace(record, scores=_undefined_as_null(record.scores)))

    def evals(self) -> list[EvalRecord]:
        """Every evaluation that reads back; a damaged file is named in one line and left out."""
        out = []
        for p in sorted((self.path / EVAL).glob("*.json")):
            try:
                out.append(_read(EvalRecord, p))
            except (OSError, ValueError, TypeError) as err:
                print(f"warning: {p} does not read back ({type(err).__name__}); rerun the evaluation stage")
        return out

    def held_out(self) -> list[str]:
        """The evaluators the run's task holds out."""
        return list(self.read_summary().config.get("task", {}).get("held_out", []))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_summary(path: Path) -> bool:
    """A run's summary record (not an item's)."""
    return path.name == RECORD and path.parent.name != ITEMS and path.parent.parent.name != ITEMS


def find_runs(paths: Iterable[str | Path]) -> list[RunDir]:
    """Finished run directories at or under the given paths, sorted."""
    runs = set()
    for path in map(Path, paths):
        candidates = [path / RECORD] if (path / RECORD).exists() else path.rglob(RECORD)
        runs.update(p.parent for p in candidates if is_summary(p))
    return [RunDir(r) for r in sorted(runs) if _is_run_summary(r / RECORD)]


def _is_run_summary(path: Path) -> bool:
    try:
        return "ledger" in json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"warning: {path} does not read back ({type(err).__name__}); rerun the run to rebuild it")
        return False


__all__ = ["EvalRecord", "ItemRecord", "RunDir", "RunRecord", "find_runs", "is_summary"]
