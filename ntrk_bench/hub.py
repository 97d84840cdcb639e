"""Loading weights from the Hugging Face hub, offline by default, with one clear error when they are absent."""
from __future__ import annotations


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class MissingModel(RuntimeError):
    """Raised with one line naming the model to fetch when weights are not available offline."""


def missing(what: str, model_id: str, err: Exception, filename: str | None = None) -> MissingModel:
    fetch = f"hf download {model_id}" + (f" {filename}" if filename else "")
    return MissingModel(
        f"{what} weights not found for '{model_id}' (offline, or not downloaded). Fetch them on a machine with hub "
        f"access: `{fetch}` (then set HF_HOME, or point the config at the local copy); original error: "
        f"{type(err).__name__}")


def from_pretrained(cls, model_id: str, what: str, allow_download: bool = False, **kwargs):
    """``cls.from_pretrained`` from local files only, unless ``allow_download`` (compute nodes are usually
    offline, and a run should fail at once rather than wait on the hub)."""
    import warnings

    try:
        with warnings.catch_warnings():  # diffusers passes hf_hub_download a deprecated argument on every load
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
            return cls.from_pretrained(model_id, local_files_only=not allow_download, **kwargs)
    except (OSError, ValueError) as err:  # missing files, no network, gated repo
        raise missing(what, model_id, err) from None


def hub_file(repo_or_path: str, filename: str, what: str, allow_download: bool = False) -> str:
    """A single file: a local path as it is, else ``filename`` of hub repo ``repo_or_path``."""
    from pathlib import Path

    if Path(repo_or_path).is_file():
        return repo_or_path
    if Path(repo_or_path, filename).is_file():
        return str(Path(repo_or_path, filename))
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_or_path, filename, local_files_only=not allow_download)
    except Exception as err:  # hub errors are many (offline, not found, gated)
        raise missing(what, repo_or_path, err, filename) from None
