"""HPSv2 and HPSv2.1 (Wu et al., "Human Preference Score v2", arXiv 2306.09341; github.com/tgxs002/HPSv2) on
transformers' ``CLIPModel``.

HPS is an open_clip ViT-H-14 fine-tuned on human preferences; the checkpoints (``HPS_v2_compressed.pt``,
``HPS_v2.1_compressed.pt`` of hub repo ``xswu/HPSv2``, ``{'state_dict': open_clip keys}``) hold the whole
model. ``HPS_KEYS`` maps them onto ``CLIPModel`` (open_clip's fused ``in_proj`` split into q/k/v, its
right-multiplied projections transposed into Linear weights), strictly. The score is the package's
``hpsv2.score``: the cosine of the L2-normalised image and text features, no logit scale (the scale of
the paper's tables, about 0.2-0.35). v2.0 and v2.1 scores are not comparable with each other.

Preprocessing: ``hpsv2.score`` uses open_clip's ``light_augmentation`` validation transform (HPSv2
``hpsv2/src/open_clip/transform.py``): resize the *longest* side to 224 with torchvision's tensor bicubic
(antialiased), zero-pad to 224 x 224 (left/top get half the padding, rounded down), CLIP mean/std; no centre
crop. ``hps_input`` is that transform on [0, 1] tensors and reproduces the package's pixels exactly.

Tokenizer: open_clip's ``SimpleTokenizer`` is the OpenAI CLIP BPE (``bpe_simple_vocab_16e6``); transformers'
``CLIPTokenizer`` with the same vocabulary, e.g. from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the HPS
base model; to have it offline: ``hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K --include
"*.json" "*.txt"``, a few MB without the weights), gives the same ids when padding with
``<|endoftext|>``: open_clip pads with id 0 (the token "!"), which never changes the features because the
text mask is causal and pooling reads the first end-of-text token.
"""
from __future__ import annotations

import html
import json
import re
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ntrk_bench.hub import from_pretrained, resolve_device

from .keymap import KeyRule, load_strict, read_state_dict, remap_state_dict, split_qkv

# hpsv2/utils.py hps_version_map
HPS_CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
# open_clip src/open_clip/model_configs/ViT-H-14.json (HPS's architecture)
VIT_H_14 = {"embed_dim": 1024,
            "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}}
SOT, EOT = 49406, 49407  # open_clip tokenizer: <start_of_text>, <end_of_text>


def transpose(projection: torch.Tensor) -> torch.Tensor:
    """open_clip right-multiplies (``x @ proj``); a Linear weight left-multiplies."""
    return projection.t().contiguous()


def resblock_rules(official: str, port: str) -> list[KeyRule]:
    """open_clip ``ResidualAttentionBlock`` (src/open_clip/transformer.py) -> transformers ``CLIPEncoderLayer``."""
    block, layer = official + r"transformer\.resblocks\.(\d+)\.", port + r".encoder.layers.\1."
    return [(block + r"ln_1\.(weight|bias)", layer + r"layer_norm1.\2"),
            (block + r"attn\.in_proj_(weight|bias)", tuple(layer + rf"self_attn.{p}_proj.\2" for p in "qkv"),
             split_qkv),
            (block + r"attn\.out_proj\.(weight|bias)", layer + r"self_attn.out_proj.\2"),
            (block + r"ln_2\.(weight|bias)", layer + r"layer_norm2.\2"),
            (block + r"mlp\.c_fc\.(weight|bias)", layer + r"mlp.fc1.\2"),
            (block + r"mlp\.c_proj\.(weight|bias)", layer + r"mlp.fc2.\2")]


HPS_KEYS: list[KeyRule] = [
    *resblock_rules(r"visual\.", "vision_model"),
    *resblock_rules("", "text_model"),
    # open_clip VisionTransformer -> CLIPVisionTransformer
    (r"visual\.class_embedding", "vision_model.embeddings.class_embedding"),
    (r"visual\.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    (r"visual\.conv1\.weight", "vision_model.embeddings.patch_embedding.weight"),
    (r"visual\.ln_pre\.(weight|bias)", r"vision_model.pre_layrnorm.\1"),
    (r"visual\.ln_post\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"visual\.proj", "visual_projection.weight", transpose),
    # open_clip CLIP text tower -> CLIPTextTransformer
    (r"token_embedding\.weight", "text_model.embeddings.token_embedding.weight"),
    (r"positional_embedding", "text_model.embeddings.position_embedding.weight"),
    (r"ln_final\.(weight|bias)", r"text_model.final_layer_norm.\1"),
    (r"text_projection", "text_projection.weight", transpose),
    (r"logit_scale", "logit_scale"),  # not used by the score
]


_OPEN_CLIP_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu",
                   "image_size", "layers", "width", "head_width", "patch_size", "mlp_ratio",
                   "context_length", "vocab_size", "heads"}


def clip_config(open_clip_cfg: Mapping):
    """An open_clip model config (the ``model_configs/*.json`` layout) as a transformers ``CLIPConfig``. Only
    the plain CLIP architecture is representable: any other open_clip option raises naming it."""
    from transformers import CLIPConfig

    vision, text = open_clip_cfg["vision_cfg"], open_clip_cfg["text_cfg"]
    for key in [*open_clip_cfg, *vision, *text]:
        if key not in _OPEN_CLIP_KEYS:
            raise ValueError(f"open_clip option {key!r} has no CLIPModel equivalent in this port")
    act = "quick_gelu" if open_clip_cfg.get("quick_gelu") else "gelu"  # open_clip: nn.GELU unless quick_gelu
    ratio_v, ratio_t = vision.get("mlp_ratio", 4.0), text.get("mlp_ratio", 4.0)
    return CLIPConfig(
        projection_dim=open_clip_cfg["embed_dim"],
        vision_config=dict(hidden_size=vision["width"], intermediate_size=int(vision["width"] * ratio_v),
                           num_hidden_layers=vision["layers"],
                           num_attention_heads=vision["width"] // vision.get("head_width", 64),
                           image_size=vision["image_size"], patch_size=vision["patch_size"], hidden_act=act,
                           layer_norm_eps=1e-5),
        text_config=dict(vocab_size=text["vocab_size"], hidden_size=text["width"],
                         intermediate_size=int(text["width"] * ratio_t), num_hidden_layers=text["layers"],
                         num_attention_heads=text.get("heads", 8), max_position_embeddings=text["context_length"],
                         hidden_act=act, layer_norm_eps=1e-5, bos_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT))


def build_hps_model(state: Mapping[str, torch.Tensor], open_clip_cfg: Mapping = VIT_H_14,
                    dtype: torch.dtype = torch.float32):
    """``CLIPModel`` with an HPS checkpoint's weights, loaded through ``HPS_KEYS`` strictly."""
    from accelerate import init_empty_weights
    from transformers import CLIPModel

    mapped = remap_state_dict(state, HPS_KEYS, "HPS checkpoint")
    with init_empty_weights(include_buffers=False):
        model = CLIPModel(clip_config(open_clip_cfg))
    return load_strict(model, mapped, "HPS checkpoint", dtype, assign=True).eval().requires_grad_(False)


def hps_input(pixels: torch.Tensor, size: int = 224) -> torch.Tensor:
    """HPSv2's validation transform on (B, 3, H, W) pixels in [0, 1] (open_clip fork ``ResizeMaxSize``):
    longest side to ``size`` (other side ``round(side * size / longest)``), torchvision tensor bicubic with
    antialias (= ``F.interpolate``), zero padding to ``size`` x ``size`` (left/top half, rounded down), then
    OpenAI CLIP's mean/std (open_clip's OPENAI_DATASET_MEAN/STD)."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    h, w = pixels.shape[-2:]
    scale = size / max(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    x = F.interpolate(pixels.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    pad_h, pad_w = size - new_h, size - new_w
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    mean = torch.tensor(OPENAI_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def clean_prompt(text: str) -> str:
    """open_clip tokenizer's ``basic_clean`` (HTML unescaped twice, stripped) and ``whitespace_clean``; its
    ``ftfy.fix_text`` (mojibake repair) is left out: ftfy is not a dependency here."""
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class HPSv2:
    """HPS v2.0 / v2.1: raw cosine of image and prompt features, differentiable from pixels."""
    differentiable = True

    def __init__(self, version: str = "v2.1", checkpoint: str = "xswu/HPSv2", checkpoint_file: str | None = None,
                 architecture: str | Mapping | None = None,
                 tokenizer_id: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", device: str = "auto",
                 dtype: str = "float32", allow_download: bool = False, batch_size: int = 16, name: str | None = None):
        from transformers import CLIPTokenizer

        if version not in HPS_CHECKPOINTS:
            raise ValueError(f"HPS version must be one of {sorted(HPS_CHECKPOINTS)}, got {version!r}")
        self.name = name or ("hpsv2" if version == "v2.0" else "hpsv2_1")
        self.device, self.dtype = torch.device(resolve_device(device)), getattr(torch, dtype)
        self.batch_size = batch_size
        filename = checkpoint_file or HPS_CHECKPOINTS[version]
        state = read_state_dict(checkpoint, filename, f"HPS{version}", allow_download)
        if isinstance(architecture, str):  # an open_clip model config file
            architecture = json.loads(open(architecture).read())
        self.model = build_hps_model(state, dict(architecture or VIT_H_14), self.dtype).to(self.device)
        self.context_length = self.model.config.text_config.max_position_embeddings
        self.image_size = self.model.config.vision_config.image_size
        self.tokenizer = from_pretrained(CLIPTokenizer, tokenizer_id, "HPS (OpenAI CLIP BPE) tokenizer", allow_download,
                                         pad_token="<|endoftext|>")
        if "!" in self.tokenizer.get_added_vocab():  # saved with pad "!": "!!" would be two pad tokens, not BPE
            raise ValueError(f"tokenizer {tokenizer_id!r} has '!' as an added (padding) token, which changes the ids "
                             "of prompts with '!'; use a CLIP tokenizer that pads with <|endoftext|>")

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """open_clip's ``tokenize``: SOT + BPE + EOT, truncated to the context with the last token EOT."""
        ids = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                             max_length=self.context_length, return_tensors="pt")["input_ids"]
        return ids.to(self.device)

    def text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ln_final at the first EOT, projected, L2-normalised (no padding mask: the text mask is causal)."""
        out = self.model.get_text_features(input_ids=input_ids.to(self.device))
        return F.normalize(getattr(out, "pooler_output", out).float(), dim=-1)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype))
        return F.normalize(getattr(out, "pooler_output", out).float(), dim=-1)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if pixels.ndim != 4 or len(prompts) != len(pixels):
            raise ValueError(f"HPSv2 scores images (B, 3, H, W) with one prompt each; got {tuple(pixels.shape)} "
                             f"and {len(prompts)} prompts")
        scores = []
        for i in range(0, len(pixels), self.batch_size):
            image = self.image_features(hps_input(pixels[i:i + self.batch_size].to(self.device), self.image_size))
            with torch.no_grad():
                text = self.text_features(self.tokenize(prompts[i:i + self.batch_size]))
            scores.append((image * text).sum(-1))
        return torch.cat(scores).to(pixels.device)


__all__ = ["HPS_CHECKPOINTS", "HPS_KEYS", "HPSv2", "VIT_H_14", "build_hps_model", "clip_config", "hps_input"]
