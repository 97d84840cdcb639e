"""Validation of a composed configuration before anything loads: types and ranges, one line naming the key.

Types come from the code that consumes each block - the run's top-level keys (:class:`Run`), the method's
class (named by ``method._target_``; its dataclass fields), ``FlowSDE`` and ``WhiteningConfig`` - and ranges
and choices from the same classes' ``limits`` (``ntrk_bench.limits``), so a new parameter is validated where
it is defined. A budget (``nfe``) is checked by asking the method's own cost model.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig, OmegaConf

from .limits import Limit, at_least, choice, collect, count, interval


class ConfigError(ValueError):
    """A bad configuration value: the message names the key, the value and what is allowed."""


@dataclass
class Run:
    steps: int = 25
    nfe: Optional[int] = None
    samples_per_prompt: int = 1
    seed: int = 0
    batch_size: Optional[int] = None
    progress: bool = True
    save_latents: bool = True
    evaluate: bool = True
    limits: ClassVar[dict] = {"steps": interval(1, 100_000), "nfe": count, "samples_per_prompt": count,
                              "seed": interval(0, 2 ** 63 // 1_000_003 - 1_000_000), "batch_size": count}


#: ranges of the whitening blocks (their types come from WhiteningConfig and BlockConfig)
WHITENING_LIMITS: dict[str, Limit] = {"input_norm": choice("rms", "none"),
                                      "level": Limit(lambda v: 0 < v < 1, "in (0, 1)"),
                                      "passes": count, "cycles": count, "repeats": count}


def _check_type(key: str, value, hint) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        if hint is Any or type(None) in args:
            return
        raise ConfigError(f"{key}: null is not allowed (expected {getattr(hint, '__name__', hint)})")
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        hints = [a for a in args if a is not type(None)]
        return _check_type(key, value, hints[0]) if len(hints) == 1 else None
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
          tuple: lambda v: isinstance(v, (list, tuple)), list: lambda v: isinstance(v, (list, tuple))}.get(origin or hint)
    if ok is not None and not ok(value):
        raise ConfigError(f"{key}={value!r}: expected {getattr(origin or hint, '__name__', hint)}")


def _check(prefix: str, values: dict, hints: dict[str, Any], limits: dict[str, Limit]) -> None:
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in hints:
            raise ConfigError(f"{key}: unknown key; allowed: {', '.join(sorted(hints))}")
        _check_type(key, v, hints[k])
        if k in limits and v is not None and not isinstance(v, (list, dict)) and not limits[k](v):
            raise ConfigError(f"{key}={v!r}: must be {limits[k].allowed}")


def fields_of(cls) -> dict[str, Any]:
    """Parameter -> type of a configured class: its dataclass init fields, else its constructor's arguments."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls.__init__ if inspect.isclass(cls) else cls)
    return {n: hints.get(n, Any) for n in inspect.signature(cls).parameters if n != "self"}


def locate(target: str):
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    import importlib

    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"no module in {target!r} can be imported")


def method_class(block: dict):
    """The class a method block names (``_target_``), or a ConfigError naming the key."""
    target = block.get("_target_")
    if not target:
        raise ConfigError(f"method._target_: missing (conf/method/{block.get('name', '<name>')}.yaml must name "
                          "the method's class)")
    try:
        return locate(target)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"method._target_={target!r}: cannot be imported ({type(err).__name__})") from None


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError (one line, naming the key) for any bad value of a composed run configuration."""
    from .method import BudgetError
    from .sde import FlowSDE
    from .whitening.operator import BlockConfig, WhiteningConfig

    top = fields_of(Run)
    _check("", {k: cfg.get(k) for k in top}, top, collect(Run))
    method = OmegaConf.to_container(cfg.method, resolve=True)
    cls = method_class(method)
    params = {k: v for k, v in method.items() if k not in ("_target_", "name")}
    _check("method.", params, fields_of(cls), collect(cls))
    _check("sde.", OmegaConf.to_container(cfg.sde, resolve=True), fields_of(FlowSDE), collect(FlowSDE))
    white = OmegaConf.to_container(cfg.whitening, resolve=True)
    blocks = white.pop("blocks", [])
    _check("whitening.", white, fields_of(WhiteningConfig), WHITENING_LIMITS)
    for i, block in enumerate(blocks):
        _check(f"whitening.blocks[{i}].", block, fields_of(BlockConfig), WHITENING_LIMITS)
    try:
        built = cls(**params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"method ({method.get('name')}): {err}") from None
    if cfg.get("nfe"):
        try:
            built.with_budget(cfg.nfe, cfg.steps)
        except (BudgetError, ValueError) as err:
            raise ConfigError(str(err)) from None
    check_task(cfg.task)
    check_weights_file(cfg.model)
    check_eval_envs(cfg.get("eval_envs") or {}, cfg.task)
    # out_dir may name Hydra's job overrides, which only a Hydra run can resolve (the CLI checks it then too)
    check_out_dir(OmegaConf.select(cfg, "out_dir", throw_on_resolution_failure=False))


def check_task(task) -> None:
    """The task's rewards exist and its prompts read: a non-empty list of strings ("" is the unconditional
    prompt)."""
    from .config import CONF_DIR
    from .generate import PROMPTS_DIR, load_prompts

    for key, names in (("task.target", [task.get("target")]), ("task.held_out", list(task.get("held_out") or []))):
        for name in names:
            if not isinstance(name, str) or not (CONF_DIR / "reward" / f"{name}.yaml").exists():
                options = ", ".join(sorted(p.stem for p in (CONF_DIR / "reward").glob("*.yaml")))
                raise ConfigError(f"{key}={name!r}: unknown reward; available: {options}")
    files = task.get("prompts_file")
    for name in ([files] if isinstance(files, str) else list(files or [])):
        path = Path(name) if Path(name).is_file() else PROMPTS_DIR / name
        if not path.is_file():
            raise ConfigError(f"task.prompts_file={name!r}: no such file (a path, or a name in {PROMPTS_DIR})")
    try:
        prompts = load_prompts(task)
    except UnicodeDecodeError:
        raise ConfigError(f"task.prompts_file={files!r}: not UTF-8 text") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"task.prompts_file={files!r}: not a list of {{prompt, ...}} records ({err})") from None
    key = "task.prompts_file" if files else "task.prompts"
    if not prompts:
        raise ConfigError(f"{key}: no prompts (an empty file or list)")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise ConfigError(f"{key}: every prompt must be a string, got {bad[0]!r}")


def check_weights_file(model) -> None:
    """A model's local ``weights`` file (the mini tier's checkpoint) exists, with its architecture sidecar
    (``.json``) beside it; hub ids are checked where they load (``ntrk_bench.hub``)."""
    weights = model.get("weights") if hasattr(model, "get") else None
    if not weights or not str(weights).endswith(".safetensors"):
        return
    path = Path(str(weights))
    if not path.is_file():
        raise ConfigError(f"model.weights={weights}: no such file (train it with `make mini-train`)")
    if not path.with_suffix(".json").is_file():
        raise ConfigError(f"model.weights={weights}: its architecture sidecar {path.with_suffix('.json').name} is "
                          "missing (written beside the weights by `make mini-train`)")


def check_eval_envs(envs, task) -> None:
    """Each ``eval_envs`` entry names an evaluator the task holds out and an interpreter that exists."""
    held = list(task.get("held_out") or [])
    for name, python in dict(envs).items():
        if name not in held:
            raise ConfigError(f"eval_envs.{name}: task {task.name} does not hold it out (held out: "
                              f"{', '.join(held) or 'none'})")
        check_interpreter(f"eval_envs.{name}", name, python)


def check_interpreter(key: str, evaluator: str, python) -> None:
    """``python`` (an evaluator's environment, given as ``key``) is an executable file."""
    if not (python and Path(str(python)).is_file() and os.access(str(python), os.X_OK)):
        raise ConfigError(f"{key}={python}: no such interpreter (build the environment, e.g. "
                          f"`make env-{evaluator}`, or point it at its bin/python)")


def check_out_dir(out_dir) -> None:
    """``out_dir`` can be created and written: its nearest existing ancestor is a writable folder."""
    if not out_dir:
        return
    path = Path(out_dir).absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        raise ConfigError(f"out_dir={out_dir!r}: {path} is a file, not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"out_dir={out_dir!r}: {path} is not writable")


__all__ = ["ConfigError", "Run", "fields_of", "method_class", "validate"]
