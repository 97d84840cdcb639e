"""The generation stage: sample a task's prompts with a method, score them, save images and records.

Outputs are deterministic (no timestamps). Every item - one prompt with its own seed stream - is written to
the run directory (``ntrk_bench.rundir``: latent, image or video, record - the record atomically and last);
a rerun skips items whose record exists, so a run killed at any point (SIGKILL included) loses at most the
item in flight and duplicates nothing. When all items exist, the run summary (target scores, measured NFE
and wall time, the paper-ledger row, the resolved config) and a grid of the samples are written. The
model, method, rewards and logger are built from their configs' ``_target_``; this stage imports none of
them. Held-out evaluators are the evaluation stage's (``ntrk_bench/evaluate.py``); with ``evaluate=true``
(the mini tasks' default) it runs right after generation.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .config import build_reward, instantiate_block
from .io import load_image, save_grid, save_image, save_video, write_atomic
from .method import Method, Problem, build_method
from .models import counted
from .rundir import ItemRecord, RunDir, RunRecord
from .sampling import NonFiniteReward
from .sde import FlowSDE


#: keys that say where results go, how they are shown, tracked or batched - not what they are. Runs shared by
#: several experiments (Table 2's rows are Table 14's) land in one directory and are computed once.
NOT_HASHED = ("out_dir", "run_name", "results_root", "progress", "evaluate", "eval_envs", "experiment_name", "logger",
              "save_latents", "batch_size")
#: model keys that change memory and speed, not results
NOT_HASHED_MODEL = ("gradient_checkpointing", "offload_encoders", "device")


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that determines the results (not where they go or how progress is shown): the
    configuration, the prompt texts themselves (not the file that holds them) and the CPU thread count
    (reductions split differently change the last bits, and a sampler amplifies them)."""
    data = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NOT_HASHED}
    if isinstance(data.get("model"), dict):
        data["model"] = {k: v for k, v in data["model"].items() if k not in NOT_HASHED_MODEL}
    data["prompt_texts"] = load_prompts(cfg.task)
    data["cpu_threads"] = torch.get_num_threads()
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


class MixedResults(ValueError):
    """An output directory holds results of another configuration (or prompts, or thread count)."""


def check_same_config(found: str, path: Path, chash: str) -> None:
    """Refuse to mix results of different configurations in one directory."""
    if found != chash:
        raise MixedResults(f"{path} holds results of another configuration, prompt set or CPU thread count (hash "
                           f"{found}, this run {chash}); choose another out_dir or remove it")


def build_model(cfg: DictConfig):
    """The flow model of a ``conf/model`` option (its ``_target_``)."""
    return instantiate_block(cfg)


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
            prompts += [entry["prompt"] for entry in json.loads(path.read_text(encoding="utf-8"))]
        else:
            prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return prompts


def method_of(cfg: DictConfig) -> Method:
    """The run's method with its budget (``nfe``) spent by its own cost model."""
    return build_method(cfg.method, cfg.get("nfe"), cfg.steps)


def method_record(method: Method) -> dict:
    """A method's configuration as recorded with each item (the whitening block by name)."""
    out = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}
    if "whitening" in out:
        out["whitening"] = method.whitening_name
    return out


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


def generate(cfg: DictConfig, guard=None) -> RunRecord:
    """Generate (or resume) one run; ``guard`` wraps the model, reward and whitening operator (placement
    checks, ``ntrk_bench.placement``)."""
    run = RunDir(cfg.out_dir)
    chash = config_hash(cfg)
    logger = instantiate_block(cfg.logger)  # a logger that cannot work fails now, before any generation
    record = run.read_summary_or_none()
    damage = record is not None and run.summary_problem(cfg.save_latents)
    if damage:
        print(f"{run.summary_path}: {damage}; checking every item again")
        record = None
    if record is not None:
        check_same_config(record.config_hash, run.summary_path, chash)
        print(f"already done: {run.summary_path} ({cfg.task.target} {record.scores[cfg.task.target]:.4f})")
    else:
        record = generate_items(cfg, run, chash, guard)
    scores = dict(record.scores)
    if cfg.get("evaluate"):
        from . import evaluate

        evaluate.evaluate([run], envs=dict(cfg.get("eval_envs") or {}), progress=cfg.progress)
        scores |= evaluate.summary(run)
        print(f"{cfg.method.name} on {cfg.model.name}/{cfg.task.name}: " +
              ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    logger.log_run(cfg, record, scores)
    return record


def generate_items(cfg: DictConfig, run: RunDir, chash: str, guard=None) -> RunRecord:
    from tqdm.auto import tqdm

    prompts = [p for p in load_prompts(cfg.task) for _ in range(cfg.samples_per_prompt)]
    names = item_dirs(cfg, prompts)
    for name in names:
        if run.item_done(name):
            problem = run.item_problem(name, cfg.save_latents)
            if problem:
                print(f"{run.item_dir(name)}: {problem}; regenerating it")
                run.item_record_path(name).unlink()
            else:
                check_same_config(run.read_item(name).config_hash, run.item_record_path(name), chash)
    todo = [i for i, name in enumerate(names) if not run.item_done(name)]
    model = build_model(cfg.model)
    if guard is not None:
        model = guard("model", model)
    model = counted(model)
    target = build_reward(cfg.task.target, model.latent_shape, **dict(cfg.task.get("target_args") or {}))
    method = method_of(cfg)
    if todo:
        sde = FlowSDE(**cfg.sde)
        print(f"{len(todo)} of {len(prompts)} items to generate ({len(prompts) - len(todo)} already done) -> {run.path}")
        bar, wanted, made = tqdm(total=len(todo), desc=cfg.method.name, disable=not cfg.progress), len(todo), 0
        problem_args = dict(sde=sde, model=model, target=target, method=method, chash=chash, guard=guard)
        while todo:
            waiting = []
            for i in todo:
                if run.item_done(names[i]):
                    continue
                if not run.claim(names[i]):  # another process is generating it
                    waiting.append(i)
                    continue
                try:
                    if not run.item_done(names[i]):  # finished by another process in between
                        generate_item(cfg, run, i, prompts[i], names[i], **problem_args)
                        made += 1
                finally:
                    run.release(names[i])
                bar.update(1)
            todo = [i for i in waiting if not run.item_done(names[i])]
            if todo:
                print(f"{len(todo)} items are being generated by another process; waiting for them")
                time.sleep(2.0)
        bar.close()
        if made < wanted:
            print(f"{made} of {wanted} items generated by this process, the others by another one")
    return summarise(cfg, prompts, run, names, method, dict(getattr(target, "conventions", None) or {}))


def generate_item(cfg: DictConfig, run: RunDir, i: int, prompt: str, name: str, sde, model, target, method: Method,
                  chash: str, guard=None) -> None:
    """One item (prompt, seed): the method's answer, its latent, image or video, and - last - its record."""
    before, start = model.counter.snapshot(), time.perf_counter()
    gen = torch.Generator().manual_seed(item_seed(cfg, i))
    try:
        res = method(Problem(sde, model, prompt, target, cfg.steps, gen, cfg.task.condition_model,
                             batch_size=cfg.get("batch_size"), guard=guard))
    except NonFiniteReward as err:
        raise NonFiniteReward(err.what, err.tau, f"{err.where} on item {i} ({prompt!r})") from None
    wall, after = time.perf_counter() - start, model.counter.snapshot()
    nfe = after["nfe"] - before["nfe"]
    if cfg.get("nfe") and nfe != cfg.nfe:  # the method's cost model and the counter must agree
        raise RuntimeError(f"{cfg.method.name} spent {nfe} NFE on item {i}, not the budgeted {cfg.nfe}")
    x0 = res.x0.detach()
    with torch.no_grad():
        pixels = model.decode(x0)
        score = float(target(pixels, [prompt])[0])
    if not math.isfinite(score):
        raise NonFiniteReward("value", 0.0, f" of item {i}'s answer from reward {cfg.task.target!r}")
    if cfg.save_latents:
        write_atomic(run.latent_path(name), lambda p: torch.save(x0.cpu(), p))
    run.write_item(name, ItemRecord(  # last: its presence marks the item done
        index=i, prompt=prompt, seed=item_seed(cfg, i), method=cfg.method.name,
        output=save_output(cfg, pixels[0].float().cpu(), run.item_dir(name)), target=cfg.task.target,
        target_score=score, method_value=res.reward, nfe=nfe, grad_nfe=after["grad_nfe"] - before["grad_nfe"],
        wall_s=wall, config_hash=chash, method_config=method_record(method), diagnostics=res.info.get("diagnostics", {})))


def summarise(cfg: DictConfig, prompts: list[str], run: RunDir, names: list[str], method: Method,
              conventions: dict | None = None) -> RunRecord:
    """The run's record from its finished items: target scores, measured NFE and wall time, the ledger row."""
    items = [run.read_item(name) for name in names]
    n = len(prompts)
    target = [it.target_score for it in items]
    recorded = {k for it in items for k in it.diagnostics}  # a method's per-item record, where every item has it
    diagnostics = {k: [it.diagnostics[k] for it in items] for k in sorted(recorded)
                   if all(k in it.diagnostics for it in items)}
    row = method.ledger_row(cfg.steps, cfg.get("nfe") or sum(it.nfe for it in items) // n)
    record = RunRecord(
        method=cfg.method.name, display_name=method.display_name(), whitening=method.whitening_name,
        model=cfg.model.name, family=cfg.model.get("family", cfg.model.name), task=cfg.task.name,
        experiment=cfg.experiment_name, seed=cfg.seed, steps=cfg.steps,
        ledger={**dataclasses.asdict(row), "steps": str(row.steps)}, prompts=prompts, items=names,
        target=cfg.task.target, scores={cfg.task.target: sum(target) / n},
        per_sample={cfg.task.target: target, "nfe": [it.nfe for it in items], "grad_nfe": [it.grad_nfe for it in items],
                    "wall_s": [it.wall_s for it in items], **diagnostics},
        nfe_per_sample=sum(it.nfe for it in items) // n, grad_nfe_per_sample=sum(it.grad_nfe for it in items) // n,
        wall_s=sum(it.wall_s for it in items), config_hash=config_hash(cfg),
        config=OmegaConf.to_container(cfg, resolve=True), target_conventions=conventions or {})
    if all(it.output.endswith(".png") for it in items):
        save_grid(torch.stack([load_image(run.item_dir(name) / it.output) for name, it in zip(names, items)]),
                  run.grid_path)
    run.write_summary(record)
    print(f"{cfg.method.name} on {cfg.model.name}/{cfg.task.name}: target {cfg.task.target} "
          f"{record.scores[cfg.task.target]:.3f} | NFE {record.nfe_per_sample} per sample "
          f"({record.grad_nfe_per_sample} with gradients), {record.wall_s:.1f} s\n"
          + (f"images: {run.grid_path}  " if run.grid_path.exists() else "") + f"record: {run.summary_path}")
    return record


__all__ = ["build_model", "config_hash", "generate", "load_prompts", "method_of", "method_record"]
