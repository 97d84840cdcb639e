"""The generation entry point: ``python run.py [group=option ...] [key=value ...]`` (or ``python -m ntrk_bench``).

Hydra composes the configuration from ``ntrk_bench/conf`` (shipped with the package), it is validated
before anything loads, and the generation stage runs. Errors that say what to fix or fetch are one line
and exit 2. In a multirun (``-m``), a job that fails that way is recorded and the sweep goes on: every
valid job runs, and the sweep ends with one line per failed job and exit 2 (:class:`FailedJobs`).
"""
import os
import sys
from pathlib import Path

# transformers warns on every import that torchvision (deliberately absent on CPU installs) is missing
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hydra  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from . import config as _config  # noqa: E402,F401  (registers the resolvers conf/config.yaml uses)

FAILED = "failed_jobs.txt"  # in the sweep directory: one line per job that stopped with a one-line error


def one_line_errors() -> tuple:
    """The errors that say in one line what to fix or fetch (no traceback); ImportError: a missing optional
    package (e.g. ``logger=wandb`` without wandb), reported before any generation."""
    from .generate import MixedResults
    from .hub import MissingModel
    from .mini.net import MissingWeights
    from .sampling import NonFiniteReward
    from .schema import ConfigError

    return ConfigError, MissingModel, MissingWeights, NonFiniteReward, MixedResults, ImportError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .generate import generate
    from .schema import validate

    try:
        validate(cfg)  # before any model loads
        generate(cfg)
    except one_line_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            sys.exit(2)
        with open(Path(hc.sweep.dir) / FAILED, "a") as fh:  # the sweep goes on; FailedJobs reports it
            fh.write(f"{hc.job.override_dirname or hc.job.name}: {err}\n")


class EarlyChecks(Callback):
    """Before Hydra creates the run's folder: a bad value, a folder that cannot be created, or a logger whose
    package is missing, is one line, not a traceback and not an empty run folder."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        from .config import instantiate_block
        from .schema import ConfigError, check_out_dir, validate

        overridden = {o.split("=", 1)[0].lstrip("+~") for o in list(config.hydra.overrides.hydra)
                      + list(config.hydra.overrides.task)}
        if "hydra.run.dir" in overridden and "out_dir" not in overridden:
            print("error: hydra.run.dir moves only Hydra's own files; set out_dir=PATH instead (results and "
                  ".hydra/ both go there)", file=sys.stderr)
            sys.exit(2)
        try:
            HydraConfig.instance().set_config(config)  # out_dir may name the job's overrides
            validate(config)  # a bad value leaves no run folder behind (main validates again, for multiruns)
            check_out_dir(config.out_dir)
            instantiate_block(config.logger)
        except (ConfigError, ImportError) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)


class FailedJobs(Callback):
    """At the end of a multirun, one line per job that failed (and exit 2), after every valid job ran."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        (Path(config.hydra.sweep.dir) / FAILED).unlink(missing_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(config.hydra.sweep.dir) / FAILED
        if path.exists():
            lines = path.read_text().splitlines()
            print(f"{len(lines)} job(s) failed (the others ran):", file=sys.stderr)
            for line in lines:
                print(f"  {line}", file=sys.stderr)
            sys.exit(2)
