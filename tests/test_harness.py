"""The harness: every experiment and paper combination composes and validates; bad values fail on one line;
the evaluation stage (in process and behind a subprocess boundary) and `make tables` on a small sweep."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from ntrk_bench.config import CONF_DIR
from ntrk_bench.schema import ConfigError, validate

ROOT = Path(__file__).resolve().parent.parent


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def composed(*overrides, hydra=False):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def sweep(cfg) -> list[list[str]]:
    """The jobs an experiment's sweeper expands to (Cartesian product of its params)."""
    import itertools

    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    return [[f"{k}={v}" for k, v in zip(params, combo)] for combo in itertools.product(*params.values())]


PAPER = {"table2": ("flux_schnell", {"aesthetic", "text_aligned"}, 20), "table3": ("wan21_1_3b", {"video"}, 4),
         "table4": ("flux_dev", {"text_aligned"}, 6), "table10": ("flux_schnell", {"aesthetic"}, 3),
         "table11": ("flux_schnell", {"counting"}, 9), "table12": ("zimage", {"aesthetic"}, 20),
         "table13": ("zimage", {"text_aligned"}, 20), "table14": ("flux_schnell", {"aesthetic"}, 22),
         "table15": ("flux_schnell", {"text_aligned"}, 22), "ablation_gamma": ("flux_schnell", {"aesthetic"}, 7),
         "ablation_components": ("flux_schnell", {"aesthetic"}, 3),
         "ablation_operators": ("flux_schnell", {"aesthetic"}, 4)}


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_expands_to_valid_jobs_of_the_papers_setting(name):
    """`python run.py -m experiment=X` expands to jobs that each compose and validate - without loading anything."""
    cfg = composed(f"experiment={name}", hydra=True)
    jobs = sweep(cfg)
    if name in PAPER:
        model, tasks, n = PAPER[name]
        assert cfg.model.name == model and len(jobs) == n, (cfg.model.name, len(jobs))
    seen_tasks = set()
    for job in jobs:
        job_cfg = composed(f"experiment={name}", *job)
        validate(job_cfg)
        seen_tasks.add(job_cfg.task.name)
        if job_cfg.get("nfe"):
            from ntrk_bench.generate import method_of

            method_of(job_cfg)  # the budget resolves
    if name in PAPER:
        assert seen_tasks == PAPER[name][1]
    if name == "table3":
        assert cfg.whitening.name == "full_wan" and cfg.model.fps == 16


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("task", ["aesthetic", "text_aligned", "counting", "video", "vlm_depth", "mini_aesthetic"])
def test_every_model_task_pair_composes_and_model_wins_over_the_tasks_default(model, task):
    cfg = composed(f"task={task}", f"model={model}")
    assert cfg.model.name == model and cfg.task.name == task
    validate(cfg)


def test_a_task_picks_its_paper_model_and_the_default_runs_offline():
    assert composed("task=aesthetic").model.name == "flux_schnell"
    assert composed("task=video").model.name == "wan21_1_3b" and composed("task=video").whitening.name == "full_wan"
    assert composed("experiment=table4", "model=mixgrpo").model.transformer_id == "tulvgengenr/MixGRPO"
    default = composed()
    assert default.model.name == "mini" and default.task.name == "mini_aesthetic" and default.evaluate


@pytest.mark.parametrize("override,key", [("steps=0", "steps"), ("method.gamma=1.5", "method.gamma"),
                                          ("method.particles=-1", "method.particles"), ("sde.grid=cubic", "sde.grid"),
                                          ("whitening.level=1.0", "whitening.level"), ("nfe=0", "nfe"),
                                          ("method.gamma=strong", "method.gamma"), ("seed=-3", "seed")])
def test_bad_values_are_one_line_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key.replace('.', '[.]')}"):
        validate(composed(override))


def test_budget_mismatch_and_unknown_method_parameters_are_refused():
    with pytest.raises(ConfigError, match="nfe=130 cannot be spent exactly by svdd"):
        validate(composed("method=svdd", "nfe=130"))
    with pytest.raises(ConfigError, match="method.bogus: unknown key"):
        validate(composed("+method.bogus=1"))


def test_bad_value_on_the_command_line_exits_before_any_model_loads(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "task=aesthetic", "method.gamma=3",
                          f"out_dir={tmp_path}/r"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: method.gamma=3: must be in [0, 1] (NTRK mixes gamma W(g) with sqrt(1 - gamma^2) noise) or auto"]


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """A 2 x 2 mini sweep (methods x seeds) through Hydra's multirun, generation only (evaluate=false)."""
    tmp = tmp_path_factory.mktemp("sweep")
    args = [sys.executable, str(ROOT / "run.py"), "-m", "model=mini_exact", "row=base_25,ntrk_25", "seed=0,1",
            "task.prompts=[a handwritten 2,a handwritten 7,a handwritten 9]", "progress=false", "evaluate=false",
            f"results_root={tmp}/runs", f"hydra.sweep.dir={tmp}/sweep"]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp


def test_evaluation_stage_scores_every_run_once_and_resumes(small_sweep):
    runs = sorted(p.parent for p in (small_sweep / "runs").rglob("record.json") if p.parent.parent.name != "items")
    assert len(runs) == 4 and not any((r / "eval").exists() for r in runs)
    cmd = [sys.executable, "-m", "ntrk_bench.evaluate", str(small_sweep / "runs"), "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    for r in runs:
        assert sorted(p.stem for p in (r / "eval").glob("*.json")) == ["mini_align_heldout", "mini_bold_heldout",
                                                                       "mini_quality"]
    stamp = {p: p.stat().st_mtime_ns for p in (small_sweep / "runs").rglob("eval/*.json")}
    (runs[0] / "eval" / "mini_bold_heldout.json").unlink()  # as if killed before this file
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and (runs[0] / "eval" / "mini_bold_heldout.json").exists()
    redone = runs[0] / "eval" / "mini_bold_heldout.json"
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items() if p != redone)  # nothing else recomputed


def test_an_evaluator_in_another_environment_gives_the_same_scores(small_sweep, tmp_path):
    """The subprocess boundary: the same evaluator run by another python (here: this one) via --env."""
    import shutil

    run = next(p.parent for p in (small_sweep / "runs").rglob("record.json")
               if p.parent.parent.name != "items" and "ntrk" in str(p))
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    out = subprocess.run([sys.executable, "-m", "ntrk_bench.evaluate", str(copy), "--only", "mini_bold_heldout",
                          "--env", f"mini_bold_heldout={sys.executable}", "--no-progress"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and "in its own environment" in out.stdout, out.stderr[-2000:]
    from ntrk_bench.evaluate import score_run

    isolated = json.loads((copy / "eval" / "mini_bold_heldout.json").read_text())["scores"]
    local = score_run(copy, "mini_bold_heldout").scores
    assert isolated == local and len(local["mini_bold_heldout"]) == 3


def test_tables_match_the_records(small_sweep, tmp_path):
    """`make tables` on the sweep: each cell is the mean (± SE) over prompts and seeds of the records."""
    subprocess.run([sys.executable, "-m", "ntrk_bench.evaluate", str(small_sweep / "runs"), "--no-progress"],
                   check=True, cwd=ROOT, capture_output=True, timeout=600)
    paper = tmp_path / "paper"
    paper.mkdir()
    pd.DataFrame([dict(table="tableX", model="flux", task="aesthetic", method="base", augment="", particles="1",
                       steps="25", nfe="25", metric="aesthetic", role="target", value="6.0")]
                 ).to_csv(paper / "paper_results.csv", index=False)
    pd.DataFrame(columns=["table", "model", "task", "method", "augment", "particles", "steps", "nfe", "metric",
                          "role", "value"]).to_csv(paper / "paper_ablations.csv", index=False)
    out = tmp_path / "tables"
    res = subprocess.run([sys.executable, "-m", "ntrk_bench.tables", "--root", str(small_sweep / "runs"),
                          "--out", str(out), "--paper", str(paper)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    table = pd.read_csv(out / "mini_aesthetic_mini_exact.csv")
    assert sorted(table["method"]) == ["base", "ntrk"] and set(table["n"]) == {6}
    for method in ("base", "ntrk"):
        values = []
        for rec in (small_sweep / "runs").rglob("record.json"):
            r = json.loads(rec.read_text())
            if r.get("method") == method and "ledger" in r:
                values += r["per_sample"]["mini_bold"]
        mean = sum(values) / len(values)
        cell = table.loc[table["method"] == method, "mini_bold"].item()
        assert float(cell.split(" ± ")[0]) == pytest.approx(mean, rel=1e-3), (method, cell, mean)
    for suffix in (".md", ".tex"):
        assert (out / f"mini_aesthetic_mini_exact{suffix}").read_text().count("ntrk") >= 1
    assert (out / "mini_aesthetic_mini_exact_reward_vs_nfe.png").stat().st_size > 0
    assert (out / "mini_aesthetic_mini_exact_frontier_mini_bold_heldout.png").stat().st_size > 0


def test_paper_tables_keep_the_papers_rows_and_mark_missing_cells():
    from ntrk_bench.tables import paper_table

    paper = pd.DataFrame([dict(method=m, augment=a, particles=p, steps="25", nfe=n, metric=k, value=v)
                          for m, a, p, n in [("base", "", "1", "25"), ("ntrk", "bon", "4", "100")]
                          for k, v in [("aesthetic", "6.0"), ("pickscore", "0.21")]])
    ours = pd.DataFrame([dict(model="flux_schnell", method="base", augment="", particles=1, steps=25, nfe=25,
                              metric="aesthetic", mean=6.5, se=0.1, n=45)])
    t = paper_table(ours, paper)
    assert list(t["method"]) == ["base", "ntrk†"]
    assert t.loc[0, "aesthetic"] == "6.5 ± 0.1" and t.loc[0, "aesthetic (diff)"] == "+0.5"
    assert t.loc[0, "pickscore"] == "—" and t.loc[1, "aesthetic"] == "—" and t.loc[1, "aesthetic (paper)"] == "6"


def test_wandb_run_ids_are_deterministic_per_job_and_offline(tmp_path, monkeypatch):
    from ntrk_bench.tracking import run_id

    assert run_id(tmp_path / "a") == run_id(str(tmp_path / "a")) != run_id(tmp_path / "b")
    cfg = composed("logger=wandb")
    assert cfg.logger.mode == "offline" and cfg.logger.group == cfg.experiment_name
    assert composed("logger=wandb", "experiment=table14").logger.group == "table14"  # one group per sweep


def test_results_report_is_generated_from_the_records(small_sweep, tmp_path):
    """docs/RESULTS.md's generator: its sections are there and its numbers are the records' means."""
    from ntrk_bench.report import build

    subprocess.run([sys.executable, "-m", "ntrk_bench.evaluate", str(small_sweep / "runs"), "--no-progress"],
                   check=True, cwd=ROOT, capture_output=True, timeout=600)
    text = build(small_sweep / "runs", tmp_path / "tables", tmp_path / "RESULTS.md")
    for header in ("## The tasks", "## Exact tier (with the baselines): mini_aesthetic", "Paired differences",
                   "## NTRK's injection across steps", "## Two baseline anomalies"):
        assert header in text, header
    values = [v for rec in (small_sweep / "runs").rglob("record.json") if "ledger" in (r := json.loads(rec.read_text()))
              and r["method"] == "ntrk" for v in [sum(r["per_sample"]["mini_bold"]) / 3]]
    mean = sum(values) / len(values)  # mean over seeds of per-seed means: the report's convention
    row = next(line for line in text.splitlines() if line.startswith("| NTRK (25) "))
    assert f"{mean:.3g}" in row, (row, mean)


def test_frontier_measures_are_compared_at_matched_target():
    """The report's matched-target comparison interpolates along a method's curve sorted by target and refuses
    to extrapolate past it."""
    import math

    import pandas as pd

    from ntrk_bench.report import at_target, curve

    rows = [("A", s, m, v, 0.1) for s, (t, y) in {"0.1": (1.0, 10.0), "0.3": (3.0, 30.0), "0.2": (2.0, 14.0)}.items()
            for m, v in (("target", t), ("held", y))]
    cv = pd.DataFrame(rows, columns=["frontier", "strength", "metric", "mean", "se"]).assign(n=3)
    c = curve(cv, "A", "target", "held")
    assert list(c["strength"]) == ["0.1", "0.2", "0.3"]  # sorted by target, not by the order the runs came in
    y, se = at_target(c, 2.5)
    assert y == 22.0 and math.isclose(se, math.hypot(0.05, 0.05))
    assert at_target(c, 1.0)[0] == 10.0 and at_target(c, 3.0)[0] == 30.0
    assert math.isnan(at_target(c, 3.5)[0]) and math.isnan(at_target(c, 0.5)[0])
