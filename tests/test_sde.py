"""The flow SDE kernel against exact answers: schedules, Tweedie, score, diffusers, and a Gaussian mixture."""
import math

import pytest
import torch

from ntrk_bench.models import GaussianMixtureFlow, counted
from ntrk_bench.paths import LinearSchedule, VPSchedule, model_time, score, tweedie, velocity_to_schedule
from ntrk_bench.sampling import initial_noise, sample_model
from ntrk_bench.sde import FlowSDE, time_grid


def mixture(shape=(1, 4, 4), std=0.4):
    means = torch.zeros(3, *shape)
    means[0].view(-1)[0] = 2.5
    means[1].view(-1)[1] = -2.5
    means[2].view(-1)[2:4] = 2.0
    return GaussianMixtureFlow(means, std ** 2, torch.tensor([0.5, 0.3, 0.2])), means, std


def test_vp_schedule_matches_the_reference_table():
    """Psi-Sampler's 25-step VP schedule (the values Psi-Sampler's code computes): r, t_lin, alpha, sigma, g, g sqrt(dr)."""
    sde = FlowSDE()
    r = sde.times(25)
    table = {0: (1.00, 0.9935, 0.0066, 1.0000, 1.000, 0.200), 5: (0.80, 0.9617, 0.0398, 0.9992, 0.960, 0.192),
             10: (0.60, 0.8591, 0.1619, 0.9868, 0.840, 0.168), 15: (0.40, 0.6698, 0.4422, 0.8969, 0.640, 0.128),
             20: (0.20, 0.4187, 0.8114, 0.5845, 0.360, 0.072), 24: (0.04, 0.1242, 0.9901, 0.1404, 0.078, 0.016)}
    for k, (rk, t, a, s, g, std) in table.items():
        c = sde.path(r[k])
        got = (float(r[k]), float(model_time(c).t), float(c.alpha), float(c.sigma), sde.g(r[k]), sde.std(r[k], r[k + 1]))
        assert got == pytest.approx((rk, t, a, s, g, std), abs=6e-4), k
    assert float(r[-1]) == 0.0 and len(r) == 26


def test_time_grids():
    assert torch.allclose(time_grid("linear", 4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    g = time_grid("sqrt", 4)
    assert g[0] == 1 and g[-1] == 0 and torch.all(g[1:] < g[:-1])
    with pytest.raises(ValueError, match="time grid"):
        time_grid("cosine", 4)


def test_equal_snr_conversion_and_its_derivatives():
    vp = VPSchedule()
    r = torch.linspace(0.05, 1.0, 20, dtype=torch.float64)
    c = vp(r)
    mt = model_time(c)
    torch.testing.assert_close(c.alpha, mt.s * (1 - mt.t))  # x_r = s x_t on the linear path
    torch.testing.assert_close(c.sigma, mt.s * mt.t)
    h = 1e-6
    f = lambda rr: model_time(vp(rr))  # noqa: E731
    torch.testing.assert_close(mt.dt, (f(r + h).t - f(r - h).t) / (2 * h), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mt.ds, (f(r + h).s - f(r - h).s) / (2 * h), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(c.d_alpha, (vp(r + h).alpha - vp(r - h).alpha) / (2 * h), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(c.d_sigma, (vp(r + h).sigma - vp(r - h).sigma) / (2 * h), rtol=1e-5, atol=1e-7)
    lin = model_time(LinearSchedule()(r))  # identity conversion for the linear path itself
    torch.testing.assert_close(lin.t, r) and torch.testing.assert_close(lin.s, torch.ones_like(r))


@pytest.mark.parametrize("schedule", ["linear", "vp"])
def test_tweedie_and_score_equal_the_exact_posterior_mean_and_score(schedule):
    """Tweedie from the velocity = E[x0 | x] by Bayes; score = autograd of the exact log-density."""
    m, _, _ = mixture()
    sde = FlowSDE(schedule=schedule)
    g = torch.Generator().manual_seed(0)
    # times where the float32 reference is well conditioned (it divides by 1 - t): linear t <= 0.86
    for tau in ((0.8, 0.5, 0.2, 0.05) if schedule == "linear" else (0.6, 0.4, 0.2, 0.05)):
        c = sde.path(torch.tensor(tau, dtype=torch.float64))
        mt = model_time(c)
        t, s = float(mt.t), float(mt.s)
        x = torch.randn(64, 1, 4, 4, generator=g) * math.hypot(1 - t, t) * s + 0.5
        den = sde.denoise(m, x, tau, None)
        # exact posterior mean from the marginal's score (Tweedie's formula on the linear path)
        xt = (x / s).double().requires_grad_(True)
        (grad_t,) = torch.autograd.grad(m.log_prob(xt.float(), t).sum(), xt)
        exact_x0 = (xt + t * t * grad_t) / (1 - t)
        torch.testing.assert_close(den.x0.double(), exact_x0.detach(), rtol=1e-3, atol=3e-4)
        torch.testing.assert_close(den.x0, m.posterior_mean(x / s, torch.full((64,), t)), rtol=1e-4, atol=1e-4)
        # exact score of p_tau(x) = p_t(x / s) / s^D
        xr = x.double().requires_grad_(True)
        (grad_r,) = torch.autograd.grad(m.log_prob((xr / s).float(), t).sum(), xr)
        torch.testing.assert_close(den.score.double(), grad_r, rtol=1e-4, atol=2e-4)


def test_general_tweedie_reduces_to_the_linear_form():
    c = LinearSchedule()(torch.tensor(0.3))
    x, v = torch.randn(5, 8), torch.randn(5, 8)
    torch.testing.assert_close(tweedie(v, x, c), x - 0.3 * v)
    torch.testing.assert_close(score(v, x, c), -(x + 0.7 * v) / 0.3)
    torch.testing.assert_close(velocity_to_schedule(v, x, model_time(c)), v)


def test_ode_kernel_agrees_with_diffusers_flow_match_euler():
    """With g = 0 and the linear path, one kernel step is diffusers' FlowMatchEulerDiscreteScheduler.step."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    m, _, _ = mixture()
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(25)
    sde = FlowSDE(schedule="linear", diffusion="ode")
    x0 = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    ours, theirs = x0.clone(), x0.clone()
    for i, t in enumerate(sched.timesteps):
        sigma, sigma_next = sched.sigmas[i], sched.sigmas[i + 1]
        theirs = sched.step(m.velocity(theirs, sigma.expand(8), None), t, theirs).prev_sample
        den = sde.denoise(m, ours, sigma.double(), None)
        ours = sde.step(ours, den, sigma.double(), sigma_next.double(), torch.zeros_like(ours))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", ["vp", "linear"])
def test_base_sde_reproduces_the_mixture(schedule):
    """Component weights, means and variances of base-SDE samples match the data law within MC error."""
    m, means, std = mixture()
    n, g = 4000, torch.Generator().manual_seed(2)
    out = sample_model(FlowSDE(schedule=schedule), m, None, initial_noise(m, n, g), 100, g)
    k = m.component_posterior(out).argmax(-1)
    w = torch.tensor([0.5, 0.3, 0.2])
    z = (torch.bincount(k, minlength=3) / n - w) / (w * (1 - w) / n).sqrt()
    assert z.abs().max() < 4, z
    for c in range(3):
        xc = out[k == c].flatten(1)
        mean_z = (xc.mean(0) - means[c].flatten()) / (std / math.sqrt(len(xc)))
        assert mean_z.abs().max() < 4.5, (c, mean_z)
        assert xc.var(0).mean() / std ** 2 == pytest.approx(1.0, abs=0.05), c


def test_nfe_is_counted_per_sample_and_gradient():
    m, _, _ = mixture()
    cm = counted(m)
    x = initial_noise(cm, 3, torch.Generator().manual_seed(0))
    sample_model(FlowSDE(), cm, None, x, 7, torch.Generator().manual_seed(0))
    assert cm.counter.snapshot() == {"nfe": 21, "grad_nfe": 0, "calls": 7}
    cm.counter.reset()
    sample_model(FlowSDE(), cm, None, x, 7, torch.Generator().manual_seed(0), value=lambda x0: x0.flatten(1).sum(1))
    assert cm.counter.snapshot() == {"nfe": 21, "grad_nfe": 21, "calls": 7}


def test_prompts_select_components_by_label():
    m = GaussianMixtureFlow(torch.tensor([[[[-3.0]]], [[[3.0]]]]), 0.01, labels=["cat", "dog"])
    cond = m.condition(["a photo of a dog", "a cat", "a bird"])
    out = sample_model(FlowSDE(), m, cond, initial_noise(m, 3, torch.Generator().manual_seed(0)), 50,
                       torch.Generator().manual_seed(0))
    assert out[0].item() == pytest.approx(3.0, abs=0.5) and out[1].item() == pytest.approx(-3.0, abs=0.5)
    torch.testing.assert_close(cond[2].exp(), torch.tensor([0.5, 0.5]))


def test_bfloat16_latents_run_in_float32_maths():
    m, _, _ = mixture()
    g = torch.Generator().manual_seed(3)
    x = initial_noise(m, 16, g)
    out16 = sample_model(FlowSDE(), m, None, x.bfloat16(), 25, torch.Generator().manual_seed(4))
    out32 = sample_model(FlowSDE(), m, None, x, 25, torch.Generator().manual_seed(4))
    assert out16.dtype == torch.bfloat16
    assert (out16.float() - out32).abs().max() < 0.1
