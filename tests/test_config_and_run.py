"""Hydra composition of every group option, and the generation entry point end to end."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ntrk_bench.config import CONF_DIR
from ntrk_bench.sde import FlowSDE
from ntrk_bench.whitening import Whitening

ROOT = Path(__file__).resolve().parent.parent


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("whitening"))
def test_every_whitening_option_composes_and_builds(name):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"whitening={name}"])
    shape = (16, 21, 60, 104) if name.endswith("wan") else (16, 64, 64)
    W = Whitening(cfg.whitening, shape)
    z = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    assert W(z).shape == z.shape and torch.isfinite(W(z)).all()


@pytest.mark.parametrize("name", options("sde"))
def test_every_sde_option_builds_a_kernel(name):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"sde={name}"])
    sde = FlowSDE(**cfg.sde)
    assert sde.times(25)[0] == 1 and sde.std(1.0, 0.96) > 0


@pytest.mark.parametrize("extra", [[], ["model=mini_exact", "task=mini_text"],
                                   ["model=gmm", "task=analytic", "model.latent_shape=[4,32,32]"]])
def test_run_py_writes_a_record_and_skips_finished_work(tmp_path, extra):
    args = [sys.executable, str(ROOT / "run.py"), f"out_dir={tmp_path}/r", "steps=4", "progress=false", *extra]
    first = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr
    record = json.loads((tmp_path / "r" / "record.json").read_text())
    assert record["nfe_per_sample"] == 4 and record["grad_nfe_per_sample"] == 4 and record["method"] == "ntrk"
    assert record["target"] in record["scores"] and record["ledger"]["nfe"] == 4
    if record["family"].startswith("mini"):  # evaluation ran right after generation (evaluate=true)
        quality = json.loads((tmp_path / "r" / "eval" / "mini_quality.json").read_text())["scores"]
        assert len(quality["log_density"]) == len(quality["hf_share"]) == len(quality["log_density_percentile"]) == 10
        assert "fd_to_real" not in quality  # 10 samples: below the 100 the Frechet distance needs
    assert (tmp_path / "r" / "samples.png").stat().st_size > 0 and "images:" in first.stdout
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "already done" in again.stdout


def test_unknown_method_is_a_clear_error(tmp_path):
    args = [sys.executable, str(ROOT / "run.py"), f"out_dir={tmp_path}/r", "method._target_=mystery.Method", "steps=2"]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: method._target_='mystery.Method': cannot be imported (ImportError)"]


@pytest.mark.parametrize("method", options("method"))
def test_every_method_runs_from_the_command_line(tmp_path, method):
    args = [sys.executable, str(ROOT / "run.py"), f"out_dir={tmp_path}/r", f"method={method}", "model=mini_exact",
            "steps=3", "progress=false", "task.prompts=[a handwritten 3]", "whitening=twoos"]
    small = {"bon": ["method.particles=2"], "svdd": ["method.candidates=2"], "rbf": ["method.particles=2"],
             "das": ["method.particles=2"], "dno": ["method.iterations=2", "method.permutations=2"],
             "psi": ["method.particles=2", "method.chains=1", "method.burn_in=1", "method.mcmc_steps=2"]}
    out = subprocess.run(args + small.get(method, []), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "r" / "record.json").read_text())
    assert record["method"] == method and record["nfe_per_sample"] >= 3


def test_paper_task_composes_flux_and_exits_at_once_without_weights(tmp_path):
    """`python run.py task=aesthetic` is the paper's FLUX setting; without weights: one line, exit code 2."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["task=aesthetic"])
        assert cfg.model.model_id == "black-forest-labs/FLUX.1-schnell" and cfg.task.target == "laion_aesthetic"
        assert compose("config", overrides=["task=aesthetic", "model=mini"]).model.name == "mini"  # model= wins
    from ntrk_bench.generate import load_prompts

    assert len(load_prompts(cfg.task)) == 45 and "hedgehog" in load_prompts(cfg.task)
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "method=ntrk", "task=aesthetic", "nfe=25",
                          f"out_dir={tmp_path}/r"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    assert "hf download black-forest-labs/FLUX.1-schnell" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_killed_run_resumes_without_losing_or_duplicating_items(tmp_path):
    """SIGKILL mid-run, rerun: every item exactly once, finished items untouched, and the result identical
    to an uninterrupted run (per-item seed streams)."""
    import signal
    import time

    args = [sys.executable, str(ROOT / "run.py"), "model=mini_exact", "method=ntrk", "progress=false", "evaluate=false"]
    ref = subprocess.run(args + [f"out_dir={tmp_path}/ref"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen(args + [f"out_dir={run}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list(run.glob("items/*/record.json"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.parent.name: p.read_bytes() for p in run.glob("items/*/record.json")}
    assert 3 <= len(done) < 10 and not (run / "record.json").exists()
    again = subprocess.run(args + [f"out_dir={run}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and f"{10 - len(done)} of 10 items to generate" in again.stdout, again.stdout
    records = sorted(run.glob("items/*/record.json"))
    assert len(records) == 10 and not list(run.rglob("*.tmp"))
    assert all(done[name] == (run / "items" / name / "record.json").read_bytes() for name in done)
    for d in sorted((tmp_path / "ref" / "items").iterdir()):
        assert torch.equal(torch.load(d / "latent.pt"), torch.load(run / "items" / d.name / "latent.pt")), d.name
    summary = json.loads((run / "record.json").read_text())
    assert summary["nfe_per_sample"] == 25 and len(summary["per_sample"]["mini_bold"]) == 10


def test_outputs_are_per_configuration_and_never_mixed(tmp_path):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        a = compose("config", overrides=["method.gamma=0.1"], return_hydra_config=True)
    assert "method.gamma=0.1" in str(a.hydra.job.override_dirname)
    args = [sys.executable, str(ROOT / "run.py"), f"out_dir={tmp_path}/r", "steps=2", "progress=false", "model=mini_exact",
            "task.prompts=[a handwritten 1]"]
    assert subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300).returncode == 0
    other = subprocess.run(args + ["method.gamma=0.1"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert other.returncode != 0 and "holds results of another configuration" in other.stderr


def test_submitit_sweep_killed_and_rerun_is_complete_and_unique(tmp_path):
    """A mini sweep through hydra/launcher=local (submitit), SIGKILLed mid-way with all its workers, then rerun:
    every job's items exist exactly once and every job has its summary."""
    import os
    import signal
    import time

    out = tmp_path / "runs"
    args = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=local", "model=mini_exact", "method=base,ntrk",
            "seed=0,1", "task.prompts=[a handwritten 2,a handwritten 7,a handwritten 9]", "progress=false", "evaluate=false",
            f"hydra.sweep.dir={tmp_path}/sweep", f"out_dir={out}/" + "${method.name}_${seed}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while len(list(out.glob("*/items/*/record.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(out.glob("*/record.json"))) < 4  # killed before the sweep finished
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    for job in ("base_0", "base_1", "ntrk_0", "ntrk_1"):
        records = sorted((out / job / "items").glob("*/record.json"))
        assert len(records) == 3 and (out / job / "record.json").exists(), job
        assert sorted(json.loads(r.read_text())["index"] for r in records) == [0, 1, 2]
    assert not list(out.rglob("*.tmp"))
