"""The generation stage: sample a task's prompts with a method, score them, save images and records.

Outputs are deterministic (no timestamps). Every item - one prompt with its own seed stream - writes
``items/<index>_s<seed>/{latent.pt, image.png (video.mp4), record.json}``, the record atomically and last;
a rerun skips items whose record exists, so a run killed at any point (SIGKILL included) loses at most
the item in flight and duplicates nothing. When all items exist, ``record.json`` (the run summary:
target scores, measured NFE and wall time, the paper-ledger row, the resolved config) and ``samples.png``
(a grid) are written. Held-out evaluators are the evaluation stage's (``ntrk_bench/evaluate.py``); with
``evaluate=true`` (the mini tasks' default) it runs right after generation.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .io import load_image, save_grid, save_image, save_video, write_atomic, write_json_atomic
from .methods import Problem, uses_whitening
from .models import counted, smooth_mixture
from .sde import FlowSDE


#: keys that say where results go, how they are shown or tracked - not what they are. Runs shared by several
#: experiments (Table 2's rows are Table 14's) land in one directory and are computed once.
NOT_HASHED = ("out_dir", "run_name", "results_root", "progress", "evaluate", "eval_envs", "experiment_name", "logger",
              "save_latents")


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that determines the results (not where they go or how progress is shown)."""
    data = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NOT_HASHED}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def check_same_config(path: Path, chash: str) -> None:
    """Refuse to mix results of different configurations in one directory."""
    found = json.loads(path.read_text()).get("config_hash")
    if found != chash:
        raise ValueError(f"{path} holds results of another configuration (config hash {found}, this run {chash}); "
                         "choose another out_dir or remove it")


def build_model(cfg: DictConfig):
    """The flow model of a ``conf/model`` option, by family."""
    family = cfg.get("family", cfg.name)
    if family == "gmm":
        return smooth_mixture(tuple(cfg.latent_shape), cfg.components, cfg.component_std, cfg.seed)
    if family == "mini_exact":
        from .mini.exact import exact_mixture

        return exact_mixture(cfg.clusters_per_class, cfg.min_std)
    if family == "mini":
        from .mini.net import MiniLearnedFlow

        return MiniLearnedFlow(cfg.weights)
    if family == "flux":
        from .models.flux import FluxFlow

        return FluxFlow.from_pretrained(cfg.model_id, cfg.dtype, cfg.device, cfg.allow_download,
                                        transformer_id=cfg.get("transformer_id"), height=cfg.height, width=cfg.width,
                                        guidance_scale=cfg.guidance_scale, max_sequence_length=cfg.max_sequence_length)
    if family in ("zimage", "wan"):
        from .models import diffusers_flows

        return diffusers_flows.from_config(cfg)
    raise ValueError(f"model family {family!r} is unknown; see conf/model/")


PROMPTS_DIR = Path(__file__).parent / "data" / "prompts"


def load_prompts(task: DictConfig) -> list[str]:
    """A task's prompts: inline (``prompts``) or from shipped or user files (``prompts_file``: one name or a
    list; ``.txt`` one prompt per line, ``.json`` a list of ``{prompt, ...}`` records)."""
    files = task.get("prompts_file")
    if not files:
        return list(task.prompts)
    prompts = []
    for name in [files] if isinstance(files, str) else files:
        path = Path(name) if Path(name).is_file() else PROMPTS_DIR / name
        if path.suffix == ".json":
            prompts += [entry["prompt"] for entry in json.loads(path.read_text())]
        else:
            prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts


def method_params(cfg: DictConfig, for_record: bool = False) -> dict:
    """A method's constructor arguments: its config group, the budget (``nfe``) turned into particles
    (baselines/budgets.py), and the whitening operator for NTRK-based methods."""
    from baselines.budgets import budget_params

    params = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
    if cfg.get("nfe"):
        params |= budget_params(cfg.method.name, cfg.nfe, cfg.steps, params)
    if uses_whitening({"name": cfg.method.name, **params}):
        params["whitening"] = OmegaConf.to_container(cfg.whitening, resolve=True) if for_record else cfg.whitening
    return params


def item_seed(cfg: DictConfig, index: int) -> int:
    return cfg.seed * 1_000_003 + index  # one stream per item: an item is reproducible on its own


def item_dirs(cfg: DictConfig, prompts: list[str]) -> list[str]:
    return [f"{i:04d}_s{item_seed(cfg, i)}" for i in range(len(prompts))]


def save_output(cfg: DictConfig, pixels: torch.Tensor, d: Path) -> str:
    """The item's image (PNG) or video (MP4, at the model's fps); returns the file name."""
    if pixels.dim() == 4:  # (C, F, H, W)
        save_video(pixels, d / "video.mp4", cfg.model.get("fps", 16))
        return "video.mp4"
    save_image(pixels, d / "image.png")
    return "image.png"


def generate(cfg: DictConfig) -> dict:
    from rewards import build_reward

    from baselines.budgets import ledger_row

    out = Path(cfg.out_dir)
    summary_path = out / "record.json"
    chash = config_hash(cfg)
    if summary_path.exists():
        check_same_config(summary_path, chash)
        record = json.loads(summary_path.read_text())
        print(f"already done: {summary_path} ({cfg.task.target} {record['scores'][cfg.task.target]:.4f})")
    else:
        record = generate_items(cfg, out, chash, build_reward, ledger_row)
    scores = dict(record["scores"])
    if cfg.get("evaluate"):
        from . import evaluate

        evaluate.evaluate([out], envs=dict(cfg.get("eval_envs") or {}), progress=cfg.progress)
        scores |= evaluate.summary(out)
        print(f"{cfg.method.name} on {cfg.model.name}/{cfg.task.name}: " +
              ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    from .tracking import log_run

    log_run(cfg, record, scores)
    return record


def generate_items(cfg: DictConfig, out: Path, chash: str, build_reward, ledger_row) -> dict:
    from baselines import build_method
    from tqdm.auto import tqdm

    prompts = [p for p in load_prompts(cfg.task) for _ in range(cfg.samples_per_prompt)]
    dirs = [out / "items" / name for name in item_dirs(cfg, prompts)]
    for d in dirs:
        if (d / "record.json").exists():
            check_same_config(d / "record.json", chash)
    todo = [i for i, d in enumerate(dirs) if not (d / "record.json").exists()]
    model = counted(build_model(cfg.model))
    target = build_reward(cfg.task.target, model.latent_shape, **dict(cfg.task.get("target_args") or {}))
    params = method_params(cfg, for_record=True)
    if todo:
        method = build_method(cfg.method.name, **method_params(cfg))
        sde = FlowSDE(**cfg.sde)
        print(f"{len(todo)} of {len(prompts)} items to generate ({len(prompts) - len(todo)} already done) -> {out}")
        for i in tqdm(todo, desc=cfg.method.name, disable=not cfg.progress):
            before, start = model.counter.snapshot(), time.perf_counter()
            gen = torch.Generator().manual_seed(item_seed(cfg, i))
            res = method(Problem(sde, model, prompts[i], target, cfg.steps, gen, cfg.task.condition_model))
            wall, after = time.perf_counter() - start, model.counter.snapshot()
            nfe = after["nfe"] - before["nfe"]
            if cfg.get("nfe") and nfe != cfg.nfe:  # the budget arithmetic and the counter must agree
                raise RuntimeError(f"{cfg.method.name} spent {nfe} NFE on item {i}, not the budgeted {cfg.nfe}")
            d, x0 = dirs[i], res.x0.detach()
            with torch.no_grad():
                pixels = model.decode(x0)
                score = float(target(pixels, [prompts[i]])[0])
            if cfg.save_latents:
                write_atomic(d / "latent.pt", lambda p, x0=x0: torch.save(x0.cpu(), p))
            record = {"index": i, "prompt": prompts[i], "seed": item_seed(cfg, i), "method": cfg.method.name,
                      "output": save_output(cfg, pixels[0].cpu(), d), "target": cfg.task.target,
                      "target_score": score, "method_value": res.reward, "nfe": nfe,
                      "grad_nfe": after["grad_nfe"] - before["grad_nfe"], "wall_s": wall, "config_hash": chash,
                      "method_config": params}
            write_json_atomic(d / "record.json", record)  # last: its presence marks the item done
    return summarise(cfg, prompts, dirs, out / "record.json", lambda nfe: ledger_row(cfg.method.name, params, cfg.steps, nfe))


def summarise(cfg: DictConfig, prompts: list[str], dirs: list[Path], summary_path: Path, ledger) -> dict:
    """The run's record from its finished items: target scores, measured NFE and wall time, the ledger row."""
    items = [json.loads((d / "record.json").read_text()) for d in dirs]
    n, out = len(prompts), summary_path.parent
    target = [it["target_score"] for it in items]
    row = ledger(cfg.get("nfe") or sum(it["nfe"] for it in items) // n)
    record = {
        "method": cfg.method.name, "model": cfg.model.name, "family": cfg.model.get("family", cfg.model.name),
        "task": cfg.task.name, "experiment": cfg.experiment_name, "seed": cfg.seed, "steps": cfg.steps,
        "ledger": {"method": row.method, "augment": row.augment, "particles": row.particles,
                   "steps": str(row.steps), "nfe": row.nfe},
        "prompts": prompts, "items": [d.name for d in dirs], "target": cfg.task.target,
        "scores": {cfg.task.target: sum(target) / n},
        "per_sample": {cfg.task.target: target, "nfe": [it["nfe"] for it in items],
                       "grad_nfe": [it["grad_nfe"] for it in items], "wall_s": [it["wall_s"] for it in items]},
        "nfe_per_sample": sum(it["nfe"] for it in items) // n,
        "grad_nfe_per_sample": sum(it["grad_nfe"] for it in items) // n,
        "wall_s": sum(it["wall_s"] for it in items), "config_hash": config_hash(cfg),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if all(it["output"].endswith(".png") for it in items):
        save_grid(torch.stack([load_image(d / it["output"]) for d, it in zip(dirs, items)]), out / "samples.png")
    write_json_atomic(summary_path, record)
    print(f"{cfg.method.name} on {cfg.model.name}/{cfg.task.name}: target {cfg.task.target} "
          f"{record['scores'][cfg.task.target]:.3f} | NFE {record['nfe_per_sample']} per sample "
          f"({record['grad_nfe_per_sample']} with gradients), {record['wall_s']:.1f} s\n"
          f"images: {out / 'samples.png'}  record: {summary_path}")
    return record


__all__ = ["build_model", "generate", "load_prompts", "method_params"]
