"""FLUX through the FlowModel protocol, on a tiny random pipeline built and reloaded offline.

The ODE form of our kernel on the linear path with the scheduler's sigmas *is* diffusers' flow-match Euler
loop, so sampling through the wrapper must reproduce ``FluxPipeline.__call__``'s latents exactly.
"""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel  # noqa: E402
from tiny import clip_tokenizer, t5_tokenizer  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel  # noqa: E402

from ntrk_bench.models.flux import FluxFlow, MissingModel  # noqa: E402
from ntrk_bench.sde import FlowSDE  # noqa: E402


def _tokenizers():
    return clip_tokenizer(), t5_tokenizer()


@pytest.fixture(scope="module")
def tiny_flux_dir(tmp_path_factory):
    torch.manual_seed(0)
    clip_tok, t5_tok = _tokenizers()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, projection_dim=32, max_position_embeddings=77,
                                        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                                        pad_token_id=clip_tok.pad_token_id))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 pad_token_id=0, eos_token_id=1))
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=64, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                            max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=tr)
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
    with pytest.raises(MissingModel, match="huggingface-cli download black-forest-labs/FLUX.1-schnell"):
        FluxFlow.from_pretrained("black-forest-labs/FLUX.1-schnell")
    with pytest.raises(MissingModel, match="FLUX weights not found"):
        FluxFlow.from_pretrained(str(tmp_path / "nowhere"))
