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


def log_run(cfg: DictConfig, record: dict, scores: dict) -> None:
    """Log a finished run's scores and image grid; no-op unless ``logger=wandb``."""
    if cfg.logger.name != "wandb":
        return
    try:
        import wandb
    except ImportError:
        raise ImportError("logger=wandb needs wandb: pip install -e .[wandb]") from None
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # finish() would otherwise probe the network
    lg, out = cfg.logger, Path(cfg.out_dir)
    run = wandb.init(project=lg.project, entity=lg.entity, mode=lg.mode, group=lg.group, tags=list(lg.tags),
                     job_type=cfg.task.name, name=cfg.run_name, id=run_id(out), resume="allow", dir=str(out),
                     config=OmegaConf.to_container(cfg, resolve=True))
    try:
        run.summary.update({**scores, "nfe_per_sample": record["nfe_per_sample"], "wall_s": record["wall_s"],
                            "grad_nfe_per_sample": record["grad_nfe_per_sample"]})
        if (out / "samples.png").exists():
            run.log({"samples": wandb.Image(str(out / "samples.png"))})
    finally:
        run.finish()  # one run per job, also in a single-process multirun
