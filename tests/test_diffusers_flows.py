"""Z-Image and Wan2.1 through the FlowModel protocol on tiny random pipelines, saved and reloaded offline:
the ODE form of our kernel on the pipeline's own sigmas must reproduce each pipeline's latents (CFG on)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from ntrk_bench.hub import MissingModel  # noqa: E402
from ntrk_bench.models import tiny  # noqa: E402
from ntrk_bench.models.diffusers_flows import WanFlow, ZImageFlow  # noqa: E402
from ntrk_bench.sde import FlowSDE  # noqa: E402


def ode_sample(flow, pipe_sigmas, x, prompts):
    sde, cond = FlowSDE(schedule="linear", diffusion="ode"), flow.condition(prompts)
    sigmas = pipe_sigmas.double()
    with torch.no_grad():
        for k in range(len(sigmas) - 1):
            den = sde.denoise(flow, x, sigmas[k], cond)
            x = sde.step(x, den, sigmas[k], sigmas[k + 1], torch.zeros_like(x))
    return x


@pytest.fixture(scope="module")
def tiny_zimage(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_zimage")
    tiny.zimage_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_wan")
    tiny.wan_pipeline().save_pretrained(path)
    return path


def test_zimage_wrapper_reproduces_the_pipeline_with_cfg(tiny_zimage, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    flow = ZImageFlow.from_pretrained(str(tiny_zimage), dtype="float32", device="cpu", height=64, width=64,
                                      guidance_scale=2.0, max_sequence_length=32)
    assert flow.latent_shape == (16, 32, 32) and flow.passes_per_eval == 2
    x = torch.randn(2, *flow.latent_shape, generator=torch.Generator().manual_seed(1))
    prompts = ["a photo of a cat", "a cat"]  # (the pipeline rewrites the list it is given in place)
    theirs = flow.pipe(list(prompts), latents=x.clone(), height=64, width=64, num_inference_steps=4, guidance_scale=2.0,
                       max_sequence_length=32, output_type="latent").images
    ours = ode_sample(flow, flow.pipe.scheduler.sigmas, x, prompts)
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-4, atol=1e-4)
    assert flow.decode(ours).shape == (2, 3, 64, 64)


def test_wan_wrapper_reproduces_the_pipeline_with_cfg(tiny_wan, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    flow = WanFlow.from_pretrained(str(tiny_wan), dtype="float32", device="cpu", height=64, width=64, frames=9,
                                   guidance_scale=5.0, max_sequence_length=32)
    assert flow.latent_shape == (16, 3, 8, 8) and flow.passes_per_eval == 2
    x = torch.randn(1, *flow.latent_shape, generator=torch.Generator().manual_seed(1))
    theirs = flow.pipe(["a cat"], latents=x.clone(), height=64, width=64, num_frames=9, num_inference_steps=4,
                       guidance_scale=5.0, max_sequence_length=32, output_type="latent").frames
    ours = ode_sample(flow, flow.pipe.scheduler.sigmas, x, ["a cat"])
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-4, atol=1e-4)
    video = flow.decode(ours)
    assert video.shape == (1, 3, 9, 64, 64) and 0 <= video.min() and video.max() <= 1


def test_missing_weights_name_the_repo(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingModel, match="hf download Tongyi-MAI/Z-Image"):
        ZImageFlow.from_pretrained("Tongyi-MAI/Z-Image")
    with pytest.raises(MissingModel, match="hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers"):
        WanFlow.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
