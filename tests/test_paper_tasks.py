"""The paper's video, VLM and counting tasks through the real entry point (`python run.py task=...`), offline on
tiny saved models: VideoReward on Wan2.1 videos (MP4 outputs), Qwen2.5-VL P("Yes") on FLUX images, and the counting
target behind the gradient server (a stand-in scorer, tests/standin_scorer.py, in place of T2I-Count). Without
weights each task exits at once with one line naming what to fetch; Tables 3 and 11 expand to every row with
these targets; each run records its target's conventions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_qwen25_vl
from test_harness import composed
from test_harness import sweep as sweep_jobs
import torch
from omegaconf import OmegaConf

from ntrk_bench.config import build_reward, load_group
from rewards.remote import PromptRecords

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "data" / "golden"
VA = GOLDEN / "va"  # tiny VideoReward checkpoint (README there)
STEPS, FRAMES = 2, 5
SMALL = ["method=ntrk", "whitening=twoos", "model.device=cpu", "model.dtype=float32", f"steps={STEPS}",
         "progress=false"]  # twoos: the full operators' tiles need paper-sized latents


def offline_env(tmp: Path) -> dict:
    """No hub access and an empty Hugging Face cache: every weight must come from the paths given."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "empty_hf_home"), "OMP_NUM_THREADS": "1"}


def start_run(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(procs: dict, timeout: float = 600) -> dict:
    """{name: (exit code, stdout, stderr)} of processes started together."""
    outputs = {name: p.communicate(timeout=timeout) for name, p in procs.items()}
    return {name: (procs[name].returncode, *out) for name, out in outputs.items()}


# ----------------------------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from ntrk_bench.models import tiny

    d = tmp_path_factory.mktemp("tiny_models")
    tiny.wan_pipeline().save_pretrained(d / "wan")
    tiny.flux_pipeline().save_pretrained(d / "flux")
    save_tiny_qwen25_vl(d / "qwen25_vl")
    return d


def added(block: str, values: dict) -> list[str]:
    """Hydra overrides adding ``values`` to a config block (``+block.key=value``)."""
    return [f"+{block}.{k}={v}" for k, v in values.items()]


def task_args(task: str, tiny: Path) -> list[str]:
    """One prompt, tiny sizes, the task's target pointed at its tiny model through ``task.target_args``."""
    if task == "video":
        target = {"checkpoint": VA / "ckpt", "checkpoint_file": "checkpoint-1/model.pth", "base_model": VA / "base",
                  "device": "cpu", "dtype": "float32",
                  "use_norm": "false"}  # the tiny checkpoint has no inference_config
        return ["task=video", "model=wan21_1_3b", f"model.model_id={tiny / 'wan'}", "model.height=32", "model.width=32",
                f"model.frames={FRAMES}", "task.prompts=[a cat walking on grass]", "task.prompts_file=null",
                *added("task.target_args", target)]
    flux = [f"task={task}", f"model.model_id={tiny / 'flux'}", "model.height=32", "model.width=32",
            "task.prompts_file=null"]
    if task == "vlm_depth":  # an inline prompt; its question comes from the shipped records
        target = {"model_id": tiny / "qwen25_vl", "device": "cpu", "dtype": "float32"}
        return [*flux, "task.prompts=[a cat sitting behind a vase]",
                "task.target_args.prompts_file=vlm_depth_standin.json", *added("task.target_args", target)]
    # counting: the gradient server under this interpreter with the stand-in scorer (T2I-Count's own arguments off)
    target = {"python": sys.executable, "scorer": "tests/standin_scorer.py:smooth", "scorer_args": "null",
              "echo_stderr": "false"}
    return [*flux, "task.prompts=[3 apples on a wooden table]", "task.target_args.prompts_file=counting_standin.json",
            *added("task.target_args", target)]


TASKS = ("video", "vlm_depth", "counting")


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """The three tasks run once each, side by side: {task: (out_dir, exit code, stdout, stderr)}."""
    tmp = tmp_path_factory.mktemp("runs")
    procs = {t: start_run([*task_args(t, tiny), *SMALL, f"out_dir={tmp / t}"], offline_env(tmp)) for t in TASKS}
    return {t: (tmp / t, *out) for t, out in finish(procs).items()}


def finished(runs, task) -> tuple[Path, dict, dict]:
    """(run dir, run record, its one item's record) of a run that exited 0."""
    out, code, _, stderr = runs[task]
    assert code == 0, stderr[-3000:]
    record = json.loads((out / "record.json").read_text())
    (item,) = record["items"]
    return out, record, json.loads((out / "items" / item / "record.json").read_text())


def decoded(out: Path, record: dict) -> torch.Tensor:
    """The run's saved latent decoded by the model built from the run's own resolved config."""
    from ntrk_bench.generate import build_model

    model = build_model(OmegaConf.create(record["config"]).model)
    with torch.no_grad():
        return model.decode(torch.load(out / "items" / record["items"][0] / "latent.pt", weights_only=True))


def rescored(out: Path, record: dict) -> float:
    """The run's target, built from the run's resolved config, on the decoded saved latent."""
    cfg = OmegaConf.create(record["config"])
    target = build_reward(cfg.task.target, **OmegaConf.to_container(cfg.task.target_args))
    with torch.no_grad():
        return float(target(decoded(out, record), record["prompts"])[0])


def check_measured_cost(record: dict, item: dict) -> None:
    """NTRK: one denoiser call per step, each differentiated through the target (measured, not computed)."""
    assert item["nfe"] == STEPS and item["grad_nfe"] == STEPS
    assert record["nfe_per_sample"] == STEPS and record["per_sample"]["nfe"] == [STEPS]
    assert record["ledger"]["nfe"] == STEPS


# ----------------------------------------------------------------------------------------------- end to end
def test_video_task_runs_end_to_end_with_videoreward_and_writes_mp4(runs):
    import imageio.v3 as iio

    out, record, item = finished(runs, "video")
    assert record["task"] == "video" and record["target"] == "videoreward" and record["model"] == "wan21_1_3b"
    check_measured_cost(record, item)
    mp4 = out / "items" / record["items"][0] / item["output"]
    assert item["output"] == "video.mp4"
    frames, meta = iio.imread(mp4), iio.immeta(mp4)
    assert frames.shape == (FRAMES, 32, 32, 3) and meta["fps"] == 16  # the model's fps, in the container
    conv = record["target_conventions"]  # VideoReward's settings, with the frame rate the task passed
    assert conv["input_fps"] == 16 and conv["fps"] == 2.0 and conv["heads"] == "VQ+MQ+TA"
    assert conv["position_ids"] == "sequential" and conv["use_norm"] is False and conv["lora_scaling"] == 2.0
    assert abs(rescored(out, record) - item["target_score"]) < 1e-4


def test_vlm_depth_task_runs_end_to_end_with_qwen25_vl(runs):
    out, record, item = finished(runs, "vlm_depth")
    assert record["target"] == "vlm_yes" and item["output"] == "image.png" and (out / "samples.png").exists()
    check_measured_cost(record, item)
    assert 0 < item["target_score"] < 1  # a probability
    conv = record["target_conventions"]
    assert conv["prompts_file"].endswith("vlm_depth_standin.json") and conv["answer"] == "Yes"
    assert conv["question_suffix"] == "Answer with Yes or No." and conv["positions"].startswith("M-RoPE")
    assert abs(rescored(out, record) - item["target_score"]) < 1e-5


def test_counting_task_runs_end_to_end_through_the_gradient_server(runs):
    out, record, item = finished(runs, "counting")
    assert record["target"] == "t2icount" and item["output"] == "image.png"
    check_measured_cost(record, item)  # gradients came back across the process boundary
    conv = record["target_conventions"]
    assert conv == {"scorer": "tests/standin_scorer.py:smooth", "scorer_args": {}, "python": sys.executable,
                    "prompts_file": str(ROOT / "ntrk_bench" / "data" / "prompts" / "counting_standin.json")}
    # the stand-in scorer here, on the saved sample and the prompt's record, gives the score the server sent back
    from tests.standin_scorer import smooth

    (prompt,) = record["prompts"]
    meta = {k: v for k, v in PromptRecords(conv["prompts_file"])[prompt].items() if k != "prompt"}
    assert abs(float(smooth(decoded(out, record), [prompt], [meta])[0]) - item["target_score"]) < 1e-5


# ----------------------------------------------------------------------------------------------- no weights
def test_without_weights_the_video_task_exits_at_once_naming_what_to_fetch(tmp_path):
    """Wan2.1 loads first, so an empty cache stops `python run.py task=video` there, before the target loads or any
    item is written. The VLM and counting tasks load the FLUX block of task=aesthetic, whose run without weights
    tests/test_config_and_run.py checks the same way; the targets' own missing weights are checked below."""
    aesthetic = composed("task=aesthetic").model
    assert all(composed(f"task={t}").model == aesthetic for t in ("counting", "vlm_depth", "vlm_horizon"))
    code, _, stderr = finish({"video": start_run(["task=video", f"out_dir={tmp_path / 'r'}"], offline_env(tmp_path))},
                             timeout=300)["video"]
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr[-2000:]
    assert stderr.startswith("error: ") and "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in stderr
    assert not (tmp_path / "r" / "items").exists()


@pytest.mark.parametrize("reward, args, names", [
    ("videoreward", {}, "hf download KwaiVGI/VideoReward"),
    ("vlm_yes", {"prompts_file": "vlm_depth_standin.json"}, "hf download Qwen/Qwen2.5-VL-7B-Instruct"),
    ("t2icount", {"echo_stderr": False}, "make env-t2icount"),
])
def test_missing_target_weights_are_one_line_missing_model(reward, args, names, tmp_path, monkeypatch):
    """What run.py turns into one line and exit code 2 (ntrk_bench.cli), raised when the target is built."""
    from huggingface_hub import constants

    from ntrk_bench.hub import MissingModel

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(MissingModel) as err:
        build_reward(reward, **args)
    assert names in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------- the tables
@pytest.mark.parametrize("experiment, target, target_class, rows", [
    ("table3", "videoreward", "rewards.videoreward.VideoReward", ["base_25", "dps_25", "freedom_25", "ntrk_25"]),
    ("table11", "t2icount", "rewards.remote.RemoteReward",
     ["base_25", "bon_1000", "dps_1000", "freedom_1045", "svdd_1000", "rbf_1000", "das_1000", "psi_1000", "ntrk_1000"]),
])
def test_tables_3_and_11_expand_to_every_row_with_their_target(experiment, target, target_class, rows):
    from ntrk_bench.generate import load_prompts, method_of
    from ntrk_bench.schema import validate

    jobs = sweep_jobs(composed(f"experiment={experiment}", hydra=True))
    assert sorted(jobs) == sorted([f"row={r}", "seed=0"] for r in rows)
    for job in jobs:
        cfg = composed(f"experiment={experiment}", *job)
        validate(cfg)
        method_of(cfg)  # the row's budget is spent exactly by the method's cost model
        assert cfg.method.name == job[0].removeprefix("row=").split("_")[0]
        assert cfg.task.target == target and cfg.experiment_name == experiment, job
        assert load_group("reward", cfg.task.target)._target_ == target_class
        for name in cfg.task.held_out:
            load_group("reward", name)  # every held-out evaluator has a config
        args = OmegaConf.to_container(cfg.task.get("target_args") or {}, resolve=True)
        if "prompts_file" in args:  # every prompt of the task has the record its target reads
            records = PromptRecords(args["prompts_file"])
            assert all(records[p] for p in load_prompts(cfg.task))
