"""Where the Hydra configuration lives (shipped inside the package, ``ntrk_bench/conf``; the checkout's
top-level ``conf`` points there), loaders for single groups outside a Hydra run, and building a configured
object from its ``_target_``."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent / "conf"


def path_safe(name: str, limit: int = 120) -> str:
    """A command line's overrides as one folder name: no path separators, and a long one cut to ``limit``
    characters plus a hash of the whole (file systems refuse names over 255 bytes)."""
    import hashlib

    flat = str(name).replace("/", "\u2215")
    if len(flat.encode()) <= limit:
        return flat
    digest = hashlib.sha256(flat.encode()).hexdigest()[:12]
    return flat.encode()[:limit].decode(errors="ignore") + "..." + digest


OmegaConf.register_new_resolver("path_safe", path_safe, replace=True)  # used by conf/config.yaml's run_name

#: keys of a group option that label it rather than configure its object
LABELS = ("name", "family")


def load_group(group: str, name: str) -> DictConfig:
    """One option of a config group, e.g. ``load_group("whitening", "full")``."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise FileNotFoundError(f"no config {group}={name}; available: {', '.join(options)}")
    return OmegaConf.load(path)


def instantiate_block(block, drop=LABELS, **overrides):
    """The object a config block names by ``_target_``, built with its other keys (labels dropped) and
    ``overrides``. Errors that already say what to fix or fetch in one line come out unwrapped."""
    from hydra.utils import instantiate

    cfg = OmegaConf.to_container(block, resolve=True) if OmegaConf.is_config(block) else dict(block)
    if "_target_" not in cfg:
        raise KeyError(f"config block {cfg.get('name', '')!r} names no _target_ (the class or function to build)")
    for key in drop:
        if key not in overrides:
            cfg.pop(key, None)
    try:
        return instantiate(cfg, _convert_="all", **overrides)
    except Exception as err:  # Hydra wraps what the target raised; surface the one-line errors
        cause = err.__cause__
        if isinstance(cause, (ImportError, RuntimeError, KeyError, ValueError, OSError)):
            raise cause from None
        raise


def build_reward(name: str, latent_shape=None, **overrides):
    """A reward by its ``conf/reward/<name>.yaml``; keyword overrides replace config values (tests point the
    hub ids at local tiny models). A reward whose config asks for ``shape`` gets the model's latent shape."""
    try:
        cfg = load_group("reward", name)
    except FileNotFoundError as err:
        raise KeyError(f"unknown reward {name!r}: {err}") from None
    if "shape" in cfg.keys() and OmegaConf.is_missing(cfg, "shape") and "shape" not in overrides:
        if latent_shape is None:
            raise ValueError(f"reward {name!r} needs the model's latent shape")
        overrides["shape"] = tuple(latent_shape)
    return instantiate_block(cfg, drop=(), **overrides)


__all__ = ["CONF_DIR", "build_reward", "instantiate_block", "load_group"]
