"""NTRK (eqs. 10-13) on the analytic mixture."""
import math

import pytest
import torch

from ntrk_bench.config import load_group
from ntrk_bench.models import GaussianMixtureFlow, counted
from ntrk_bench.ntrk import ntrk_rule, tilted_noise
from ntrk_bench.sampling import evaluate_denoiser, initial_noise, sample_model
from ntrk_bench.sde import FlowSDE
from ntrk_bench.whitening import Whitening

SHAPE = (4, 32, 32)  # 4,096 dims: large enough for the whitening operator to act as in the paper


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.randn(4, 4, 4, 4, generator=g), size=(32, 32), mode="bilinear")
    model = GaussianMixtureFlow(smooth, 0.2 ** 2)
    direction = torch.nn.functional.interpolate(torch.randn(1, 4, 8, 8, generator=g), size=(32, 32), mode="bicubic")[0]
    direction = direction / direction.norm()
    value = lambda x0: (x0 * direction).flatten(1).sum(1)  # noqa: E731  a linear reward
    return model, value, Whitening(load_group("whitening", "full"), SHAPE)


def test_gamma_zero_is_the_base_kernel_exactly(setup):
    model, value, W = setup
    x = initial_noise(model, 4, torch.Generator().manual_seed(1))
    base = sample_model(FlowSDE(), model, None, x, 25, torch.Generator().manual_seed(2))
    ntrk = sample_model(FlowSDE(), model, None, x, 25, torch.Generator().manual_seed(2), value=value,
                        noise_rule=ntrk_rule(0.0, W))
    assert torch.equal(base, ntrk)


def test_ntrk_keeps_the_base_mean_and_injects_typical_noise(setup):
    """x_next = base mean + std * eps_tilde with |eps_tilde| ~ sqrt(D) (eq. 12-13), one NFE."""
    model, value, W = setup
    sde, cm = FlowSDE(), counted(model)
    x = initial_noise(cm, 8, torch.Generator().manual_seed(3))
    tau, tau_next = sde.times(25)[3], sde.times(25)[4]
    ev = evaluate_denoiser(sde, cm, x, tau, None, value)
    assert cm.counter.snapshot() == {"nfe": 8, "grad_nfe": 8, "calls": 1}
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    noise = ntrk_rule(0.3, W)(ev, eps, 3)
    x_next = sde.step(x, ev.den, tau, tau_next, noise)
    mean, std = sde.kernel(x, ev.den, tau, tau_next)
    torch.testing.assert_close((x_next - mean) / std, noise, rtol=1e-4, atol=1e-4)
    norms = noise.flatten(1).norm(dim=1) / math.sqrt(math.prod(SHAPE))
    assert torch.all((norms - 1).abs() < 0.05), norms
    # the tilt points up the reward gradient
    assert torch.all((noise * ev.grad).flatten(1).sum(1) > (eps * ev.grad).flatten(1).sum(1))


def test_tilted_noise_of_a_noise_like_gradient_is_standard_normal():
    W = Whitening(load_group("whitening", "full"), SHAPE)
    g = torch.Generator().manual_seed(5)
    grad, eps = torch.randn(16, *SHAPE, generator=g) * 1e-3, torch.randn(16, *SHAPE, generator=g)
    n = tilted_noise(grad, eps, 0.6, W)
    assert abs(n.mean().item()) < 0.01 and n.var().item() == pytest.approx(1.0, abs=0.02)
    # zero gradients carry no direction: plain noise; and gamma must lie in [0, 1]
    torch.testing.assert_close(tilted_noise(torch.zeros_like(grad), eps, 0.6, W), eps)
    with pytest.raises(ValueError, match="gamma"):
        tilted_noise(grad, eps, 1.5, W)


def test_ntrk_raises_the_reward_over_base_and_grows_with_gamma(setup):
    model, value, W = setup
    x = initial_noise(model, 8, torch.Generator().manual_seed(6))
    scores = {}
    for gamma in (0.0, 0.1, 0.3):
        out = sample_model(FlowSDE(), model, None, x, 25, torch.Generator().manual_seed(7), value=value,
                           noise_rule=ntrk_rule(gamma, W))
        scores[gamma] = value(out).mean().item()
    assert scores[0.0] < scores[0.1] < scores[0.3], scores


def test_auto_gamma_holds_the_effective_strength_fixed_across_latent_sizes():
    """gamma="auto": gamma cos(W(g), g) sqrt(D) equals the configured strength (App. A.5, eq. 63), so a smaller
    latent gets a larger gamma for the same gradient field; the result is still unit-variance noise."""
    from ntrk_bench.fields import smooth_field
    from ntrk_bench.ntrk import STRENGTH_REF, strength_gamma

    gammas = {}
    for shape in [(4, 32, 32), (16, 64, 64)]:
        W = Whitening(load_group("whitening", "full"), shape)
        g = smooth_field((3, *shape), 0)
        w = W(g)
        gamma = strength_gamma(g, w)
        cos = torch.nn.functional.cosine_similarity(w.flatten(1), g.flatten(1), dim=1)
        torch.testing.assert_close(gamma * cos * math.sqrt(math.prod(shape)), torch.full((3,), STRENGTH_REF))
        gammas[shape] = gamma.mean().item()
        n = tilted_noise(g, torch.randn(3, *shape, generator=torch.Generator().manual_seed(1)), "auto", W)
        assert (n.flatten(1).square().mean(1) - 1).abs().max() < 0.05
    assert gammas[(4, 32, 32)] > gammas[(16, 64, 64)]
    assert 0.2 < gammas[(16, 64, 64)] < 0.5  # the paper's setting gives back ~0.3 at FLUX's size


def test_mean_shift_control_moves_the_mean_by_ntrks_expected_noise(setup):
    """The control's shift is std * gamma * W(g): the expectation of NTRK's injected term over eps (eq. 12)."""
    from ntrk_bench.ntrk import mean_shift_rule

    model, value, W = setup
    sde = FlowSDE()
    x = initial_noise(model, 4, torch.Generator().manual_seed(8))
    tau, tau_next = sde.times(25)[5], sde.times(25)[6]
    ev = evaluate_denoiser(sde, model, x, tau, None, value)
    std = sde.std(tau, tau_next)
    shift = mean_shift_rule(0.3, W)(ev, std, 5)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    tilt = ntrk_rule(0.3, W)(ev, eps, 5) - math.sqrt(1 - 0.3 ** 2) * eps  # NTRK's noise minus its fresh part
    torch.testing.assert_close(shift, std * tilt, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(shift, std * 0.3 * W(ev.grad))


def test_auto_gamma_fades_where_whitening_erases_the_gradient():
    """Below the cos at which auto reaches its cap, gamma falls with cos (continuously) instead of holding the
    cap: a direction W left almost orthogonal to g gets little of the noise."""
    from ntrk_bench.ntrk import strength_gamma

    d, strength, cap = 4096, 7.68, 0.95
    g = torch.zeros(5, d)
    g[:, 0] = 1.0
    cos = torch.tensor([0.5, 0.2, strength / (cap * 64), 0.05, 0.01])
    w = torch.zeros(5, d)
    w[:, 0], w[:, 1] = cos, (1 - cos.square()).sqrt()
    gamma = strength_gamma(g, w, strength, cap)
    torch.testing.assert_close(gamma[:3], (strength / (cos[:3] * 64)).clamp(max=cap))
    assert gamma[2] == pytest.approx(cap) and gamma[3] < 0.4 * cap and gamma[4] < 0.08 * cap
    torch.testing.assert_close(gamma[3:], cap * cos[3:] / cos[2])


def test_decorrelated_injection_keeps_alignment_and_typicality_but_stops_repeating(setup):
    """decorrelate: W of a shifted gradient, shifted back. As typical as W(g) itself under the whitening
    diagnostics, as aligned with g, and consecutive injections much less alike for a slowly changing
    gradient (W's own ~0.85: the texture that piles up)."""
    from ntrk_bench import diagnostics as D
    from ntrk_bench.fields import smooth_field
    from ntrk_bench.ntrk import shifted_whitening

    _, _, W = setup
    g = smooth_field((2, *SHAPE), 3)
    g_next = g + 0.05 * smooth_field((2, *SHAPE), 4)  # the next step's, nearly the same gradient
    w, w_next = W(g), W(g_next)
    moved, moved_next = shifted_whitening(W, g, (7, 19)), shifted_whitening(W, g_next, (23, 5))
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)  # noqa: E731
    assert cos(w, w_next).min() > 0.8 and cos(moved, moved_next).max() < 0.45  # measured 0.85 / 0.27
    assert (cos(moved, g) > 0.8 * cos(w, g)).all()  # measured 0.27 against 0.24
    torch.testing.assert_close(moved.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=0.05, atol=0)
    plain, shifted = D.typicality(w[:1], SHAPE), D.typicality(moved[:1], SHAPE)
    for key in ("value_ks", "tile_energy_ks", "tile_mean_ks", "spectral_flatness"):  # tile energy 0.22 vs 0.18
        assert abs(shifted[key] - plain[key]) < 0.06, (key, shifted[key], plain[key])


def test_a_run_records_how_much_ntrks_injection_repeated(setup):
    """The trace: consecutive whitened gradients are alike, the summed injection outgrows independent steps;
    with decorrelate the repetition is gone."""
    from ntrk_bench.method import Problem
    from ntrk_bench.ntrk import NTRK

    model, value, _ = setup
    reward = lambda pixels, prompts=None: value(pixels)  # noqa: E731  (the model decodes to its latent)
    out = {}
    for decorrelate in (False, True):
        problem = Problem(FlowSDE(), model, "", reward, 10, torch.Generator().manual_seed(3))
        res = NTRK(gamma=0.5, decorrelate=decorrelate, whitening=dict(load_group("whitening", "full")))(problem)
        out[decorrelate] = res.info["diagnostics"]
    paper, moved = out[False], out[True]
    assert set(paper) == {"w_step_cos", "injected_sum_norm", "fresh_sum_norm", "injected_independent_norm"}
    assert paper["w_step_cos"] > 0.5 and paper["injected_sum_norm"] > 1.5 * paper["injected_independent_norm"]
    assert moved["w_step_cos"] < 0.6 * paper["w_step_cos"]
    assert moved["injected_sum_norm"] / moved["injected_independent_norm"] < 0.8 * (
        paper["injected_sum_norm"] / paper["injected_independent_norm"])
