"""Random-weight pipelines built offline (no files, no hub): tiny ones for tests, and ones whose transformer
has its real published configuration for ``scripts/gpu_check.py`` (memory and speed without a download).

Text encoders and VAEs stay tiny (their width matches what the transformer reads); tokenizers are
byte-level alphabets. ``transformer="real"`` uses the published transformer configs of FLUX.1-schnell,
Z-Image and Wan2.1-T2V-1.3B (values from their ``transformer/config.json``).
"""
from __future__ import annotations

import torch

# ----------------------------------------------------------------------------- published transformer configs
FLUX_SCHNELL = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
                    axes_dims_rope=(16, 56, 56))
ZIMAGE = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2,
              n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0,
              t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])
WAN21_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                  text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)

# tiny stand-ins: the published configs, shrunk
TINY_FLUX = dict(FLUX_SCHNELL, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                 axes_dims_rope=(4, 6, 6))
TINY_ZIMAGE = dict(ZIMAGE, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32,
                   axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
TINY_WAN = dict(WAN21_1_3B, num_attention_heads=2, attention_head_dim=12, text_dim=32, ffn_dim=32, num_layers=2,
                rope_max_seq_len=32)


# ----------------------------------------------------------------------------- tokenizers
def byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode alphabet (no longer importable from transformers 5)."""
    bs = list(range(33, 127)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer():
    from transformers import CLIPTokenizer

    chars = byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    for tok in ("ca", "cat</w>", "<|startoftext|>", "<|endoftext|>"):
        vocab[tok] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[("c", "a"), ("ca", "t</w>")], model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
                       + [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,"]
                       + [("\u2581" + w, -1.5) for w in ["a", "cat", "photo", "of"]], extra_ids=0, model_max_length=512)


def qwen_tokenizer():
    from transformers import Qwen2Tokenizer

    qv = {c: i for i, c in enumerate(byte_chars())}
    qv["ca"], qv["cat"] = len(qv), len(qv) + 1
    tok = Qwen2Tokenizer(vocab=qv, merges=[("c", "a"), ("ca", "t")], unk_token=None, eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


def tiny_vae(latent_channels: int):
    """A two-level FLUX-style VAE (spatial factor 2) with the pipelines' scaling and shift."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         block_out_channels=(16, 32), layers_per_block=1, latent_channels=latent_channels,
                         norm_num_groups=8, sample_size=64, scaling_factor=0.3611, shift_factor=0.1159,
                         use_quant_conv=False, use_post_quant_conv=False)


# ----------------------------------------------------------------------------- pipelines
def flux_pipeline(transformer: dict = TINY_FLUX, seed: int = 0):
    """A FluxPipeline with ``transformer``'s config, a T5 and a CLIP as wide as it reads, a tiny VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    width = transformer["pooled_projection_dim"]
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=width, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, projection_dim=32,
                                        max_position_embeddings=77, bos_token_id=clip_tok.bos_token_id,
                                        eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=transformer["joint_attention_dim"], d_kv=8, d_ff=64,
                                 num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1))
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                            max_image_seq_len=4096)
    return FluxPipeline(scheduler=sched, vae=tiny_vae(transformer["in_channels"] // 4), text_encoder=clip,
                        tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=t5_tok,
                        transformer=FluxTransformer2DModel(**transformer))


def zimage_pipeline(transformer: dict = TINY_ZIMAGE, seed: int = 0):
    """A ZImagePipeline with ``transformer``'s config, a Qwen3 text encoder as wide as it reads, a tiny VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tok = qwen_tokenizer()
    te = Qwen3Model(Qwen3Config(vocab_size=len(tok), hidden_size=transformer["cap_feat_dim"], intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                max_position_embeddings=512))
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(transformer["in_channels"]),
                          text_encoder=te, tokenizer=tok, transformer=ZImageTransformer2DModel(**transformer))


def wan_pipeline(transformer: dict = TINY_WAN, seed: int = 0):
    """A WanPipeline with ``transformer``'s config, a UMT5 as wide as it reads, a tiny Wan VAE (factors 4, 8)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tok = t5_tokenizer()
    te = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=transformer["text_dim"], d_kv=8, d_ff=64, num_layers=2,
                                     num_heads=4, pad_token_id=0, eos_token_id=1))
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    return WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                       transformer=WanTransformer3DModel(**transformer))


__all__ = ["FLUX_SCHNELL", "TINY_FLUX", "TINY_WAN", "TINY_ZIMAGE", "WAN21_1_3B", "ZIMAGE", "byte_chars",
           "clip_tokenizer", "flux_pipeline", "qwen_tokenizer", "t5_tokenizer", "tiny_vae", "wan_pipeline",
           "zimage_pipeline"]
