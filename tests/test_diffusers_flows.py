"""Z-Image and Wan2.1 through the FlowModel protocol on tiny random pipelines, saved and reloaded offline:
the ODE form of our kernel on the pipeline's own sigmas must reproduce each pipeline's latents (CFG on)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import (AutoencoderKL, AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline,  # noqa: E402
                       WanTransformer3DModel, ZImagePipeline, ZImageTransformer2DModel)
from tiny import byte_chars, t5_tokenizer  # noqa: E402
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model, UMT5Config, UMT5EncoderModel  # noqa: E402

from ntrk_bench.hub import MissingModel  # noqa: E402
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
    torch.manual_seed(0)
    chars = byte_chars()
    qv = {c: i for i, c in enumerate(chars)}
    qv["ca"], qv["cat"] = len(qv), len(qv) + 1
    tok = Qwen2Tokenizer(vocab=qv, merges=[("c", "a"), ("ca", "t")], unk_token=None, eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    te = Qwen3Model(Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512))
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(16, 32), layers_per_block=1, latent_channels=16, norm_num_groups=8,
                        sample_size=64, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False)
    tr = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2,
                                  n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
                                  cap_feat_dim=32, rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4],
                                  axes_lens=[256, 32, 32])
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=te,
                          tokenizer=tok, transformer=tr)
    path = tmp_path_factory.mktemp("tiny_zimage")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    torch.manual_seed(0)
    tok = t5_tokenizer()
    te = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                     pad_token_id=0, eos_token_id=1))
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                               out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
                               cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    pipe = WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                       transformer=tr)
    path = tmp_path_factory.mktemp("tiny_wan")
    pipe.save_pretrained(path)
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
    with pytest.raises(MissingModel, match="huggingface-cli download Tongyi-MAI/Z-Image"):
        ZImageFlow.from_pretrained("Tongyi-MAI/Z-Image")
    with pytest.raises(MissingModel, match="huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers"):
        WanFlow.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
