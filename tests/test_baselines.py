"""Baselines: the measured NFE ledger against the paper's tables, and that every method works."""
from pathlib import Path

import pytest
import torch

from baselines import build_method
from baselines.budgets import Row, method_for, paper_rows
from ntrk_bench.config import load_group
from ntrk_bench.methods import Problem
from ntrk_bench.models import GaussianMixtureFlow, counted
from ntrk_bench.sde import FlowSDE
from rewards import LinearReward

PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / "tables" / "paper_results.csv"  # ../shared
IMPLEMENTED = {"base", "bon", "dps", "freedom", "svdd", "ntrk"}


def toy(shape=(1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    model = GaussianMixtureFlow(torch.randn(3, *shape, generator=g), 0.2 ** 2)
    return model, LinearReward(torch.randn(shape, generator=g) / shape[-1])


def rows():
    if not PAPER.exists():
        pytest.skip(f"the paper's tables are not beside the checkout ({PAPER})")
    return [r for r in paper_rows(PAPER) if r.method in IMPLEMENTED and r.augment != "psi"]


def test_ledger_covers_the_paper_rows_of_implemented_methods():
    got = {(r.method, r.augment, r.particles, r.steps, r.nfe) for r in rows()}
    assert ("freedom", "bon", 13, 25, 533) in got and ("ntrk", "bon", 5, 100, 500) in got and len(got) >= 20


def test_measured_nfe_equals_the_paper_ledger():
    model, reward = toy()
    twoos = load_group("whitening", "twoos")
    for row in rows():
        method, steps = method_for(row, whitening=twoos)
        cm = counted(model)
        method(Problem(FlowSDE(), cm, "", reward, steps, torch.Generator().manual_seed(0)))
        assert cm.counter.nfe == row.nfe, (row, cm.counter.snapshot())


def test_unimplemented_rows_say_so():
    with pytest.raises(NotImplementedError, match="das"):
        method_for(Row("das", "", 20, 25, 500))


@pytest.mark.parametrize("name,params", [("bon", {"particles": 8}), ("dps", {"scale": 10.0}),
                                         ("dps", {"particles": 4, "scale": 10.0}), ("freedom", {"rho": 0.5}),
                                         ("svdd", {"candidates": 8}), ("ntrk", {"gamma": 0.3})])
def test_every_method_raises_the_target_reward_over_base(name, params):
    model, reward = toy((4, 32, 32), seed=1)
    base_r, meth_r = [], []
    for seed in range(6):
        for method, out in ((build_method("base"), base_r), (build_method(name, **params), meth_r)):
            p = Problem(FlowSDE(), counted(model), "", reward, 25, torch.Generator().manual_seed(seed))
            out.append(method(p).reward)
    assert sum(meth_r) / 6 > sum(base_r) / 6 + 0.05, (name, base_r, meth_r)
