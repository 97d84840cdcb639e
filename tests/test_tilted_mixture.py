"""DAS and Psi-Sampler against an exact reward-tilted Gaussian mixture.

For p = sum_k w_k N(mu_k, diag s_k^2) and r(x) = <a, x>, the KL-regularised target of both samplers,
p(x) exp(r(x) / alpha) / Z (DAS, Kim et al. ICLR 2025; Psi-Sampler, Yoon et al. NeurIPS 2025; the reward enters
as r / alpha in ``baselines/smc.py``'s final twist), is again a Gaussian mixture: completing the square in each
component,

    N(x; mu_k, S_k) exp(<a, x> / alpha)
        = N(x; mu_k + S_k a / alpha, S_k) exp(<a, mu_k> / alpha + a' S_k a / (2 alpha^2)),

so component k keeps its covariance, moves its mean by S_k a / alpha, and its weight becomes proportional to
w_k exp(<a, mu_k> / alpha + a' S_k a / (2 alpha^2)). The samplers' final weighted particle sets (the set each
method picks its answer from) must estimate that law's component weights and mean reward, with an error that
shrinks as the particle count grows and, at many particles, stays within the Monte Carlo error over seeds.
"""
import math

import pytest
import torch
from conftest import make_method

from baselines.smc import SMC
from ntrk_bench.method import Problem
from ntrk_bench.models import GaussianMixtureFlow, counted
from ntrk_bench.sde import FlowSDE
from rewards import LinearReward

SHAPE = (1, 4, 4)  # 16 dims: well-separated components, and fast
ALPHA = 1.0  # both samplers' KL temperature (DAS ``alpha``; Psi-Sampler ``alpha`` = ``alpha_mcmc``)
STEPS = 25
FEW, MANY, SEEDS = 8, 128, 8


def mixture_and_reward() -> tuple[GaussianMixtureFlow, LinearReward]:
    """Two components (weights 0.7 / 0.3, stds 0.4 / 0.6) whose means are 5.1 apart (9-13 component stds); a
    reward along the line between them that prefers the lighter one, so the tilt reverses which dominates
    (component 0: weight 0.70 before, 0.23 after)."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(2, *SHAPE, generator=g)
    model = GaussianMixtureFlow(means, torch.tensor([0.4 ** 2, 0.6 ** 2]), torch.tensor([0.7, 0.3]))
    direction = means[1] - means[0]
    return model, LinearReward(0.4 * direction / direction.norm())


def tilted_mixture(model: GaussianMixtureFlow, direction: torch.Tensor, alpha: float) -> GaussianMixtureFlow:
    """The exact law p(x) exp(<a, x> / alpha) / Z of a diagonal Gaussian mixture p (completing the square per
    component, module docstring)."""
    a = direction.double().flatten()
    mu, var = model.means.double().flatten(1), model.variances.double().flatten(1)
    log_w = model.log_weights.double() + mu @ a / alpha + (var * a * a).sum(1) / (2 * alpha ** 2)
    means = (mu + var * a / alpha).reshape(model.means.shape)
    return GaussianMixtureFlow(means.float(), model.variances, torch.softmax(log_w, 0).float())


def exact_statistics(model, reward, alpha) -> torch.Tensor:
    """(weight of component 0, mean reward) under the tilted law."""
    tilted = tilted_mixture(model, reward.direction, alpha)
    weights = tilted.log_weights.double().exp()
    component_rewards = tilted.means.double().flatten(1) @ reward.direction.double().flatten()
    return torch.stack([weights[0], weights @ component_rewards])


def weighted_statistics(x, logw, tilted, reward) -> torch.Tensor:
    """The same two statistics estimated from a weighted particle set: the self-normalised weighted mean of
    P(component 0 | x) under the tilted law (whose expectation there is the component's weight) and of r(x)."""
    w = torch.softmax(logw.double(), 0)
    return torch.stack([w @ tilted.component_posterior(x)[:, 0].double(), w @ reward(x).double()])


@pytest.fixture
def final_particle_sets(monkeypatch):
    """Every (particles, log-weights) an SMC run ends with, recorded where the method picks its answer."""
    sets = []
    pick = SMC.pick

    def recording_pick(self, x, logw, value):
        sets.append((x.detach(), logw.detach()))
        return pick(self, x, logw, value)

    monkeypatch.setattr(SMC, "pick", recording_pick)
    return sets


def sampler(name: str, particles: int):
    if name == "das":
        return make_method("das", particles=particles, alpha=ALPHA)
    # short chains: at tau = 1 the twist r(x0_hat) / alpha varies by 0.015 nats over N(0, I) (VP alpha(1) = 0.0066),
    # so the MCMC's target is pCNL's invariant law N(0, I) to about 1.5% and its chains start there
    return make_method("psi", particles=particles, chains=particles // 2, burn_in=2, mcmc_steps=2, alpha=ALPHA,
                       alpha_mcmc=ALPHA)


def estimates(name, particles, model, reward, tilted, sets) -> torch.Tensor:
    """(SEEDS, 2) statistics of the final weighted particle sets of independent runs."""
    rows = []
    for seed in range(SEEDS):
        generator = torch.Generator().manual_seed(1000 * particles + seed)
        p = Problem(FlowSDE(), counted(model), "", reward, STEPS, generator)
        sampler(name, particles)(p)
        x, logw = sets.pop()
        assert len(x) == particles
        rows.append(weighted_statistics(x, logw, tilted, reward))
    return torch.stack(rows)


def test_the_tilted_law_is_the_closed_form():
    """The completed square: exp(r / alpha) p and the tilted mixture differ by a constant (log Z) everywhere."""
    model, reward = mixture_and_reward()
    tilted = tilted_mixture(model, reward.direction, ALPHA)
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(1)) * 1.5
    gap = model.log_prob(x).double() + reward(x).double() / ALPHA - tilted.log_prob(x).double()
    assert float(gap.std()) < 1e-4 * float(gap.abs().mean())


@pytest.mark.parametrize("name", ["das", "psi"])
def test_weighted_particles_converge_to_the_exact_tilted_mixture(name, final_particle_sets):
    model, reward = mixture_and_reward()
    tilted = tilted_mixture(model, reward.direction, ALPHA)
    truth = exact_statistics(model, reward, ALPHA)
    few = estimates(name, FEW, model, reward, tilted, final_particle_sets)
    many = estimates(name, MANY, model, reward, tilted, final_particle_sets)
    rmse_few, rmse_many = ((few - truth) ** 2).mean(0).sqrt(), ((many - truth) ** 2).mean(0).sqrt()
    error, se = (many.mean(0) - truth).abs(), many.std(0) / math.sqrt(SEEDS)
    report = f"{name}: truth {truth.tolist()}, {MANY} particles {many.mean(0).tolist()} +- {se.tolist()}, " \
             f"rmse {FEW}: {rmse_few.tolist()}, {MANY}: {rmse_many.tolist()}"
    assert torch.all(error < 4 * se), report  # agreement within the Monte Carlo error over seeds
    assert torch.all(rmse_many < 0.5 * rmse_few), report  # and the error shrinks as particles grow
    # the check can fail: the law at twice the temperature is many standard errors away, as is the untilted prior
    wrong = exact_statistics(model, reward, 2 * ALPHA)
    prior_weight = float(model.log_weights[0].exp())
    assert torch.all((wrong - truth).abs() > 8 * se) and abs(prior_weight - float(truth[0])) > 8 * float(se[0]), report
