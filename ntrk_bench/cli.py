"""The generation entry point: ``python run.py [group=option ...] [key=value ...]`` (or ``python -m ntrk_bench``).

Hydra composes the configuration from ``ntrk_bench/conf`` (shipped with the package), it is validated
before anything loads, and the generation stage runs. Errors that say what to fix or fetch are one line
and exit 2.
"""
import os
import sys

# transformers warns on every import that torchvision (deliberately absent on CPU installs) is missing
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from .generate import generate
    from .hub import MissingModel
    from .mini.net import MissingWeights
    from .schema import ConfigError, validate

    try:
        validate(cfg)  # before any model loads
        generate(cfg)
    except (ConfigError, MissingModel, MissingWeights) as err:  # one line naming what to fix or fetch
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
