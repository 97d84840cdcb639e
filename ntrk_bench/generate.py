"""The generation stage: sample a task's prompts with a method, score them, save images and records.

Outputs are deterministic (no timestamps). Every item - one prompt with its own seed stream - writes
``items/<index>_s<seed>/{latent.pt, image.png, record.json}``, the record atomically and last; a rerun
skips items whose record exists, so a run killed at any point (SIGKILL included) loses at most the item
in flight and duplicates nothing. When all items exist, ``record.json`` (the run summary: target,
held-out and quality scores, measured NFE and wall time) and ``samples.png`` (a grid) are written.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .methods import Problem
from .models import counted, smooth_mixture
from .sde import FlowSDE

MINI_MODELS = ("mini", "mini_exact")


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that determines the results (not where they go or how progress is shown)."""
    data = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ("out_dir", "progress")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def check_same_config(path: Path, chash: str) -> None:
    """Refuse to mix results of different configurations in one directory."""
    found = json.loads(path.read_text()).get("config_hash")
    if found != chash:
        raise ValueError(f"{path} holds results of another configuration (config hash {found}, this run {chash}); "
                         "choose another out_dir or remove it")


def build_model(cfg: DictConfig):
    if cfg.name == "gmm":
        return smooth_mixture(tuple(cfg.latent_shape), cfg.components, cfg.component_std, cfg.seed)
    if cfg.name == "mini_exact":
        from .mini.exact import exact_mixture

        return exact_mixture(cfg.clusters_per_class, cfg.min_std)
    if cfg.name == "mini":
        from .mini.net import MiniLearnedFlow

        return MiniLearnedFlow(cfg.weights)
    if cfg.name == "flux":
        from .models.flux import FluxFlow

        return FluxFlow.from_pretrained(cfg.model_id, cfg.dtype, cfg.device, cfg.allow_download, height=cfg.height,
                                        width=cfg.width, guidance_scale=cfg.guidance_scale,
                                        max_sequence_length=cfg.max_sequence_length)
    raise ValueError(f"model {cfg.name!r} is not available yet; choose model=mini, mini_exact, gmm, flux_schnell or flux_dev")


def load_prompts(task: DictConfig) -> list[str]:
    """A task's prompts: inline (``prompts``) or one per line from a shipped file (``prompts_file``)."""
    if task.get("prompts_file"):
        text = (Path(__file__).parent / "data" / "prompts" / task.prompts_file).read_text()
        return [line.strip() for line in text.splitlines() if line.strip()]
    return list(task.prompts)


def method_params(cfg: DictConfig, for_record: bool = False) -> dict:
    """A method's constructor arguments from its config group; NTRK-based methods also get the operator."""
    params = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
    if cfg.method.name == "ntrk" or params.get("proposal") == "ntrk":
        params["whitening"] = OmegaConf.to_container(cfg.whitening, resolve=True) if for_record else cfg.whitening
    return params


def quality(model_name: str, model, x0: torch.Tensor, pixels: torch.Tensor) -> dict[str, float]:
    """Measures no target sees: exact log-density (mini: under the exact tier's mixture), FD, diversity."""
    if model_name not in MINI_MODELS:
        return {"log_density": model.log_prob(x0).mean().item()}
    from rewards.quality import diversity, fd_to_real

    from .mini.exact import exact_mixture

    out = {"log_density": exact_mixture().log_prob(x0).mean().item(), "diversity": diversity(pixels)}
    if len(pixels) >= 8:
        out["fd_to_real"] = fd_to_real(pixels)
    return out


def item_seed(cfg: DictConfig, index: int) -> int:
    return cfg.seed * 1_000_003 + index  # one stream per item: an item is reproducible on its own


def write_atomic(path: Path, write) -> None:
    """Write through a temporary file and rename, so a killed job never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def generate(cfg: DictConfig) -> dict:
    from rewards import build_reward

    out = Path(cfg.out_dir)
    summary_path = out / "record.json"
    chash = config_hash(cfg)
    if summary_path.exists():
        check_same_config(summary_path, chash)
        record = json.loads(summary_path.read_text())
        print(f"already done: {summary_path} ({cfg.task.target} {record['scores'][cfg.task.target]:.4f})")
        return record
    from baselines import build_method
    from tqdm.auto import tqdm

    prompts = [p for p in load_prompts(cfg.task) for _ in range(cfg.samples_per_prompt)]
    dirs = [out / "items" / f"{i:04d}_s{item_seed(cfg, i)}" for i in range(len(prompts))]
    for d in dirs:
        if (d / "record.json").exists():
            check_same_config(d / "record.json", chash)
    todo = [i for i, d in enumerate(dirs) if not (d / "record.json").exists()]
    model = counted(build_model(cfg.model))
    target = build_reward(cfg.task.target, model.latent_shape)
    if todo:
        method = build_method(cfg.method.name, **method_params(cfg))
        sde = FlowSDE(**cfg.sde)
        print(f"{len(todo)} of {len(prompts)} items to generate ({len(prompts) - len(todo)} already done) -> {out}")
        for i in tqdm(todo, desc=cfg.method.name, disable=not cfg.progress):
            before, start = model.counter.snapshot(), time.perf_counter()
            gen = torch.Generator().manual_seed(item_seed(cfg, i))
            res = method(Problem(sde, model, prompts[i], target, cfg.steps, gen, cfg.task.condition_model))
            wall, after = time.perf_counter() - start, model.counter.snapshot()
            d = dirs[i]
            d.mkdir(parents=True, exist_ok=True)
            x0 = res.x0.detach().cpu()
            write_atomic(d / "latent.pt", lambda p, x0=x0: torch.save(x0, p))
            with torch.no_grad():
                write_atomic(d / "image.png", lambda p, x0=x0: save_grid(model.decode(x0), p, fmt="PNG"))
            record = {"index": i, "prompt": prompts[i], "seed": item_seed(cfg, i), "method": cfg.method.name,
                      "target": cfg.task.target, "target_score": res.reward,
                      "nfe": after["nfe"] - before["nfe"], "grad_nfe": after["grad_nfe"] - before["grad_nfe"],
                      "wall_s": wall, "config_hash": chash, "method_config": method_params(cfg, for_record=True)}
            write_atomic(d / "record.json", lambda p, r=record: p.write_text(json.dumps(r, indent=1)))
    return summarise(cfg, model, target, prompts, dirs, summary_path)


def summarise(cfg: DictConfig, model, target, prompts: list[str], dirs: list[Path], summary_path: Path) -> dict:
    """Score the finished items with the target, held-out evaluators and quality measures; write the summary."""
    from rewards import build_reward

    items = [json.loads((d / "record.json").read_text()) for d in dirs]
    x0 = torch.cat([torch.load(d / "latent.pt") for d in dirs])
    with torch.no_grad():
        pixels = model.decode(x0)
        per_sample = {cfg.task.target: target(pixels, prompts)}
        for name in cfg.task.held_out:
            r = build_reward(name, model.latent_shape)
            per_sample[name] = r(pixels, prompts)
            if hasattr(r, "accuracy"):
                per_sample[f"{name}_accuracy"] = r.accuracy(pixels, prompts)
        measures = quality(cfg.model.name, model, x0, pixels)
    n, out = len(prompts), summary_path.parent
    record = {
        "method": cfg.method.name, "model": cfg.model.name, "task": cfg.task.name, "seed": cfg.seed,
        "steps": cfg.steps, "prompts": prompts, "target": cfg.task.target,
        "scores": {k: v.float().mean().item() for k, v in per_sample.items()} | measures,
        "per_sample": {k: v.float().tolist() for k, v in per_sample.items()},
        "nfe_per_sample": sum(r["nfe"] for r in items) // n, "grad_nfe_per_sample": sum(r["grad_nfe"] for r in items) // n,
        "wall_s": sum(r["wall_s"] for r in items), "config_hash": config_hash(cfg),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    save_grid(pixels, out / "samples.png")
    write_atomic(summary_path, lambda p: p.write_text(json.dumps(record, indent=1)))
    s = record["scores"]
    held = ", ".join(f"{k} {s[k]:.3f}" for k in s if k != cfg.task.target)
    print(f"{cfg.method.name} on {cfg.model.name}/{cfg.task.name}: target {cfg.task.target} {s[cfg.task.target]:.3f} | "
          f"held-out {held} | NFE {record['nfe_per_sample']} per sample, {record['wall_s']:.1f} s\n"
          f"images: {out / 'samples.png'}  record: {summary_path}")
    return record


def save_grid(pixels: torch.Tensor, path: Path, columns: int = 10, fmt: str | None = None) -> None:
    """Samples in a grid: grey or RGB images as they are; other tensors as their first channel, min-max scaled."""
    from PIL import Image

    x = pixels.detach().float()
    if x.shape[1] not in (1, 3):
        ch = x[:, :1]
        lo, hi = ch.amin(dim=(2, 3), keepdim=True), ch.amax(dim=(2, 3), keepdim=True)
        x = (ch - lo) / (hi - lo + 1e-8)
    n, c, h, w = x.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    grid = torch.ones(c, rows * h, cols * w)
    for i in range(n):
        grid[:, (i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = x[i]
    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)
    img.resize((img.width * 2, img.height * 2), Image.NEAREST).save(path, format=fmt)


__all__ = ["build_model", "generate", "quality", "save_grid"]
