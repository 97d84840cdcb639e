"""Official checkpoints onto transformers modules: a key-map table, a strict load, and one checkpoint reader.

A port of an official reward model keeps the official checkpoint file and maps its keys onto transformers
classes by a small table of ``KeyRule``s (the approach of transformers' own ``convert_*_to_hf.py`` scripts, as
regular expressions). Every official key must match a rule, every module weight must receive a tensor, and
each failure is a ``KeyError`` naming the key: a renamed or missing key never loads silently.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ntrk_bench.hub import MissingModel, hub_file

# a converter: one official tensor -> the tensor, or the tensors, of its target(s)
Converter = Callable[[torch.Tensor], "torch.Tensor | Sequence[torch.Tensor]"]

# The file names transformers saves weights under (transformers.utils SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME,
# WEIGHTS_INDEX_NAME, WEIGHTS_NAME), in the order ``from_pretrained`` prefers them.
TRANSFORMERS_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                             "pytorch_model.bin")


class KeyRule(NamedTuple):
    """``pattern`` (a regex the whole official key must match) -> ``target``: an ``re.Match.expand`` template,
    a tuple of templates (one per tensor ``convert`` returns), or None (the key is read and dropped).
    A table may write rules as plain tuples."""
    pattern: str
    target: str | tuple[str, ...] | None
    convert: Converter | None = None


def split_qkv(packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A packed q|k|v projection (``nn.MultiheadAttention.in_proj_*``, Swin-Transformer's ``attn.qkv``) stacks the
    three along the output dimension."""
    return tuple(packed.chunk(3, dim=0))


def remap_state_dict(state: Mapping[str, torch.Tensor], rules: Sequence[KeyRule | tuple],
                     what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Official state dict -> transformers state dict by the first rule whose pattern matches the whole key.
    A key that no rule matches, or two keys landing on one target, raise a KeyError naming the key."""
    rules = [KeyRule(*rule) for rule in rules]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match, rule = next(((m, r) for r in rules if (m := re.fullmatch(r.pattern, key))), (None, None))
        if match is None:
            raise KeyError(f"{what} key {key!r} matches no rule of the key map (renamed or unexpected key)")
        if rule.target is None:
            continue
        targets = (rule.target,) if isinstance(rule.target, str) else rule.target
        values = rule.convert(value) if rule.convert else value
        values = (values,) if isinstance(values, torch.Tensor) else values
        for target, v in zip(targets, values, strict=True):
            name = match.expand(target)
            if name in out:
                raise KeyError(f"{what} key {key!r} maps onto {name!r}, which another key already filled")
            out[name] = v
    return out


def _some(keys: list[str], shown: int = 8) -> str:
    """Up to ``shown`` quoted keys, and how many more."""
    return ", ".join(map(repr, keys[:shown])) + (f", ... ({len(keys) - shown} more)" if len(keys) > shown else "")


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, dtype: torch.dtype | None = None,
                assign: bool = False, keep_init: tuple[str, ...] = ()) -> nn.Module:
    """Load every parameter and persistent buffer of ``module`` from ``state`` (a mapped state dict), floats
    cast to ``dtype`` if given; ``assign`` for a module built on the meta device. Module keys starting with
    one of ``keep_init`` may stay as initialised. A missing or unexpected key raises a KeyError naming it, a
    wrong shape torch's RuntimeError."""
    expected, given = set(module.state_dict()), set(state)
    missing = sorted(k for k in expected - given if not k.startswith(keep_init))
    unexpected = sorted(given - expected)
    if missing or unexpected:
        problems = [f"{kind} {_some(keys)}" for kind, keys in (("missing", missing), ("unexpected", unexpected))
                    if keys]
        raise KeyError(f"{what} does not fit {type(module).__name__} after the key map: {'; '.join(problems)}")
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(state, strict=not keep_init, assign=assign)
    return module


def read_weight_file(path: str) -> dict[str, torch.Tensor]:
    """The tensors of one file: safetensors, or a pickled ``.pt``/``.pth``/``.bin`` (torch's restricted
    unpickler) that is the state dict or holds it under ``state_dict`` (BLIP, open_clip training) or ``model``
    (DETR-style training, GroundingDINO/CountGD)."""
    from huggingface_hub import load_state_dict_from_file

    ckpt = load_state_dict_from_file(path, map_location="cpu", weights_only=True, safe=False)
    for entry in ("state_dict", "model"):
        if isinstance(ckpt.get(entry), Mapping):
            return dict(ckpt[entry])
    return ckpt


def read_state_dict(repo_or_path: str, filenames: str | Sequence[str] = TRANSFORMERS_WEIGHT_FILES,
                    what: str = "checkpoint", allow_download: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors from a file path, or from the first of ``filenames`` found in a local folder or
    hub repo (``ntrk_bench.hub.hub_file``); a ``*.index.json`` (transformers' sharded layout) reads every
    shard of its ``weight_map``. Nothing found raises ``MissingModel`` naming what to fetch."""
    names = [filenames] if isinstance(filenames, str) else list(filenames)
    for name in names:
        try:
            path = hub_file(repo_or_path, name, what, allow_download)
            if not path.endswith(".index.json"):
                return read_weight_file(path)
            shards = sorted(set(json.loads(Path(path).read_text())["weight_map"].values()))
            folder = str(Path(path).parent) if Path(repo_or_path).is_file() else repo_or_path
            paths = [hub_file(folder, shard, what, allow_download) for shard in shards]
        except MissingModel:
            if len(names) == 1:
                raise
            continue
        return {k: v for p in paths for k, v in read_weight_file(p).items()}
    raise MissingModel(f"{what} weights not found for '{repo_or_path}' (none of {', '.join(names)}). Fetch them on "
                       f"a machine with hub access: `hf download {repo_or_path}`")


__all__ = ["KeyRule", "TRANSFORMERS_WEIGHT_FILES", "load_strict", "read_state_dict", "read_weight_file",
           "remap_state_dict", "split_qkv"]
