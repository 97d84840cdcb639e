"""The structure the rest builds on: one device owner, methods that own their cost model, a core that never
imports upward, a package that runs installed, and outputs bitwise equal to the code before the restructure."""
import ast
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ntrk_bench.config import CONF_DIR
from ntrk_bench.generate import generate, method_of
from ntrk_bench.method import Problem
from ntrk_bench.mini.net import MiniLearnedFlow
from ntrk_bench.models import counted
from ntrk_bench.placement import PlacementError, PlacementGuard
from ntrk_bench.rundir import RunDir
from ntrk_bench.sde import FlowSDE

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ntrk_bench"


# ----------------------------------------------------------------------------- imports
CORE = ["paths", "sde", "sampling", "ntrk", "method", "limits", "placement", "fields", "diagnostics", "hub", "io",
        "config", "whitening", "models", "mini"]
UPWARD = ("baselines", "rewards", "ntrk_bench.generate", "ntrk_bench.evaluate", "ntrk_bench.tables",
          "ntrk_bench.report", "ntrk_bench.cli", "ntrk_bench.schema", "ntrk_bench.rundir", "ntrk_bench.tracking")
STAGES = ["generate", "evaluate", "tables", "report", "schema", "cli", "rundir", "tracking"]


def imported(path: Path) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved against ntrk_bench)."""
    names, pkg = set(), ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = pkg.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            names |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return names


def files(names):
    for n in names:
        p = PKG / n
        yield from (sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")])


def test_the_core_never_imports_a_stage_a_baseline_or_a_reward():
    bad = {f"{f.relative_to(ROOT)} imports {m}" for f in files(CORE) for m in imported(f)
           if any(m == u or m.startswith(u + ".") for u in UPWARD)}
    assert not bad, sorted(bad)


def test_the_stages_build_methods_and_rewards_from_their_configs_only():
    bad = {f"{f.relative_to(ROOT)} imports {m}" for f in files(STAGES) for m in imported(f)
           if m.split(".")[0] in ("baselines", "rewards")}
    assert not bad, sorted(bad)


# ----------------------------------------------------------------------------- placement
def small_configs():
    """Every method, at a budget small enough for a unit test (whitening: the cheap 2OS option)."""
    return {"base": [], "bon": ["nfe=6"], "ntrk": [], "meanshift": [], "dps": ["method.particles=2"],
            "freedom": ["method.travel=[0.4,0.7]"], "svdd": ["nfe=6"], "rbf": ["nfe=9"], "das": ["nfe=6"],
            "psi": ["method.particles=2", "method.chains=1", "method.burn_in=1", "method.mcmc_steps=2"],
            "psi_ntrk": ["method.particles=2", "method.chains=1", "method.burn_in=1", "method.mcmc_steps=2",
                         "method.proposal=ntrk"],
            "dno": ["nfe=6", "method.permutations=1"]}


def composed(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["run_name=x", *overrides])


@pytest.mark.parametrize("case", sorted(small_configs()))
def test_every_method_hands_model_reward_and_W_the_owners_device_and_dtype(case):
    """The mini model declared in float64: a tensor any method made without asking the owner (a bare
    torch.randn, a .float(), a CPU default) reaches the model, the reward or W as float32 and is caught."""
    name = "psi" if case.startswith("psi") else case
    cfg = composed(f"method={name}", "whitening=twoos", "steps=3", *small_configs()[case])
    flow = MiniLearnedFlow(dtype="float64")
    guard = PlacementGuard(flow.device, torch.float64)
    model = counted(guard("model", flow))
    from ntrk_bench.config import build_reward

    reward = build_reward("mini_bold")
    p = Problem(FlowSDE(), model, "a handwritten 3", reward, cfg.steps, torch.Generator().manual_seed(0), guard=guard)
    res = method_of(cfg)(p)
    assert res.x0.dtype == torch.float64 and guard.checked > 0 and not guard.violations
    if cfg.get("nfe"):
        assert model.counter.nfe == cfg.nfe


def test_the_placement_check_catches_a_tensor_made_without_the_owner():
    flow = MiniLearnedFlow(dtype="float64")
    guard = PlacementGuard(flow.device, torch.float64)
    with pytest.raises(PlacementError, match="float32"):
        guard("model", flow).velocity(torch.randn(1, *flow.latent_shape), torch.zeros(1, dtype=torch.float64), None)


def test_chunked_evaluation_gives_the_same_answer_and_nfe():
    """batch_size bounds the samples per denoiser call; forward and backward chunks change nothing."""
    from ntrk_bench.config import build_reward

    cfg = composed("method=das", "nfe=12", "steps=3")
    out = {}
    for bs in (None, 3):
        model = counted(MiniLearnedFlow())
        p = Problem(FlowSDE(), model, "a handwritten 5", build_reward("mini_bold"), 3, torch.Generator().manual_seed(2),
                    batch_size=bs)
        out[bs] = (method_of(cfg)(p).x0, model.counter.nfe, model.counter.calls)
    torch.testing.assert_close(out[None][0], out[3][0], rtol=1e-5, atol=1e-5)
    assert out[None][1] == out[3][1] == 12 and out[3][2] > out[None][2]  # same NFE, more (smaller) calls


# ----------------------------------------------------------------------------- bitwise equal to the old layout
REFERENCE = json.loads((Path(__file__).parent / "data" / "pre_restructure.json").read_text())


@pytest.fixture
def reference_whitening(monkeypatch):
    """The whitening operator as it was when the reference was recorded (kept by the benchmark), so that this
    test isolates the restructure from the faster operator (whose own tests bound its difference)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import whitening_reference

    import ntrk_bench.method as method_module
    import ntrk_bench.whitening as whitening_module

    monkeypatch.setattr(whitening_module, "Whitening", whitening_reference.Whitening)
    monkeypatch.setattr(method_module, "_OPERATORS", {})
    yield
    sys.path.remove(str(ROOT / "scripts"))


def test_mini_outputs_are_bitwise_those_of_the_code_before_the_restructure(tmp_path, reference_whitening, capsys):
    """Every method's latents, recorded by the generation stage of the previous layout (commit 243dd5a; same
    seeds, one thread, the target classifier mini_align as target; gamma fixed where the default is auto, whose fade below its cap
    came later), hash to the same bytes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, case in REFERENCE.items():
            d = tmp_path / name
            cfg = composed(*case["overrides"].split(), "steps=5", "evaluate=false", "progress=false",
                           "task.prompts=[a handwritten 3,a handwritten 7]", "task.target=mini_align", f"out_dir={d}")
            generate(cfg)
            run = RunDir(d)
            got = [hashlib.sha256(torch.load(p).contiguous().numpy().tobytes()).hexdigest() for p in run.latents()]
            assert got == case["sha256"], name
            assert [it.nfe for _, it in run.items()] == case["nfe"], name
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- a method is a module and a YAML
TOY = '''
"""A toy method: a corrector chain (two denoiser passes per step, the first one discarded)."""
from dataclasses import dataclass
from typing import ClassVar

from ntrk_bench.limits import at_least
from ntrk_bench.method import Chain, Cost


@dataclass
class Corrector(Chain):
    shrink: float = 0.9
    label: ClassVar[str] = "Corrector"
    ledger_name: ClassVar[str] = "corrector"
    limits: ClassVar[dict] = {"shrink": at_least(0)}

    def cost(self, steps):
        return Cost(0, 2 * steps)

    def noise_rule(self, problem):
        def rule(ev, eps, k):
            problem.evaluate(ev.den.x0, 0.5, value=False)  # a second pass, counted
            return self.shrink * eps
        return rule
'''


def test_a_new_method_is_one_module_and_one_yaml(tmp_path):
    """Budgets, validation, generation and tables ask the method; nothing else is edited."""
    (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY))
    conf = tmp_path / "conf" / "method"
    conf.mkdir(parents=True)
    (conf / "corrector.yaml").write_text("_target_: toy_method.Corrector\nname: corrector\nparticles: 1\nshrink: 0.9\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    base = [sys.executable, str(ROOT / "run.py"), f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "method=corrector",
            "steps=3", "progress=false", "evaluate=false", "task.prompts=[a handwritten 2,a handwritten 4]"]
    ok = subprocess.run([*base, "nfe=12", f"out_dir={tmp_path}/runs/c"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    run = RunDir(tmp_path / "runs" / "c")
    summary = run.read_summary()
    assert summary.per_sample["nfe"] == [12, 12] and summary.display_name == "Corrector"
    assert summary.ledger == {"method": "corrector", "augment": "", "particles": 2, "steps": "3", "nfe": 12}
    bad = subprocess.run([*base, "nfe=7", f"out_dir={tmp_path}/runs/x"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "nfe=7 cannot be spent exactly by corrector" in bad.stderr
    bad = subprocess.run([*base, "method.shrink=-1", f"out_dir={tmp_path}/runs/y"], capture_output=True, text=True,
                         env=env)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: method.shrink=-1: must be >= 0"]
    tables = subprocess.run([sys.executable, "-m", "ntrk_bench.tables", "--root", str(tmp_path / "runs"), "--out",
                             str(tmp_path / "tables")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert tables.returncode == 0, tables.stderr[-2000:]
    assert "corrector" in "".join(p.read_text() for p in (tmp_path / "tables").rglob("*.csv"))


# ----------------------------------------------------------------------------- installed as a wheel
def test_the_built_wheel_runs_from_anywhere_with_its_own_configs(tmp_path):
    """pip install . (not editable): configs, prompts and the paper's tables ship inside the package."""
    import shutil

    src = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "results", "build", "*.egg-info", "__pycache__", "tests", "docs"))
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    site = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           *map(str, (tmp_path / "dist").glob("*.whl"))], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-2000:]
    assert (site / "ntrk_bench" / "conf" / "method" / "ntrk.yaml").exists()
    assert (site / "ntrk_bench" / "data" / "paper" / "paper_results.csv").exists()
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONSAFEPATH": "1"}
    r = subprocess.run([sys.executable, "-m", "ntrk_bench", "method=dps", "steps=2", "progress=false", "evaluate=false",
                        "task.prompts=[a handwritten 1]", "out_dir=out"], capture_output=True, text=True, env=env,
                       cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    assert RunDir(work / "out").read_summary().method == "dps"
    assert str(site) in subprocess.run([sys.executable, "-c", "import ntrk_bench; print(ntrk_bench.__file__)"],
                                       capture_output=True, text=True, env=env, cwd=work).stdout
