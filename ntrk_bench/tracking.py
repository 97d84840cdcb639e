"""Optional experiment tracking (``logger=wandb``): offline by default, one group per sweep, and one run per
job whose id is derived from its output directory - a requeued or rerun job resumes its run
(``resume="allow"``) instead of creating a duplicate."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def run_id(out_dir: str | Path) -> str:
    """Deterministic wandb run id of a job: a hash of its (absolute) output directory."""
    return hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:16]


class NullLogger:
    """``logger=none``: no tracking."""

    def log_run(self, cfg: DictConfig, record, scores: dict) -> None:
        return None


class WandbLogger:
    """``logger=wandb``: one run per job, offline by default; wandb is imported when the logger is built, so a
    missing package is reported before any generation."""

    def __init__(self, project: str = "ntrk-bench", entity: str | None = None, mode: str = "offline",
                 group: str | None = None, tags=()):
        try:
            import wandb
        except ImportError:
            raise ImportError("logger=wandb needs wandb: pip install -e .[wandb]") from None
        self.wandb, self.project, self.entity, self.mode, self.group = wandb, project, entity, mode, group
        self.tags = list(tags)

    def log_run(self, cfg: DictConfig, record, scores: dict) -> None:
        """Log a finished run's scores and image grid."""
        wandb = self.wandb
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # finish() would otherwise probe the network
        out = Path(cfg.out_dir)
        run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, group=self.group, tags=self.tags,
                         job_type=cfg.task.name, name=cfg.run_name, id=run_id(out), resume="allow", dir=str(out),
                         config=OmegaConf.to_container(cfg, resolve=True))
        try:
            run.summary.update({**scores, "nfe_per_sample": record.nfe_per_sample, "wall_s": record.wall_s,
                                "grad_nfe_per_sample": record.grad_nfe_per_sample})
            if (out / "samples.png").exists():
                run.log({"samples": wandb.Image(str(out / "samples.png"))})
        finally:
            run.finish()  # one run per job, also in a single-process multirun
