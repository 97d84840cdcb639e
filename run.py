"""Generation entry point: `python run.py method=ntrk steps=25 ...` (Hydra)."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from ntrk_bench.generate import generate

    generate(cfg)


if __name__ == "__main__":
    main()
