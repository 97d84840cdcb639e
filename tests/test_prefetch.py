"""scripts/prefetch_weights.py offline: on an empty Hugging Face cache it names every weight an experiment needs
with its fetch command and exits non-zero; a cached file counts as present."""
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from ntrk_bench.config import CONF_DIR, load_group

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "prefetch_weights.py"


def prefetch(hf_home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "VBENCH_CACHE_DIR": str(hf_home / "vbench")}
    return subprocess.run([sys.executable, str(SCRIPT), "--check", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def fake_cached_file(hf_home: Path, repo: str, filename: str) -> None:
    """A file in the hub cache layout huggingface_hub reads: refs/main -> snapshots/<revision>/<file>."""
    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (folder / "snapshots" / ("0" * 40) / filename).write_bytes(b"stand-in")


def override(defaults, group: str) -> str:
    return next(d[f"override /{group}"] for d in defaults if f"override /{group}" in d)


def table14_hub_ids() -> dict[str, str]:
    """What experiment=table14 needs, read from the YAMLs: its task's model and its target and held-out rewards."""
    experiment = OmegaConf.load(CONF_DIR / "experiment" / "table14.yaml")
    task = OmegaConf.load(CONF_DIR / "task" / f"{override(experiment.defaults, 'task')}.yaml")
    ids = {"model": load_group("model", override(task.defaults, "model")).model_id}
    for name in [task.task.target, *task.task.held_out]:
        cfg = load_group("reward", name)
        ids[name] = next(cfg[k] for k in ("checkpoint", "model_id", "clip_id") if k in cfg)
    return ids


def test_empty_cache_lists_every_missing_weight_of_an_experiment_and_fails(tmp_path):
    done = prefetch(tmp_path, "experiment=table14")
    assert done.returncode == 1, done.stderr
    missing = [line for line in done.stdout.splitlines() if line.startswith("missing ")]
    assert missing and all(": hf download " in line for line in missing)  # every table-14 weight is on the hub
    for what, repo in table14_hub_ids().items():
        assert any(f"hf download {repo}" in line for line in missing), what
    assert f"0 of {len(missing)} weights present" in done.stdout
    assert len(set(missing)) == len(missing)  # a tokenizer two rewards share is listed once


def test_a_cached_file_is_reported_present(tmp_path):
    cfg = load_group("reward", "imagereward")
    empty = prefetch(tmp_path, "reward=imagereward")
    assert f"missing  ImageReward: hf download {cfg.checkpoint} {cfg.checkpoint_file}" in empty.stdout.splitlines()
    fake_cached_file(tmp_path, cfg.checkpoint, cfg.checkpoint_file)
    done = prefetch(tmp_path, "reward=imagereward")
    lines = done.stdout.splitlines()
    assert f"present  ImageReward: hf download {cfg.checkpoint} {cfg.checkpoint_file}" in lines
    assert not any(line.startswith("missing  ImageReward:") for line in lines)
    assert done.returncode == 1 and "1 of 3 weights present" in lines  # med_config and tokenizer still missing


def test_vbench_dimension_lists_its_cache_files_with_their_sources(tmp_path):
    from rewards.external import VBENCH_CACHE_FILES

    done = prefetch(tmp_path, "reward=vbench_dynamic_degree", "reward=vbench_imaging_quality")
    missing = [line for line in done.stdout.splitlines() if line.startswith("missing ")]
    files = VBENCH_CACHE_FILES["dynamic_degree"] + VBENCH_CACHE_FILES["imaging_quality"]
    assert done.returncode == 1 and len(missing) == len(files)
    for line, f in zip(missing, files):
        assert f.source in line and str(tmp_path / "vbench") in line
