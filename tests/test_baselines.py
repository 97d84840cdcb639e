"""Baselines: the measured NFE ledger against the paper's tables, and that every method works."""
import pytest
import torch
from conftest import make_method

from ntrk_bench.config import load_group
from ntrk_bench.generate import method_of
from ntrk_bench.method import BudgetError, Problem
from ntrk_bench.models import GaussianMixtureFlow, counted
from ntrk_bench.sde import FlowSDE
from ntrk_bench.tables import paper_rows
from rewards import LinearReward

IMPLEMENTED = {"base", "bon", "dps", "freedom", "svdd", "ntrk", "das", "psi", "rbf", "dno"}


def toy(shape=(1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    model = GaussianMixtureFlow(torch.randn(3, *shape, generator=g), 0.2 ** 2)
    return model, LinearReward(torch.randn(shape, generator=g) / shape[-1])


def all_rows():
    return paper_rows()  # the paper's CSV ships with the package


def rows():
    return [r for r in all_rows() if r.method in IMPLEMENTED]


def test_ledger_covers_the_paper_rows_of_implemented_methods():
    got = {(r.method, r.augment, r.particles, r.steps, r.nfe) for r in rows()}
    assert ("freedom", "bon", 13, 25, 533) in got and ("ntrk", "bon", 5, 100, 500) in got and len(got) == 34
    assert ("psi", "", 10, "25+25", 500) in got and ("ntrk", "psi", 10, "25+25", 500) in got


def row_configs():
    from hydra import compose, initialize_config_dir

    from ntrk_bench.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return {p.stem: compose("config", overrides=[f"row={p.stem}", "whitening=twoos", "run_name=x"])
                for p in sorted((CONF_DIR / "row").glob("*.yaml"))}


def test_every_table_row_spends_its_budget_exactly():
    """Each conf/row option, built as run.py builds it, *measures* the NFE it names."""
    model, reward = toy()
    for name, cfg in row_configs().items():
        method = method_of(cfg)
        cm = counted(model)
        method(Problem(FlowSDE(), cm, "", reward, cfg.steps, torch.Generator().manual_seed(0)))
        assert cm.counter.nfe == cfg.nfe, (name, cm.counter.snapshot())


def test_every_paper_row_has_a_table_row():
    """Every (method, particles, steps, NFE) of paper_results.csv is one conf/row option's ledger row."""
    ours = {}
    for name, cfg in row_configs().items():
        r = method_of(cfg).ledger_row(cfg.steps, cfg.nfe)
        ours[(r.method, r.particles, str(r.steps), r.nfe)] = ours[(r.method, r.nfe)] = name
    for row in all_rows():
        key = (row.method, row.nfe) if row.particles == 40 or row.method == "psi" and row.nfe == 1000 else \
            (row.method, row.particles, str(row.steps), row.nfe)
        assert key in ours, row


def test_each_method_spends_a_budget_by_its_own_cost_model():
    budget = lambda name, nfe: make_method(name).with_budget(nfe, 25)  # noqa: E731
    assert budget("ntrk", 100).particles == 4 and budget("svdd", 500).candidates == 20
    assert budget("psi", 500).particles == 10 and budget("freedom", 533).particles == 13
    assert (budget("rbf", 500).particles, budget("rbf", 500).budget) == (20, 500)
    assert budget("dno", 500).iterations == 20 and budget("dno", 500).ledger_row(25, 500).particles == 1
    with pytest.raises(BudgetError, match="cannot be spent exactly"):
        budget("freedom", 100)
    with pytest.raises(BudgetError, match="method=bon"):
        budget("base", 100)


@pytest.mark.parametrize("name,params", [("bon", {"particles": 8}), ("dps", {"scale": 10.0}),
                                         ("dps", {"particles": 4, "scale": 10.0}), ("freedom", {"rho": 0.5}),
                                         ("svdd", {"candidates": 8}), ("ntrk", {"gamma": 0.3}),
                                         ("das", {"particles": 8, "alpha": 0.1}), ("psi", {"particles": 8, "chains": 4}),
                                         ("rbf", {"particles": 8}), ("dno", {"iterations": 4, "lr": 0.05})])
def test_every_method_raises_the_target_reward_over_base(name, params):
    model, reward = toy((4, 32, 32), seed=1)
    base_r, meth_r = [], []
    for seed in range(6):
        for method, out in ((make_method("base"), base_r), (make_method(name, **params), meth_r)):
            p = Problem(FlowSDE(), counted(model), "", reward, 25, torch.Generator().manual_seed(seed))
            out.append(method(p).reward)
    assert sum(meth_r) / 6 > sum(base_r) / 6 + 0.05, (name, base_r, meth_r)


# ----------------------------------------------------------------------------- SMC correctness
from baselines.psi import PsiSampler  # noqa: E402
from baselines.smc import SMC, BaseProposal, NoiseTiltProposal, TwistProposal, das_tempering, ssp_resample  # noqa: E402
from ntrk_bench.sampling import Evaluation  # noqa: E402
from ntrk_bench.whitening import Whitening  # noqa: E402


def test_proposal_log_ratios_match_the_gaussian_densities():
    g = torch.Generator().manual_seed(3)
    mean, grad = torch.randn(5, 1, 8, 8, generator=g), torch.randn(5, 1, 8, 8, generator=g)
    eps, std, lam, alpha = torch.randn(5, 1, 8, 8, generator=g), 0.3, 0.7, 0.5
    ev = Evaluation(None, None, grad)
    normal = torch.distributions.Normal
    x, lr = TwistProposal()(ev, mean, std, lam, alpha, eps)
    shifted = mean + std ** 2 * lam / alpha * grad
    expect = (normal(mean.double(), std).log_prob(x.double()) - normal(shifted.double(), std).log_prob(x.double())).flatten(1).sum(1)
    torch.testing.assert_close(lr, expect)
    W = Whitening(load_group("whitening", "twoos"), (1, 8, 8))
    x, lr = NoiseTiltProposal(0.4, W)(ev, mean, std, lam, alpha, eps)
    center, scale = mean + std * 0.4 * W(grad), std * (1 - 0.4 ** 2) ** 0.5
    torch.testing.assert_close(x, center + scale * eps, rtol=1e-5, atol=1e-5)
    expect = (normal(mean.double(), std).log_prob(x.double()) - normal(center.double(), scale).log_prob(x.double())).flatten(1).sum(1)
    torch.testing.assert_close(lr, expect, rtol=1e-5, atol=1e-4)
    x, lr = BaseProposal()(ev, mean, std, lam, alpha, eps)
    assert torch.equal(lr, torch.zeros(5, dtype=torch.float64))


def test_ssp_resampling_is_unbiased_and_keeps_floor_or_ceil_copies():
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([0.5, 0.25, 0.15, 0.1])
    counts = torch.stack([torch.bincount(ssp_resample(w.log(), g), minlength=4) for _ in range(4000)]).double()
    torch.testing.assert_close(counts.mean(0), (w * 4).double(), atol=0.03, rtol=0)
    assert torch.all((counts - (w * 4).floor()).abs() <= 1)


@pytest.mark.parametrize("kind", ["twist", "base_proposal", "das", "psi"])
def test_smc_weighted_particles_estimate_the_closed_form_tilted_mean(kind):
    """Gaussian prior N(m, s^2 I), linear reward <w, x>: the tilted law exp(r / alpha) p is N(m + s^2 w / alpha,
    s^2 I), so E[<w, x>] = <w, m> + s^2 |w|^2 / alpha. Replicated SMC estimates must agree within MC error
    (and move the whole way from the prior's value)."""
    s, alpha, reps, n = 0.5, 1.0, 12, 256
    g = torch.Generator().manual_seed(0)
    m0 = torch.randn(1, 1, 8, 8, generator=g) * 0.5
    w = torch.randn(1, 8, 8, generator=g)
    w = w / w.norm() * 2.0
    model, reward = GaussianMixtureFlow(m0, s ** 2), LinearReward(w)
    prior, truth = float((w * m0[0]).sum()), float((w * m0[0]).sum() + s ** 2 * (w * w).sum() / alpha)
    estimates = []
    for rep in range(reps):
        p = Problem(FlowSDE(), counted(model), "", reward, 100, torch.Generator().manual_seed(rep))
        if kind == "psi":
            x, _ = PsiSampler(particles=n, chains=n // 2, burn_in=10, mcmc_steps=10, alpha_mcmc=alpha).mcmc(p)
            x, logw, _ = SMC(n, alpha, TwistProposal()).run(p, x, tilted_init=True)
        else:
            proposal = BaseProposal() if kind == "base_proposal" else TwistProposal()
            x, logw, _ = SMC(n, alpha, proposal, das_tempering(100) if kind == "das" else None).run(p, p.initial_noise(n))
        estimates.append(float((torch.softmax(logw, 0).float() * reward(x)).sum()))
    e = torch.tensor(estimates)
    se = float(e.std() / reps ** 0.5)
    assert abs(float(e.mean()) - truth) < 4 * se, (kind, float(e.mean()), truth, se)
    assert 4 * se < truth - prior  # the test tells the tilted law from the prior at 4 standard errors
