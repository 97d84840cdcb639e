"""Where the Hydra configuration lives, and loaders for single groups outside a Hydra run."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def load_group(group: str, name: str) -> DictConfig:
    """One option of a config group, e.g. ``load_group("whitening", "full")``."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise FileNotFoundError(f"no config {group}={name}; available: {', '.join(options)}")
    return OmegaConf.load(path)
