"""FLUX through the FlowModel protocol, on a tiny random pipeline built and reloaded offline.

The ODE form of our kernel on the linear path with the scheduler's sigmas *is* diffusers' flow-match Euler
loop, so sampling through the wrapper must reproduce ``FluxPipeline.__call__``'s latents exactly.
"""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from ntrk_bench.models import tiny  # noqa: E402
from ntrk_bench.models.flux import FluxFlow, MissingModel  # noqa: E402
from ntrk_bench.sde import FlowSDE  # noqa: E402


@pytest.fixture(scope="module")
def tiny_flux_dir(tmp_path_factory):
    pipe = tiny.flux_pipeline()
    path = tmp_path_factory.mktemp("tiny_flux")
    pipe.save_pretrained(path)
    return path


def test_wrapper_reproduces_the_diffusers_pipeline_exactly(tiny_flux_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    flow = FluxFlow.from_pretrained(str(tiny_flux_dir), dtype="float32", height=64, width=64, max_sequence_length=32)
    pipe = flow.pipe
    assert flow.latent_shape == (4, 32, 32)  # unpacked: channels x H/f x W/f (f = 2 for the tiny VAE)
    x = torch.randn(2, *flow.latent_shape, generator=torch.Generator().manual_seed(1))
    prompts = ["a photo of a cat", "a cat"]
    theirs = pipe(prompts, latents=flow.pack(x), height=64, width=64, num_inference_steps=6, guidance_scale=3.5,
                  max_sequence_length=32, output_type="latent").images
    sigmas = pipe.scheduler.sigmas.double()  # the pipeline's own (dynamically shifted) grid, ending at 0
    sde, cond, ours = FlowSDE(schedule="linear", diffusion="ode"), flow.condition(prompts), x
    with torch.no_grad():
        for k in range(len(sigmas) - 1):
            den = sde.denoise(flow, ours, sigmas[k], cond)
            ours = sde.step(ours, den, sigmas[k], sigmas[k + 1], torch.zeros_like(ours))
    torch.testing.assert_close(flow.pack(ours), theirs, rtol=1e-4, atol=1e-4)
    # decode matches the pipeline's VAE decode + postprocessing
    image = pipe.vae.decode(flow.unpack(theirs) / 0.3611 + 0.1159, return_dict=False)[0]
    np.testing.assert_allclose(flow.decode(ours).numpy(), pipe.image_processor.postprocess(image, output_type="pt").numpy(),
                               atol=1e-4)


def test_pack_unpack_round_trip_and_gradients(tiny_flux_dir):
    flow = FluxFlow.from_pretrained(str(tiny_flux_dir), dtype="float32", height=64, width=64, max_sequence_length=32)
    x = torch.randn(3, *flow.latent_shape, requires_grad=True)
    torch.testing.assert_close(flow.unpack(flow.pack(x)), x)
    cond = flow.condition(["a cat"] * 3)
    v = flow.velocity(x, torch.full((3,), 0.5), cond)
    (g,) = torch.autograd.grad(flow.decode(x - 0.5 * v).mean(), x)  # reward gradient through the denoiser
    assert v.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0


def test_missing_weights_are_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingModel, match="hf download black-forest-labs/FLUX.1-schnell"):
        FluxFlow.from_pretrained("black-forest-labs/FLUX.1-schnell")
    with pytest.raises(MissingModel, match="FLUX weights not found"):
        FluxFlow.from_pretrained(str(tmp_path / "nowhere"))
