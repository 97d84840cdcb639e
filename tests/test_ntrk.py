"""NTRK (eqs. 10-13) on the analytic mixture."""
import math

import pytest
import torch

from ntrk_bench.config import load_group
from ntrk_bench.models import GaussianMixtureFlow, counted
from ntrk_bench.ntrk import ntrk_rule, tilted_noise
from ntrk_bench.sampling import evaluate, initial_noise, sample_chain
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
    base = sample_chain(FlowSDE(), model, None, x, 25, torch.Generator().manual_seed(2))
    ntrk = sample_chain(FlowSDE(), model, None, x, 25, torch.Generator().manual_seed(2), value=value,
                        noise_rule=ntrk_rule(0.0, W))
    assert torch.equal(base, ntrk)


def test_ntrk_keeps_the_base_mean_and_injects_typical_noise(setup):
    """x_next = base mean + std * eps_tilde with |eps_tilde| ~ sqrt(D) (eq. 12-13), one NFE."""
    model, value, W = setup
    sde, cm = FlowSDE(), counted(model)
    x = initial_noise(cm, 8, torch.Generator().manual_seed(3))
    tau, tau_next = sde.times(25)[3], sde.times(25)[4]
    ev = evaluate(sde, cm, x, tau, None, value)
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
        out = sample_chain(FlowSDE(), model, None, x, 25, torch.Generator().manual_seed(7), value=value,
                           noise_rule=ntrk_rule(gamma, W))
        scores[gamma] = value(out).mean().item()
    assert scores[0.0] < scores[0.1] < scores[0.3], scores
