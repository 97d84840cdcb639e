"""VQAScore with CLIP-FlanT5 (Lin et al., "Evaluating Text-to-Visual Generation with Image-to-Text Generation",
ECCV 2024), ported from t2v_metrics (<= 3.0, ``t2v_metrics/models/vqascore_models/clip_t5_model.py`` and
``clip_t5/model``) onto transformers classes.

The model is three pieces that transformers has: a CLIP vision tower (``openai/clip-vit-large-patch14-336``)
read at its penultimate layer without the CLS token, a two-layer GELU projector (LLaVA's ``mlp2x_gelu``) onto
T5's width, and FlanT5-XXL, whose encoder reads the projected image tokens spliced in place of the ``<image>``
placeholder of the question. The score is P("Yes") = exp(-mean cross-entropy of the answer tokens "Yes</s>").

Weights load from the official checkpoint layout (``zhiqiulin/clip-flant5-xxl``: ``config.json`` plus
safetensors or ``.bin`` shards) through ``CHECKPOINT_KEY_MAP``; a key the table does not cover, or a missing
one, raises ``KeyError`` naming it. T5's ``lm_head`` stays untied from the embeddings: transformers 5 ties
them unless told not to, and FlanT5's are different matrices.

Image preprocessing follows t2v_metrics' ``image_aspect_ratio='pad'``: pad to a square with the CLIP mean
colour (``expand2square``), then the CLIP-336 resize and normalisation - here in torch on [0, 1] pixels
(bicubic, antialiased), so the score is differentiable from the pixels. The official path resizes with PIL,
which moves scores slightly.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ntrk_bench.hub import from_pretrained, hub_file, resolve_device

from .keymap import load_strict, read_state_dict, remap_state_dict

# t2v_metrics/constants.py and clip_t5_model.py (conversation style 't5_chat' of clip-flant5-xxl)
SYSTEM_MSG = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
QUESTION_TEMPLATE = 'Does this figure show "{}"? Please answer yes or no.'
ANSWER = "Yes"
IMAGE_TOKEN_INDEX = -200
CONTEXT_LEN = 2048

# Checkpoint entries that are the token embedding again (CLIPT5's ``embed_tokens`` alias and T5's tied inputs):
# checked equal to ``shared.weight`` (``map_checkpoint``), then dropped.
EMBEDDING_ALIASES = ("embed_tokens.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Official checkpoint key -> key in ``CLIPFlanT5`` (first match wins; see keymap.py).
CHECKPOINT_KEY_MAP = (
    *((re.escape(alias), None) for alias in EMBEDDING_ALIASES),
    # optional: the official loader overrides the CLIP tower with it; transformers 5's CLIPVisionModel has no
    # ``vision_model`` level
    (r"vision_tower\.vision_tower\.vision_model\.(.+)", r"vision_tower.\1"),
    (r"mm_projector\.(.+)", r"mm_projector.\1"),
    (r"((?:shared|encoder|decoder|lm_head)\..+)", r"t5.\1"),
)
# config.json fields of CLIPT5Config that are not T5Config's
MULTIMODAL_CONFIG_KEYS = ("mm_vision_tower", "mm_vision_select_layer", "mm_vision_select_feature", "mm_projector_type",
                          "mm_hidden_size", "use_mm_proj", "pretrain_mm_mlp_adapter", "image_aspect_ratio",
                          "image_grid_pinpoints", "freeze_mm_mlp_adapter", "tune_mm_mlp_adapter", "mm_use_im_start_end",
                          "mm_use_im_patch_token", "mm_projector_lr", "model_type", "architectures")


def question(text: str) -> tuple[str, str]:
    """The 't5_chat' question around the image placeholder: (text before ``<image>``, text after it)."""
    return SYSTEM_MSG + " USER: ", "\n" + QUESTION_TEMPLATE.format(text) + " ASSISTANT: "


def question_ids(tokenizer, text: str) -> list[int]:
    """t2v_metrics' ``t5_tokenizer_image_token``: each chunk tokenised on its own (each ends in ``</s>``),
    joined by the image placeholder id, cut to the context length."""
    before, after = question(text)
    ids = tokenizer(before).input_ids + [IMAGE_TOKEN_INDEX] + tokenizer(after).input_ids
    return ids[:CONTEXT_LEN]


def pad_to_square(pixels: torch.Tensor, fill: Sequence[float]) -> torch.Tensor:
    """t2v_metrics' ``expand2square`` on (B, 3, H, W) tensors: the short side is padded with ``fill`` (per
    channel), the image pasted at offset (long - short) // 2."""
    b, c, h, w = pixels.shape
    if h == w:
        return pixels
    side = max(h, w)
    canvas = torch.tensor(fill, dtype=pixels.dtype, device=pixels.device).view(1, c, 1, 1).repeat(b, 1, side, side)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:, :, top:top + h, left:left + w] = pixels
    return canvas


def clip_pixel_values(pixels: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """[0, 1] pixels -> CLIP input: pad to square with the mean colour (as PIL, an integer colour), bicubic
    antialiased resize to ``size`` (the CLIP processor's shortest-edge resize and centre crop coincide on a
    square), normalise."""
    fill = [int(m * 255) / 255 for m in mean]  # expand2square(image, tuple(int(x*255) for x in image_mean))
    x = pad_to_square(pixels.float(), fill)
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (mean, std))
    return (x - mean) / std


def projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """LLaVA's ``build_vision_projector``: 'linear' or 'mlp{N}x_gelu' (Linear, then (GELU, Linear) x N-1)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not match:
        raise ValueError(f"unknown mm_projector_type {kind!r}")
    layers = [nn.Linear(in_dim, out_dim)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def splice_image_tokens(input_ids: torch.Tensor, image_tokens: torch.Tensor, embed: nn.Embedding, pad_id: int):
    """CLIPT5's ``prepare_inputs_labels_for_multimodal`` for one image per row: the placeholder is replaced by
    the image tokens; the attention mask is True over the prefix and the image tokens and ``ids != pad`` after.
    Every row holds its placeholder at the same column (the prefix is the fixed system message)."""
    rows, cols = (input_ids == IMAGE_TOKEN_INDEX).nonzero(as_tuple=True)
    if len(rows) != len(input_ids) or (cols != cols[0]).any():
        raise ValueError("each row needs exactly one image placeholder, at the same position")
    p = int(cols[0])
    text = embed(input_ids.clamp_min(0))
    embeds = torch.cat([text[:, :p], image_tokens.to(text.dtype), text[:, p + 1:]], dim=1)
    ones = torch.ones(len(input_ids), p + image_tokens.shape[1], dtype=torch.bool, device=input_ids.device)
    return embeds, torch.cat([ones, input_ids[:, p + 1:] != pad_id], dim=1)


def answer_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """exp(-mean token cross-entropy) per row: P(answer) as t2v_metrics computes it (labels without padding)."""
    logp = logits.float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return logp.mean(-1).exp()


def map_checkpoint(state: dict) -> dict:
    """Official CLIP-FlanT5 keys -> ``CLIPFlanT5`` keys through ``CHECKPOINT_KEY_MAP``; the embedding aliases
    must equal ``shared.weight`` and are dropped; an unknown key raises ``KeyError`` naming it."""
    mapped = remap_state_dict(state, CHECKPOINT_KEY_MAP, "CLIP-FlanT5 checkpoint")
    shared = state.get("shared.weight")
    if shared is None:
        raise KeyError("CLIP-FlanT5 checkpoint key 'shared.weight' is missing")
    for alias in EMBEDDING_ALIASES:
        if alias in state and not torch.equal(state[alias], shared):
            raise KeyError(f"CLIP-FlanT5 checkpoint key {alias!r} differs from 'shared.weight'")
    return mapped


def untied_t5(t5_config: dict, state: dict, dtype: torch.dtype):
    """``T5ForConditionalGeneration`` with the checkpoint's ``lm_head``, not the embeddings. transformers 5
    forces ``tie_word_embeddings=True`` on T5 and shares ``lm_head.weight`` with ``shared.weight`` (loading into
    the shared parameter overwrites both); assigning the tensors per module keeps them apart. T5 v1.1/FlanT5
    (``tie_word_embeddings: false``) also skips the d_model**-0.5 output scaling, which the config keeps."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(**{k: v for k, v in t5_config.items() if k not in MULTIMODAL_CONFIG_KEYS})
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
    shared = state["shared.weight"].to(dtype)
    tensors = {k: v.to(dtype) for k, v in state.items()}
    tensors |= {"encoder.embed_tokens.weight": shared, "decoder.embed_tokens.weight": shared, "shared.weight": shared}
    if "lm_head.weight" not in tensors:
        if t5_config.get("tie_word_embeddings", True) is False:
            raise KeyError("CLIP-FlanT5 checkpoint key 'lm_head.weight' is missing (untied T5 head)")
        tensors["lm_head.weight"] = shared
    load_strict(model, tensors, "CLIP-FlanT5 checkpoint (T5)", assign=True)
    model.encoder.embed_tokens = model.decoder.embed_tokens = model.shared
    return model.eval().requires_grad_(False)


class CLIPFlanT5(nn.Module):
    """CLIPT5ForConditionalGeneration on transformers modules: tower -> projector -> T5."""

    def __init__(self, vision_tower: nn.Module, mm_projector: nn.Module, t5: nn.Module, select_layer: int = -2,
                 select_feature: str = "patch"):
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"unknown mm_vision_select_feature {select_feature!r}")
        self.vision_tower, self.mm_projector, self.t5 = vision_tower, mm_projector, t5
        self.select_layer, self.select_feature = select_layer, select_feature

    def tower_hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The selected hidden state (LLaVA ``mm_vision_select_layer``, -2: the penultimate layer)."""
        out = self.vision_tower(pixel_values.to(self.vision_tower.dtype), output_hidden_states=True)
        return out.hidden_states[self.select_layer]

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.tower_hidden_state(pixel_values)
        hidden = hidden[:, 1:] if self.select_feature == "patch" else hidden  # 'patch' drops CLS
        return self.mm_projector(hidden.to(next(self.mm_projector.parameters()).dtype))

    def answer_logits(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Decoder logits of ``labels`` under teacher forcing, the image spliced into the question."""
        embeds, mask = splice_image_tokens(input_ids, self.image_tokens(pixel_values), self.t5.shared,
                                           self.t5.config.pad_token_id)
        out = self.t5(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=self.t5._shift_right(labels))
        return out.logits


def build_clip_flant5(config: dict, state: dict, vision_tower: nn.Module, dtype: torch.dtype) -> CLIPFlanT5:
    """The model from an official ``config.json`` (CLIPT5Config) and checkpoint state dict."""
    mapped = map_checkpoint(state)
    groups = {name: {k[len(name) + 1:]: v for k, v in mapped.items() if k.startswith(name + ".")}
              for name in ("vision_tower", "mm_projector", "t5")}
    t5 = untied_t5(config, groups["t5"], dtype)
    proj = projector(config.get("mm_projector_type", "mlp2x_gelu"), config["mm_hidden_size"], config["d_model"])
    load_strict(proj, groups["mm_projector"], "CLIP-FlanT5 checkpoint (mm_projector)")
    if groups["vision_tower"]:  # as in the official load, the checkpoint's tower overrides the hub id's
        load_strict(vision_tower, groups["vision_tower"], "CLIP-FlanT5 checkpoint (vision_tower)")
    return CLIPFlanT5(vision_tower, proj.to(dtype), t5, config.get("mm_vision_select_layer", -2),
                      config.get("mm_vision_select_feature", "patch")).eval().requires_grad_(False)


class VQAScore:
    """VQAScore (CLIP-FlanT5): P("Yes" | image, 'Does this figure show "{prompt}"? Please answer yes or no.')."""
    name = "vqascore"
    differentiable = True

    def __init__(self, model_id: str = "zhiqiulin/clip-flant5-xxl", clip_id: str = "openai/clip-vit-large-patch14-336",
                 tokenizer_id: str = "google/flan-t5-xxl", device: str = "auto", dtype: str = "bfloat16",
                 allow_download: bool = False, batch_size: int = 16, name: str = "vqascore"):
        from transformers import AutoTokenizer, CLIPVisionModel

        self.name, self.batch_size = name, batch_size
        self.device, dt = torch.device(resolve_device(device)), getattr(torch, dtype)
        config = json.loads(Path(hub_file(model_id, "config.json", "CLIP-FlanT5 config", allow_download)).read_text())
        state = read_state_dict(model_id, what="CLIP-FlanT5", allow_download=allow_download)
        tower = from_pretrained(CLIPVisionModel, clip_id, "CLIP-FlanT5 vision tower", allow_download, dtype=dt)
        self.model = build_clip_flant5(config, state, tower, dt).to(self.device)
        del state
        pre = json.loads(Path(hub_file(clip_id, "preprocessor_config.json", "CLIP-336 processor",
                                       allow_download)).read_text())
        crop = pre.get("crop_size")
        self.size = crop["height"] if isinstance(crop, dict) else (crop or tower.config.image_size)
        self.mean, self.std = pre["image_mean"], pre["image_std"]
        # t2v_metrics loads the tokenizer with model_max_length=CONTEXT_LEN and use_fast=False (sentencepiece)
        self.tokenizer = from_pretrained(AutoTokenizer, tokenizer_id, "FlanT5 tokenizer", allow_download,
                                         model_max_length=CONTEXT_LEN)
        self.labels = torch.tensor(self.tokenizer(ANSWER).input_ids, device=self.device)

    def question_batch(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = [torch.tensor(question_ids(self.tokenizer, p)) for p in prompts]
        padded = nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        return padded.to(self.device)

    def score_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """P(answer) for preprocessed CLIP inputs and question ids (with the image placeholder)."""
        labels = self.labels.expand(len(input_ids), -1)
        return answer_probability(self.model.answer_logits(pixel_values.to(self.device), input_ids.to(self.device),
                                                           labels), labels)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        scores = []
        for i in range(0, len(pixels), self.batch_size):
            x = clip_pixel_values(pixels[i:i + self.batch_size].to(self.device), self.size, self.mean, self.std)
            scores.append(self.score_inputs(x, self.question_batch(prompts[i:i + self.batch_size])))
        return torch.cat(scores).float().to(pixels.device)


__all__ = ["CHECKPOINT_KEY_MAP", "CLIPFlanT5", "VQAScore", "build_clip_flant5", "clip_pixel_values", "map_checkpoint",
           "pad_to_square", "question", "question_ids", "splice_image_tokens", "untied_t5"]
