"""The generation stage: sample a task's prompts with a method, score them, save images and a record.

Outputs are deterministic (no timestamps): ``<out_dir>/record.json`` (written atomically, last) and
``samples.png``. A rerun of the same configuration finds the record and skips the work.
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
    return hashlib.sha256(json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True).encode()).hexdigest()[:12]


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


def method_params(cfg: DictConfig) -> dict:
    """A method's constructor arguments from its config group; NTRK-based methods also get the operator."""
    params = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
    if cfg.method.name == "ntrk" or params.get("proposal") == "ntrk":
        params["whitening"] = cfg.whitening
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


def generate(cfg: DictConfig) -> dict:
    from rewards import build_reward

    out = Path(cfg.out_dir)
    record_path = out / "record.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        print(f"already done: {record_path} ({cfg.task.target} {record['scores'][cfg.task.target]:.4f})")
        return record
    from baselines import build_method
    from tqdm.auto import tqdm

    method = build_method(cfg.method.name, **method_params(cfg))
    model = counted(build_model(cfg.model))
    prompts = [p for p in load_prompts(cfg.task) for _ in range(cfg.samples_per_prompt)]
    target = build_reward(cfg.task.target, model.latent_shape)
    sde = FlowSDE(**cfg.sde)
    start, answers = time.perf_counter(), []
    for i, prompt in enumerate(tqdm(prompts, desc=cfg.method.name, disable=not cfg.progress)):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)  # one stream per item: reproducible alone
        answers.append(method(Problem(sde, model, prompt, target, cfg.steps, gen, cfg.task.condition_model)).x0)
    x0 = torch.cat(answers)
    wall = time.perf_counter() - start
    with torch.no_grad():
        pixels = model.decode(x0)
        per_sample = {cfg.task.target: target(pixels, prompts)}
        for name in cfg.task.held_out:
            r = build_reward(name, model.latent_shape)
            per_sample[name] = r(pixels, prompts)
            if hasattr(r, "accuracy"):
                per_sample[f"{name}_accuracy"] = r.accuracy(pixels, prompts)
        measures = quality(cfg.model.name, model, x0, pixels)
    n = len(prompts)
    record = {
        "method": cfg.method.name, "model": cfg.model.name, "task": cfg.task.name, "seed": cfg.seed,
        "steps": cfg.steps, "prompts": prompts, "target": cfg.task.target,
        "scores": {k: v.float().mean().item() for k, v in per_sample.items()} | measures,
        "per_sample": {k: v.float().tolist() for k, v in per_sample.items()},
        "nfe_per_sample": model.counter.nfe // n, "grad_nfe_per_sample": model.counter.grads // n,
        "wall_s": wall, "config_hash": config_hash(cfg), "config": OmegaConf.to_container(cfg, resolve=True),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_grid(pixels, out / "samples.png")
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, record_path)
    s = record["scores"]
    held = ", ".join(f"{k} {s[k]:.3f}" for k in s if k != cfg.task.target)
    print(f"{cfg.method.name} on {cfg.model.name}/{cfg.task.name}: target {cfg.task.target} {s[cfg.task.target]:.3f} | "
          f"held-out {held} | NFE {record['nfe_per_sample']} per sample, {wall:.1f} s\n"
          f"images: {out / 'samples.png'}  record: {record_path}")
    return record


def save_grid(pixels: torch.Tensor, path: Path, columns: int = 10) -> None:
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
    img.resize((img.width * 2, img.height * 2), Image.NEAREST).save(path)


__all__ = ["build_model", "generate", "quality", "save_grid"]
