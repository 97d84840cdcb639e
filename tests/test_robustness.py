"""Nothing silent, nothing trusted blindly: non-finite rewards stop with one line, a run's identity covers its
prompt texts and thread count, damaged files are regenerated, a multirun survives a bad job, and bad input
is one line before any model loads."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_method
from hydra import compose, initialize_config_dir

from ntrk_bench.config import CONF_DIR
from ntrk_bench.generate import MixedResults, config_hash, generate
from ntrk_bench.io import write_json_atomic
from ntrk_bench.method import Problem
from ntrk_bench.models import GaussianMixtureFlow, counted
from ntrk_bench.rundir import RunDir
from ntrk_bench.sampling import NonFiniteReward
from ntrk_bench.schema import ConfigError, validate
from ntrk_bench.sde import FlowSDE

ROOT = Path(__file__).resolve().parent.parent


def composed(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["run_name=x", *overrides])


# ----------------------------------------------------------------------------- 1. non-finite rewards
class NaNGradient:
    """Finite values, NaN gradients (a sqrt at zero)."""

    name, differentiable = "nan_gradient", True

    def __call__(self, pixels, prompts):
        return (pixels.flatten(1) * 0).sqrt().sum(1)


class NaNValue:
    name, differentiable = "nan_value", True

    def __call__(self, pixels, prompts):
        return pixels.flatten(1).sum(1) * float("nan")


@pytest.mark.parametrize("method,reward,what", [("ntrk", NaNGradient(), "gradient"), ("dps", NaNGradient(), "gradient"),
                                                ("bon", NaNValue(), "value")])
def test_a_non_finite_reward_stops_with_the_step_and_the_reward_named(method, reward, what):
    """Today's main zeroed NaN gradients silently (the sample equalled method=base) and wrote NaN scores."""
    model = GaussianMixtureFlow(torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), 0.1)
    p = Problem(FlowSDE(), counted(model), "", reward, 5, torch.Generator().manual_seed(0))
    kw = {"particles": 2} if method == "bon" else {}
    with pytest.raises(NonFiniteReward) as err:
        make_method(method, whitening={"name": "norm", "blocks": []}, **kw)(p) if method == "ntrk" else \
            make_method(method, **kw)(p)
    msg = str(err.value)
    assert f"non-finite reward {what}" in msg and "step" in msg and reward.name in msg and "\n" not in msg


def test_records_are_valid_json_or_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "r.json", {"score": float("nan")})
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 2. identity
def test_the_run_identity_covers_prompt_texts_and_thread_count(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a handwritten 1\n")
    cfg = composed(f"+task.prompts_file={prompts}")
    before = config_hash(cfg)
    prompts.write_text("a handwritten 2\n")
    assert config_hash(cfg) != before  # same file name, other prompts
    threads, here = torch.get_num_threads(), config_hash(cfg)
    try:
        torch.set_num_threads(1 if threads != 1 else 2)
        other = config_hash(cfg)
    finally:
        torch.set_num_threads(threads)
    assert other != here


def test_a_rerun_with_edited_prompts_refuses_to_mix_them(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a handwritten 1\n")
    run = [f"+task.prompts_file={prompts}", "model=mini_exact", "method=base", "steps=2", "evaluate=false",
           "progress=false", f"out_dir={tmp_path}/r"]
    generate(composed(*run))
    prompts.write_text("a handwritten 4\n")
    with pytest.raises(MixedResults, match="prompt set"):
        generate(composed(*run))


# ----------------------------------------------------------------------------- 3. damaged files
@pytest.fixture
def finished(tmp_path):
    args = ["model=mini_exact", "method=base", "steps=2", "evaluate=false", "progress=false",
            "task.prompts=[a handwritten 1,a handwritten 2]", f"out_dir={tmp_path}/r"]
    generate(composed(*args))
    return RunDir(tmp_path / "r"), args


@pytest.mark.parametrize("damage", ["truncated latent", "garbled item record", "deleted image", "garbled summary"])
def test_damaged_artifacts_are_regenerated_never_trusted(finished, damage, capsys):
    run, args = finished
    name = run.read_summary().items[1]
    good = torch.load(run.latent_path(name))
    if damage == "truncated latent":
        data = run.latent_path(name).read_bytes()
        run.latent_path(name).write_bytes(data[: len(data) // 2])
    elif damage == "garbled item record":
        run.item_record_path(name).write_text('{"index": 1, "pro')
    elif damage == "deleted image":
        (run.item_dir(name) / "image.png").unlink()
    else:
        run.summary_path.write_text("{not json")
    generate(composed(*args))
    out = capsys.readouterr().out
    assert "already done:" not in out  # the finished-run shortcut was not taken
    if damage != "garbled summary":
        assert "regenerating" in out and "1 of 2 items to generate" in out
    assert run.item_problem(name) is None and run.read_summary().items[1] == name
    assert torch.equal(torch.load(run.latent_path(name)), good)  # the same seed stream gives the same item


def test_a_garbled_evaluation_is_redone_and_tables_name_it(finished, capsys):
    from ntrk_bench.evaluate import evaluate

    run, _ = finished
    evaluate([run], only=["mini_bold_heldout"], progress=False)
    run.eval_path("mini_bold_heldout").write_text("[garbled")
    assert not run.has_eval("mini_bold_heldout")
    evaluate([run], only=["mini_bold_heldout"], progress=False)
    assert run.read_eval("mini_bold_heldout").scores["mini_bold_heldout"]


# ----------------------------------------------------------------------------- 4. a multirun survives a bad job
def test_one_bad_value_does_not_abort_a_multirun(tmp_path):
    args = [sys.executable, str(ROOT / "run.py"), "-m", "method=dps", "method.scale=1,-5,2", "steps=2",
            "model=mini_exact", "progress=false", "evaluate=false", "task.prompts=[a handwritten 1]",
            f"results_root={tmp_path}/runs", f"hydra.sweep.dir={tmp_path}/sweep"]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    summaries = [json.loads(p.read_text())["config"]["method"]["scale"] for p in (tmp_path / "runs").rglob("record.json")
                 if p.parent.parent.name != "items"]
    assert sorted(summaries) == [1.0, 2.0]  # the jobs before and after the bad one ran
    assert out.returncode == 2 and "1 job(s) failed" in out.stderr and "method.scale=-5: must be >= 0" in out.stderr
    assert "Traceback" not in out.stderr


# ----------------------------------------------------------------------------- 5. bad input, before any model loads
@pytest.mark.parametrize("override,message", [
    ("task.prompts=[]", "task.prompts: no prompts"),
    ("task.prompts=[1,2]", "task.prompts: every prompt must be a string"),
    ("task.target=nosuch", "task.target='nosuch': unknown reward"),
    ("seed=100000000000000000000", "seed=100000000000000000000: must be in"),
    ("steps=100000000", "steps=100000000: must be in"),
])
def test_bad_input_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        validate(composed(override))


@pytest.mark.parametrize("content,message", [(b"", "no prompts"), (b"\xff\xfe\x00\x81", "not UTF-8 text"),
                                             (None, "no such file")])
def test_bad_prompt_files_are_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "prompts.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"task.prompts_file.*{message}"):
        validate(composed(f"+task.prompts_file={path}"))


def test_an_out_dir_under_a_file_is_refused_before_loading(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        validate(composed(f"out_dir={tmp_path}/f/run"))


# ----------------------------------------------------------------------------- 6. concurrent identical runs
def test_concurrent_identical_runs_share_the_items_instead_of_redoing_them(tmp_path):
    """Three identical commands into one folder: every item is generated once (claim files), all three finish."""
    import re

    args = [sys.executable, str(ROOT / "run.py"), "model=mini", "method=base", "steps=12", "progress=false",
            "evaluate=false", f"out_dir={tmp_path}/r"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-500:] for _, e in outs]
    made = 0
    for out, _ in outs:
        m = re.search(r"(\d+) of (\d+) items generated by this process", out)
        started = re.search(r"(\d+) of 10 items to generate", out)
        made += int(m.group(1)) if m else int(started.group(1)) if started else 0
    assert made == 10, [o for o, _ in outs]
    run = RunDir(tmp_path / "r")
    assert len(run.read_summary().items) == 10 and not list((tmp_path / "r").rglob(".claim"))


@pytest.mark.parametrize("override,message", [("out_dir={tmp}/file/run", "is a file, not a folder"),
                                              ("logger=wandb", "logger=wandb needs wandb"),
                                              ("seed=1e20", "seed"),  # a bad value: no empty run folder
                                              ("hydra.run.dir={tmp}/runs", "set out_dir=PATH instead"),
                                              ("+eval_envs.nosuch=/bin/sh", "eval_envs.nosuch"),
                                              ("model=mini model.weights={tmp}/file/w.safetensors", "no such file")])
def test_command_line_errors_are_one_line_before_anything_is_created(tmp_path, override, message):
    pytest.importorskip("hydra")
    if override.startswith("logger") and __import__("importlib").util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    (tmp_path / "file").write_text("")
    model = [] if "model=" in override else ["model=mini_exact"]
    args = [sys.executable, str(ROOT / "run.py"), *override.format(tmp=tmp_path).split(), *model, "steps=2",
            "progress=false", f"results_root={tmp_path}/runs"]
    out = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and message in out.stderr
    assert not (tmp_path / "runs").exists()


def _write_many(path, tag, n):
    from ntrk_bench.io import write_json_atomic

    for i in range(n):
        write_json_atomic(path, {"writer": tag, "i": i, "pad": "x" * 20_000})


def test_concurrent_writers_of_one_file_never_publish_a_half_written_copy(tmp_path):
    """Concurrent identical runs all write the run's summary and grid: each writer has its own temporary
    file, so no rename fails and every read parses."""
    import multiprocessing

    path = tmp_path / "record.json"
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_write_many, args=(path, t, 150)) for t in range(2)]
    for w in writers:
        w.start()
    reads = 0
    while any(w.is_alive() for w in writers):
        if path.exists():
            json.loads(path.read_text())
            reads += 1
    for w in writers:
        w.join()
    assert all(w.exitcode == 0 for w in writers) and reads > 0
    assert not list(tmp_path.glob("*.tmp*"))


def test_evaluate_names_damaged_items_and_bad_envs_in_one_line(finished, capsys):
    from ntrk_bench.evaluate import main

    run, _ = finished
    name = run.read_summary().items[0]
    held = run.held_out()[0]
    for args, message in ((["--env", held], "NAME=PYTHON"), (["--env", "nosuch=/bin/sh"], "holds it out"),
                          (["--env", f"{held}=/nonexistent/python"], "no such interpreter")):
        with pytest.raises(SystemExit) as err:
            main([str(run.path), "--no-progress", *args])
        assert message in str(err.value), err.value
    (run.item_dir(name) / "record.json").write_text('{"index": 0, "pro')
    with pytest.raises(SystemExit) as err:
        main([str(run.path), "--no-progress"])
    assert err.value.code == 1 and f"item {name}: record.json does not read back" in capsys.readouterr().err


def test_a_read_only_out_dir_is_one_line(tmp_path):
    """A read-only file system (a tmpfs mounted read-only: root can write into any read-only folder)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only file system here")
    try:
        args = [sys.executable, str(ROOT / "run.py"), f"out_dir={ro}/run", "model=mini_exact", "steps=2",
                "progress=false"]
        out = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [
            f"error: out_dir='{ro}/run': {ro} is not writable"]
    finally:
        subprocess.run(["umount", str(ro)])
