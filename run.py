"""Generation entry point: `python run.py method=ntrk steps=25 ...` (Hydra)."""
import os

# transformers warns on every import that torchvision (deliberately absent on CPU installs) is missing
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hydra  # noqa: E402
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    import sys

    from ntrk_bench.generate import generate
    from ntrk_bench.schema import ConfigError, validate
    from ntrk_bench.mini.net import MissingWeights
    from ntrk_bench.hub import MissingModel

    try:
        validate(cfg)  # before any model loads
        generate(cfg)
    except (ConfigError, MissingModel, MissingWeights) as err:  # one line naming what to fix or fetch, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
