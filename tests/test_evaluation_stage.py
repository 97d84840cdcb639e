"""The evaluation stage (ntrk_bench/evaluate.py) end to end: finished run directories of saved PNGs and MP4s,
scored by every ported held-out evaluator built from its YAML pointed at the tiny golden models (``overrides``,
``--set``); VBench through the subprocess boundary (``--env``) with a stand-in ``vbench`` module; and missing
weights, which must name their fetch commands and leave no evaluation file behind."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ntrk_bench.evaluate import build_evaluator, evaluate  # noqa: E402
from ntrk_bench.hub import MissingModel  # noqa: E402
from ntrk_bench.io import load_output, save_image, save_video  # noqa: E402
from ntrk_bench.rundir import ItemRecord, RunDir, RunRecord, find_runs  # noqa: E402
from rewards.external import VBENCH_CACHE_FILES, VBENCH_PER_VIDEO_SCALE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "data" / "golden"


# ------------------------------------------------------------------------------------------------ run directories
def make_run(path: Path, outputs: list, prompts: list, held_out: list, prompts_file: str | None = None,
             fps: int = 2) -> RunDir:
    """A finished run as run.py leaves it: items/<i>_s0/{image.png | video.mp4, record.json}, then record.json."""
    run, names = RunDir(path), []
    for i, (x, prompt) in enumerate(zip(outputs, prompts)):
        name, output = f"{i:04d}_s0", "video.mp4" if x.dim() == 4 else "image.png"
        run.item_dir(name).mkdir(parents=True)
        (save_video(x, run.item_dir(name) / output, fps) if x.dim() == 4 else save_image(x, run.item_dir(name) / output))
        run.write_item(name, ItemRecord(index=i, prompt=prompt, seed=0, method="base", output=output, target="t",
                                        target_score=0.0, method_value=0.0, nfe=1, grad_nfe=0, wall_s=0.0,
                                        config_hash="h", method_config={}))
        names.append(name)
    task = {"name": path.name, "held_out": held_out, **({"prompts_file": prompts_file} if prompts_file else {})}
    run.write_summary(RunRecord(method="base", display_name="Base", whitening=None, model="tiny", family="tiny",
                                task=path.name, experiment="test", seed=0, steps=1, ledger={"method": "base"},
                                prompts=prompts, items=names, target="t", scores={}, per_sample={},
                                nfe_per_sample=1, grad_nfe_per_sample=0, wall_s=0.0, config_hash="h",
                                config={"task": task}))
    return run


def image_of(uint8_hwc: torch.Tensor) -> torch.Tensor:
    return uint8_hwc.permute(2, 0, 1).float() / 255


# ------------------------------------------------------------------------------------------------ tiny evaluators
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Config values pointing each ported evaluator at its tiny golden model (as tests/test_<reward>.py do)."""
    from transformers import BertTokenizer

    from test_hpsv2 import ARCH, CHECKPOINT, byte_level_clip_tokenizer
    from test_imagereward import GOLDEN as IR_GOLDEN, TINY_VIT
    from test_videoreward import FIXTURE_MAX_PIXELS, VA
    from test_vqascore import TOWER, official_layout, tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny")
    ir = torch.load(IR_GOLDEN, weights_only=True)
    (d / "med_config.json").write_text(json.dumps(ir["med"]))
    (d / "vocab.txt").write_text("\n".join(t for t in ir["vocab"] if t not in ("[DEC]", "[ENC]")) + "\n")
    BertTokenizer(str(d / "vocab.txt")).save_pretrained(d / "bert")
    (d / "clip_bpe").mkdir()
    cg = json.loads((GOLDEN / "countgd_tiny" / "config.json").read_text())
    over = cg["overrides"]
    clipt5 = torch.load(GOLDEN / "clipt5_tiny" / "clipt5_tiny.pt", weights_only=True)
    return {
        "imagereward": dict(checkpoint=str(IR_GOLDEN), med_config=str(d / "med_config.json"),
                            tokenizer_id=str(d / "bert"), vision=TINY_VIT, device="cpu", batch_size=2),
        "hpsv2": dict(checkpoint=str(CHECKPOINT), architecture=str(ARCH), device="cpu", batch_size=2,
                      tokenizer_id=str(byte_level_clip_tokenizer(d / "clip_bpe"))),
        "vqascore": dict(model_id=official_layout(clipt5, d / "clipt5", "safetensors"), clip_id=str(TOWER),
                         tokenizer_id=tiny_tokenizer(d / "t5tok"), device="cpu", dtype="float32", batch_size=2),
        "countgd": dict(checkpoint=str(GOLDEN / "countgd_tiny"), checkpoint_file="countgd_tiny_checkpoint.pth",
                        text_encoder=str(GOLDEN / "tinybert"), device="cpu", batch_size=2,
                        model=dict(depths=cg["swin_B_384_22k_overrides"]["depths"], encoder_layers=over["enc_layers"],
                                   decoder_layers=over["dec_layers"], ffn_dim=over["dim_feedforward"],
                                   num_queries=over["num_queries"], num_feature_levels=over["num_feature_levels"])),
        "videoreward": dict(checkpoint=str(VA / "ckpt"), checkpoint_file="checkpoint-1/model.pth",
                            base_model=str(VA / "base"), input_fps=2.0, max_pixels=FIXTURE_MAX_PIXELS,
                            use_norm=False, device="cpu", dtype="float32"),
    }


def test_every_ported_evaluator_scores_saved_runs_end_to_end(tiny, tmp_path):
    ir = torch.load(GOLDEN / "imagereward_tiny" / "imagereward_tiny.pt", weights_only=True)
    cg = torch.load(GOLDEN / "countgd_tiny" / "countgd_tiny_io.pt", weights_only=True)
    va = torch.load(GOLDEN / "va" / "ref_small.pt", weights_only=True)
    n1 = cg["count"]  # the official count of "strawberry" in the golden image
    records = [{"prompt": "strawberries", "items": [{"prompt": "strawberry", "count": n1 - 3}]}]
    (tmp_path / "records.json").write_text(json.dumps(records))  # the task's prompt records
    ir_prompt = "a photo of 37 strawberries on the red table ."
    aesthetic = make_run(tmp_path / "runs" / "aesthetic", [image_of(ir["image_uint8"]), image_of(ir["image_uint8"]).flip(2)],
                         [ir_prompt, "dog"], ["imagereward", "hpsv2", "vqascore"])
    counting = make_run(tmp_path / "runs" / "counting", [image_of(cg["image_uint8"])], ["strawberries"], ["countgd"],
                        prompts_file=str(tmp_path / "records.json"))
    video = make_run(tmp_path / "runs" / "video", [va["frames_uint8"].float().div(255).transpose(0, 1)],
                     [va["prompt"]], ["videoreward"])
    runs = find_runs([tmp_path / "runs"])
    assert len(runs) == 3

    evaluate(runs, progress=False, overrides=tiny)

    for run in (aesthetic, video):  # each held-out file equals the evaluator on the saved outputs, in item order
        pixels = torch.stack([load_output(f) for f in run.outputs()])
        prompts = [it.prompt for _, it in run.items()]
        for name in run.held_out():
            expected = build_evaluator(name, **tiny[name]).evaluate(pixels, prompts)
            got = run.read_eval(name).scores
            assert set(got) == set(expected) and run.read_eval(name).config_hash == "h"
            for metric, values in expected.items():
                assert got[metric] == pytest.approx(values, abs=1e-5), (run.path.name, name, metric)
    # anchored on the official outputs: ImageReward's score of its golden image (PNG is lossless; the PIL-free
    # resize costs up to 1e-2, tests/test_imagereward.py), and CountGD's official count against the count in the
    # task's own prompt records (given to the evaluator by the stage)
    assert aesthetic.read_eval("imagereward").scores["imagereward"][0] == pytest.approx(ir["score"], abs=1e-2)
    assert counting.read_eval("countgd").scores == {"countgd_count": [n1], "countgd_target": [n1 - 3],
                                                    "countgd_mae": [3.0], "countgd_accuracy": [0.0]}
    assert set(video.read_eval("videoreward").scores) >= {"videoreward", "videoreward_vq", "videoreward_mq",
                                                          "videoreward_ta"}
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("eval/*.json")}
    evaluate(runs, progress=False, overrides=tiny)  # resumable: a rerun rewrites nothing
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("eval/*.json")} == mtimes


# ------------------------------------------------------------------------------------------------ VBench, stand-in
STUB = '''"""Stand-in for the vbench package: records each call and scores a video by its file size."""
import json, os
from pathlib import Path


class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.output_path = output_path

    def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False, read_frame=False,
                 mode="vbench_standard", **kwargs):
        from vbench.utils import CACHE_DIR
        with open(os.environ["VBENCH_STUB_LOG"], "a") as f:
            f.write(json.dumps({"dimensions": dimension_list, "local": local, "mode": mode, "cache": CACHE_DIR,
                                "prompts": sorted(prompt_list.values())}) + "\\n")
        per = [{"video_path": str(v), "video_results": float(os.path.getsize(v))}
               for v in sorted(Path(videos_path).iterdir())]
        results = {d: [sum(r["video_results"] for r in per) / len(per), per] for d in dimension_list}
        Path(self.output_path, name + "_eval_results.json").write_text(json.dumps(results))
'''
STUB_UTILS = '''import os
CACHE_DIR = os.environ.get("VBENCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vbench")
'''


def vbench_env(tmp_path: Path) -> tuple[str, Path]:
    """A 'python of another environment' that has (a stand-in) vbench: a wrapper of this interpreter."""
    (tmp_path / "site" / "vbench").mkdir(parents=True)
    (tmp_path / "site" / "vbench" / "__init__.py").write_text(STUB)
    (tmp_path / "site" / "vbench" / "utils.py").write_text(STUB_UTILS)
    log, python = tmp_path / "calls.jsonl", tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{tmp_path / "site"}:{ROOT}" VBENCH_STUB_LOG="{log}" '
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return str(python), log


def fill_cache(cache: Path, dimension: str) -> None:
    for f in VBENCH_CACHE_FILES[dimension]:
        target = cache / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.kind == "link":
            target.symlink_to(cache / f.source)
        else:
            target.write_bytes(b"stand-in")


def test_vbench_runs_in_its_own_environment_in_local_mode_from_its_cache(tmp_path):
    """Two dimensions, each in its own worker: imaging quality's cache is filled and it runs (local mode, the
    cache, per-video scores in item order on VBench's scale); subject consistency's is empty and its worker
    lists every file with its fetch command, writing nothing."""
    dims = ["imaging_quality", "subject_consistency"]
    frames = torch.rand(2, 3, 4, 32, 48, generator=torch.Generator().manual_seed(0))
    run = make_run(tmp_path / "runs" / "video", [frames[0], frames[1]], ["a cat", "a dog"],
                   [f"vbench_{d}" for d in dims])
    python, log = vbench_env(tmp_path)
    cache = tmp_path / "vbench_cache"
    fill_cache(cache, "imaging_quality")
    with pytest.raises(MissingModel) as err:
        evaluate([run], envs={f"vbench_{d}": python for d in dims}, progress=False,
                 overrides={f"vbench_{d}": {"cache_dir": str(cache), "device": "cpu"} for d in dims})

    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert call == {"dimensions": ["imaging_quality"], "local": True, "mode": "custom_input", "cache": str(cache),
                    "prompts": ["a cat", "a dog"]}
    sizes = [float(f.stat().st_size) for f in run.outputs()]  # the stand-in's per-video score, in item order
    assert sizes[0] != sizes[1]
    assert run.read_eval("vbench_imaging_quality").scores == {"vbench_imaging_quality": pytest.approx(
        [VBENCH_PER_VIDEO_SCALE["imaging_quality"] * s for s in sizes])}
    assert VBENCH_PER_VIDEO_SCALE == {"imaging_quality": 0.01}  # vbench/imaging_quality.py: mean / 100

    lines = str(err.value).splitlines()
    assert len(lines) == len(VBENCH_CACHE_FILES["subject_consistency"])
    for line, f in zip(lines, VBENCH_CACHE_FILES["subject_consistency"]):
        assert line.startswith("vbench_subject_consistency: ") and f"`{f.fetch_command(cache)}`" in line
    assert not run.has_eval("vbench_subject_consistency")


# ------------------------------------------------------------------------------------------------ missing weights
def test_missing_weights_name_their_fetch_commands_and_write_nothing(tmp_path):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    run = make_run(tmp_path / "runs" / "a", [image], ["a cat"], ["imagereward", "vbench_dynamic_degree"])
    video = make_run(tmp_path / "runs" / "v", [torch.rand(3, 4, 32, 32)], ["a cat"], ["vbench_dynamic_degree"])
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "VBENCH_CACHE_DIR": str(tmp_path / "vbench"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "ntrk_bench.evaluate", str(tmp_path / "runs"), "--no-progress",
                           "--set", "imagereward.device=cpu"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    # the port stops at its first missing file; VBench lists every file of the dimension
    assert len(errors) == 1 + len(VBENCH_CACHE_FILES["dynamic_degree"])
    assert errors[0].startswith("error: imagereward: ") and "`hf download THUDM/ImageReward ImageReward.pt`" in errors[0]
    raft = VBENCH_CACHE_FILES["dynamic_degree"][0]
    assert errors[1].startswith("error: vbench_dynamic_degree: ") and raft.source in errors[1] and "unzip" in errors[1]
    assert not list((tmp_path / "runs").rglob("eval/*.json")) and not list((tmp_path / "runs").rglob("*.tmp"))
    assert run.finished() and video.finished()


def test_set_option_values_are_yaml_and_malformed_ones_fail():
    from ntrk_bench.evaluate import parse_sets

    assert parse_sets(["countgd.model={depths: [2, 2]}", "countgd.batch_size=2", "hpsv2.checkpoint_file=null"]) == {
        "countgd": {"model": {"depths": [2, 2]}, "batch_size": 2}, "hpsv2": {"checkpoint_file": None}}
    with pytest.raises(SystemExit, match="NAME.KEY=VALUE"):
        parse_sets(["batch_size=2"])
