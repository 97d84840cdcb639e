"""ImageReward v1.0 (Xu et al., NeurIPS 2023; github.com/THUDM/ImageReward) on transformers 5 classes.

The official model (``ImageReward/ImageReward.py``) is BLIP (``BLIP_Pretrain(image_size=224, vit='large')``):
a ViT-L/16 image encoder, a BERT text encoder that cross-attends to every image token, and an MLP on the
text encoder's first hidden state. Here the ViT is transformers' ``BlipVisionModel`` and the text encoder
``BlipTextModel``; ``IMAGEREWARD_KEYS`` maps the official checkpoint (``ImageReward.pt`` of hub repo
``THUDM/ImageReward``) onto them, strictly.

Score = (MLP(text_encoder(prompt, image)[:, 0]) - 0.16717...) / 1.03333..., the package's normalisation
(mean 0 and std 1 on its SD1.4 metric set); this normalised score is what papers tabulate.

Preprocessing: the package resizes the PIL image bicubically (shortest side to 224), centre-crops 224 and
normalises with the CLIP mean/std. ``imagereward_input`` does the same on [0, 1] tensors with Pillow's
bicubic filter written as two resampling matrices (differentiable). It differs from the PIL path only by
Pillow's uint8 rounding after each pass: on the golden image (150x200 random pixels, a worst case) by at
most 1.06 uint8 levels (0.016 in normalised units), giving a score of 15.8051 for the package's 15.8084.
``torch.nn.functional.interpolate`` (bicubic with a = -0.75 instead of Pillow's -0.5, antialiased) plus the
same crop differs by up to 0.48 normalised units there and gives 15.767.
"""
from __future__ import annotations

import functools
import json
from typing import Mapping, Sequence

import torch
from torch import nn

from ntrk_bench.hub import from_pretrained, hub_file, resolve_device

from .keymap import KeyRule, load_strict, read_state_dict, remap_state_dict

# ImageReward/ImageReward.py: score normalisation ("mean 0, std 1 on the SD1.4 metric set")
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
# ImageReward/ImageReward.py: tokenizer(..., padding='max_length', truncation=True, max_length=35)
PROMPT_TOKENS = 35
IMAGE_SIZE = 224
# BLIP models/blip.py create_vit('large'): ViT-L/16, LayerNorm eps 1e-6, exact GELU, MLP ratio 4
BLIP_VIT_LARGE = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                  "num_attention_heads": 16, "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6,
                  "hidden_act": "gelu"}


# ---------------------------------------------------------------------------------------------------------
# Checkpoint key map: (official key regex, transformers key template or None = not loaded); see keymap.py
# ---------------------------------------------------------------------------------------------------------

_VIT = r"blip\.visual_encoder\."
IMAGEREWARD_KEYS: list[KeyRule] = [
    # BLIP models/vit.py VisionTransformer -> transformers BlipVisionModel
    (_VIT + r"cls_token", "vision.embeddings.class_embedding"),
    (_VIT + r"pos_embed", "vision.embeddings.position_embedding"),
    (_VIT + r"patch_embed\.proj\.(weight|bias)", r"vision.embeddings.patch_embedding.\1"),
    (_VIT + r"blocks\.(\d+)\.norm1\.(weight|bias)", r"vision.encoder.layers.\1.layer_norm1.\2"),
    (_VIT + r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"vision.encoder.layers.\1.self_attn.qkv.\2"),
    (_VIT + r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"vision.encoder.layers.\1.self_attn.projection.\2"),
    (_VIT + r"blocks\.(\d+)\.norm2\.(weight|bias)", r"vision.encoder.layers.\1.layer_norm2.\2"),
    (_VIT + r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision.encoder.layers.\1.mlp.\2.\3"),
    (_VIT + r"norm\.(weight|bias)", r"vision.post_layernorm.\1"),
    # BLIP models/med.py BertModel -> BlipTextModel: same names; position ids are recomputed, not stored
    (r"blip\.text_encoder\.embeddings\.position_ids", None),
    (r"blip\.text_encoder\.((?:embeddings|encoder)\..+)", r"text.\1"),
    # BLIP's image-text contrastive projections: not used by the score
    (r"blip\.(vision_proj|text_proj)\.(weight|bias)", None),
    # ImageReward's MLP (nn.Sequential of Linear and Dropout)
    (r"mlp\.layers\.(\d+)\.(weight|bias)", r"head.\1.\2"),
]


# ---------------------------------------------------------------------------------------------------------
# Preprocessing: Pillow's bicubic resize as resampling matrices (differentiable)
# ---------------------------------------------------------------------------------------------------------

def pil_bicubic_kernel(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel with Pillow's a = -0.5 (Pillow src/libImaging/Resample.c)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


@functools.lru_cache(maxsize=16)
def pil_resample_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) weights of Pillow's bicubic resize along one axis (Resample.c precompute_coeffs):
    output pixel i reads the input pixels j in [int(c - support + 0.5), int(c + support + 0.5)) around the
    centre c = (i + 0.5) * scale, weighted by the kernel at (j - c + 0.5), stretched by the scale when
    downsampling (antialiasing); each row normalised to sum 1."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = 2.0 * stretch  # bicubic support 2, stretched
    centre = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    lo = (centre - support + 0.5).to(torch.int64).clamp(min=0)  # C's (int) cast truncates
    hi = (centre + support + 0.5).to(torch.int64).clamp(max=in_size)
    taps = torch.arange(in_size, dtype=torch.float64)
    inside = (taps >= lo[:, None]) & (taps < hi[:, None])
    w = pil_bicubic_kernel((taps - centre[:, None] + 0.5) / stretch) * inside
    return w / w.sum(dim=1, keepdim=True)


def pil_bicubic_resize(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, C, height, width) as Pillow's ``Image.resize(..., BICUBIC)``: horizontal
    pass, then vertical, each clipped to the pixel range (Pillow's clip8), without its uint8 rounding."""
    rw = pil_resample_matrix(pixels.shape[-1], width).to(pixels)
    rh = pil_resample_matrix(pixels.shape[-2], height).to(pixels)
    x = torch.einsum("bchw,vw->bchv", pixels, rw).clamp(0, 1)
    return torch.einsum("bchw,uh->bcuw", x, rh).clamp(0, 1)


def imagereward_input(pixels: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """ImageReward's ``_transform`` on (B, 3, H, W) pixels in [0, 1]: torchvision ``Resize(size, BICUBIC)``
    (shortest side to ``size``, the other ``int(size * long / short)``), ``CenterCrop(size)`` (offsets
    ``round((side - size) / 2)``), then OpenAI CLIP's mean/std."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    h, w = pixels.shape[-2:]
    short, long = min(h, w), max(h, w)
    other = int(size * long / short)
    new_h, new_w = (size, other) if h <= w else (other, size)
    x = pil_bicubic_resize(pixels.float(), new_h, new_w)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(OPENAI_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------

def reward_head(width: int) -> nn.Sequential:
    """ImageReward's MLP (ImageReward/ImageReward.py ``MLP``): Linear/Dropout layers, no activations."""
    return nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


def blip_text_config(med: Mapping, vocab_size: int, encoder_width: int):
    """BLIP's ``med_config.json`` (a BertConfig) as a ``BlipTextConfig``. The vocabulary size is the
    checkpoint's (BLIP resizes the embeddings to its tokenizer, which adds [DEC] and [ENC]) and the
    cross-attention width the ViT's (BLIP_Pretrain sets ``encoder_width = vision_width``)."""
    from transformers import BlipTextConfig

    return BlipTextConfig(vocab_size=vocab_size, hidden_size=med["hidden_size"], encoder_hidden_size=encoder_width,
                          intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
                          num_attention_heads=med["num_attention_heads"],
                          max_position_embeddings=med["max_position_embeddings"], hidden_act=med["hidden_act"],
                          layer_norm_eps=med["layer_norm_eps"], pad_token_id=med.get("pad_token_id", 0),
                          bos_token_id=None, eos_token_id=None, sep_token_id=None,  # generation only
                          is_decoder=True,  # builds the cross-attention layers; forward runs bidirectionally
                          # BlipText's attention adds the mask as floats: another implementation's (boolean) mask
                          # moved the golden score by 0.028
                          attn_implementation="eager")


class ImageRewardModel(nn.Module):
    """BLIP ViT + cross-attention BERT + MLP; returns the raw (unnormalised) reward."""

    def __init__(self, vision_config, text_config):
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.head = reward_head(text_config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        image_tokens = self.vision(pixel_values=pixel_values).last_hidden_state  # after the ViT's final norm
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_tokens)
        return self.head(text.last_hidden_state[:, 0]).squeeze(-1)


def build_imagereward_model(state: Mapping[str, torch.Tensor], med: Mapping, vision: Mapping,
                            dtype: torch.dtype = torch.float32) -> ImageRewardModel:
    """The port with the official checkpoint's weights, loaded through ``IMAGEREWARD_KEYS`` strictly."""
    from accelerate import init_empty_weights
    from transformers import BlipVisionConfig

    mapped = remap_state_dict(state, IMAGEREWARD_KEYS, "ImageReward checkpoint")
    vision_config = BlipVisionConfig(**vision, attn_implementation="eager")
    words = mapped.get("text.embeddings.word_embeddings.weight")
    if words is None:
        raise KeyError("checkpoint has no 'blip.text_encoder.embeddings.word_embeddings.weight'")
    text_config = blip_text_config(med, words.shape[0], vision_config.hidden_size)
    with init_empty_weights(include_buffers=False):
        model = ImageRewardModel(vision_config, text_config)
    return load_strict(model, mapped, "ImageReward checkpoint", dtype, assign=True).eval().requires_grad_(False)


def blip_tokenizer(tokenizer):
    """BLIP's ``init_tokenizer``: bert-base-uncased plus bos ``[DEC]`` and the extra special ``[ENC]``."""
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward:
    """ImageReward v1.0, normalised as the package's ``score``: differentiable from pixels."""
    name = "imagereward"
    differentiable = True

    def __init__(self, checkpoint: str = "THUDM/ImageReward", checkpoint_file: str = "ImageReward.pt",
                 med_config: str = "THUDM/ImageReward", med_config_file: str = "med_config.json",
                 tokenizer_id: str = "bert-base-uncased", vision: Mapping | None = None, device: str = "auto",
                 dtype: str = "float32", allow_download: bool = False, batch_size: int = 16):
        from transformers import AutoTokenizer

        self.device, self.dtype = torch.device(resolve_device(device)), getattr(torch, dtype)
        self.batch_size = batch_size
        state = read_state_dict(checkpoint, checkpoint_file, "ImageReward", allow_download)
        med = json.loads(open(hub_file(med_config, med_config_file, "ImageReward med_config", allow_download)).read())
        model = build_imagereward_model(state, med, dict(vision or BLIP_VIT_LARGE), self.dtype)
        self.model = model.to(self.device)
        self.tokenizer = blip_tokenizer(from_pretrained(AutoTokenizer, tokenizer_id, "ImageReward tokenizer",
                                                        allow_download))

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=PROMPT_TOKENS,
                             return_tensors="pt")
        return {"input_ids": tok["input_ids"].to(self.device), "attention_mask": tok["attention_mask"].to(self.device)}

    def score_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Normalised score from preprocessed pixels and token ids (the package's ``score_gard`` + normalisation)."""
        raw = self.model(pixel_values.to(self.device, self.dtype), input_ids, attention_mask)
        return (raw.float() - IMAGEREWARD_MEAN) / IMAGEREWARD_STD

    def score(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """One batch of [0, 1] pixels and prompts: preprocess, tokenise, score (the package's ``score``)."""
        return self.score_inputs(imagereward_input(pixels.to(self.device)), **self.tokenize(prompts))

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if pixels.ndim != 4 or len(prompts) != len(pixels):
            raise ValueError(f"ImageReward scores images (B, 3, H, W) with one prompt each; got {tuple(pixels.shape)} "
                             f"and {len(prompts)} prompts")
        starts = range(0, len(pixels), self.batch_size)
        return torch.cat([self.score(pixels[i:i + self.batch_size], prompts[i:i + self.batch_size])
                          for i in starts]).to(pixels.device)


__all__ = ["IMAGEREWARD_KEYS", "ImageReward", "build_imagereward_model", "imagereward_input"]
