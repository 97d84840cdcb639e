"""CountGD text-only counting (Amini-Naieni et al., "CountGD: Multi-Modal Open-World Counting", NeurIPS 2024)
on transformers' ``GroundingDinoForObjectDetection``.

With text only (no visual exemplars), CountGD's forward is GroundingDINO's (the exemplar branch,
``feature_map_proj``/``feature_map_encoder``, is computed but unused): Swin-B backbone, BERT text encoder with
sub-sentence masks, a deformable encoder with text enhancer and fusion layers, a two-stage decoder and a
contrastive class head over 256 text slots. As in the official ``single_image_inference.py``, the caption is
the class text plus " .", and the count is the number of queries whose largest sigmoid over the text slots
exceeds the box threshold (0.23).

The official checkpoint (``checkpoint_fsc147_best.pth``, ``{'model': state_dict}``, from the CountGD README)
is read through ``CHECKPOINT_KEY_MAP``: transformers' GroundingDINO conversion script
(``convert_grounding_dino_to_hf.py``), updated for transformers 5's Swin and its separate q/k/v projections.
An official key outside the table, or a model weight the checkpoint lacks, raises ``KeyError`` naming it.

Preprocessing is the official one, on PIL: ``RandomResize([800], max_size=1333)`` (bilinear), ``ToTensor``,
ImageNet normalisation. Pixels in [0, 1] are first rounded to 8 bits, as saved images are. Not
differentiable (a held-out evaluator).
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ntrk_bench.hub import MissingModel, from_pretrained, resolve_device

from .keymap import load_strict, read_state_dict, remap_state_dict, split_qkv

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SEPARATORS = ("[CLS]", "[SEP]", ".", "?")  # GroundingDINO's sub-sentence delimiters (``specical_tokens``)
PROMPTS_DIR = resources.files("ntrk_bench") / "data" / "prompts"

_SWIN = "model.backbone.conv_encoder.model.swin."
_BLOCK = r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\."
_SWIN_BLOCK = _SWIN + r"encoder.layers.\1.blocks.\2."
_ENC, _DEC = r"transformer\.encoder\.", r"transformer\.decoder\.layers\.(\d+)\."
_HF_ENC, _HF_DEC = r"model.encoder.layers.\1.", r"model.decoder.layers.\1."
_MHA_QKV = ("query", "key", "value")  # transformers' names of nn.MultiheadAttention's packed in_proj_
# Official key (regex) -> transformers key (template; None: not loaded), first match wins (see keymap.py).
CHECKPOINT_KEY_MAP = (
    # not loaded: the exemplar branch, BERT's unused pooler and position-id buffer, Swin's relative position index
    # (a buffer transformers recomputes; checked equal, see ``load_countgd``)
    (r"feature_map_(proj|encoder)\..*", None),
    (r"bert\.pooler\..*", None),
    (r"bert\.embeddings\.position_ids", None),
    (_BLOCK + r"attn\.relative_position_index", None),
    # Swin backbone (Swin-Transformer object-detection layout); its packed qkv split into q/k/v
    (r"backbone\.0\.patch_embed\.proj\.(.*)", _SWIN + r"embeddings.patch_embeddings.projection.\1"),
    (r"backbone\.0\.patch_embed\.norm\.(.*)", _SWIN + r"embeddings.norm.\1"),
    (_BLOCK + r"norm1\.(.*)", _SWIN_BLOCK + r"layernorm_before.\3"),
    (_BLOCK + r"norm2\.(.*)", _SWIN_BLOCK + r"layernorm_after.\3"),
    (_BLOCK + r"attn\.qkv\.(weight|bias)", tuple(_SWIN_BLOCK + rf"attention.{p}_proj.\3" for p in "qkv"), split_qkv),
    (_BLOCK + r"attn\.proj\.(.*)", _SWIN_BLOCK + r"attention.o_proj.\3"),
    (_BLOCK + r"attn\.relative_position_bias_table",
     _SWIN_BLOCK + "attention.relative_position_bias.relative_position_bias_table"),
    (_BLOCK + r"mlp\.(.*)", _SWIN_BLOCK + r"mlp.\3"),
    (r"backbone\.0\.layers\.(\d+)\.downsample\.(.*)", _SWIN + r"encoder.layers.\1.downsample.\2"),
    # per-level output norms: official norm{i} of return_interm_indices [1, 2, 3] = transformers stage{i+1}
    (r"backbone\.0\.norm1\.(.*)", r"model.backbone.conv_encoder.model.hidden_states_norms.stage2.\1"),
    (r"backbone\.0\.norm2\.(.*)", r"model.backbone.conv_encoder.model.hidden_states_norms.stage3.\1"),
    (r"backbone\.0\.norm3\.(.*)", r"model.backbone.conv_encoder.model.hidden_states_norms.stage4.\1"),
    # text branch and input projections
    (r"bert\.(.*)", r"model.text_backbone.\1"),
    (r"feat_map\.(.*)", r"model.text_projection.\1"),
    (r"input_proj\.(.*)", r"model.input_proj_vision.\1"),
    # encoder: deformable image layers, text enhancer layers, fusion layers
    (_ENC + r"layers\.(\d+)\.self_attn\.(.*)", _HF_ENC + r"deformable_layer.self_attn.\2"),
    (_ENC + r"layers\.(\d+)\.norm1\.(.*)", _HF_ENC + r"deformable_layer.self_attn_layer_norm.\2"),
    (_ENC + r"layers\.(\d+)\.linear1\.(.*)", _HF_ENC + r"deformable_layer.fc1.\2"),
    (_ENC + r"layers\.(\d+)\.linear2\.(.*)", _HF_ENC + r"deformable_layer.fc2.\2"),
    (_ENC + r"layers\.(\d+)\.norm2\.(.*)", _HF_ENC + r"deformable_layer.final_layer_norm.\2"),
    (_ENC + r"text_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)",
     tuple(_HF_ENC + rf"text_enhancer_layer.self_attn.{p}.\2" for p in _MHA_QKV), split_qkv),
    (_ENC + r"text_layers\.(\d+)\.self_attn\.out_proj\.(.*)", _HF_ENC + r"text_enhancer_layer.self_attn.out_proj.\2"),
    (_ENC + r"text_layers\.(\d+)\.linear1\.(.*)", _HF_ENC + r"text_enhancer_layer.fc1.\2"),
    (_ENC + r"text_layers\.(\d+)\.linear2\.(.*)", _HF_ENC + r"text_enhancer_layer.fc2.\2"),
    (_ENC + r"text_layers\.(\d+)\.norm1\.(.*)", _HF_ENC + r"text_enhancer_layer.layer_norm_before.\2"),
    (_ENC + r"text_layers\.(\d+)\.norm2\.(.*)", _HF_ENC + r"text_enhancer_layer.layer_norm_after.\2"),
    (_ENC + r"fusion_layers\.(\d+)\.gamma_v", _HF_ENC + "fusion_layer.vision_param"),
    (_ENC + r"fusion_layers\.(\d+)\.gamma_l", _HF_ENC + "fusion_layer.text_param"),
    (_ENC + r"fusion_layers\.(\d+)\.layer_norm_v\.(.*)", _HF_ENC + r"fusion_layer.layer_norm_vision.\2"),
    (_ENC + r"fusion_layers\.(\d+)\.layer_norm_l\.(.*)", _HF_ENC + r"fusion_layer.layer_norm_text.\2"),
    (_ENC + r"fusion_layers\.(\d+)\.attn\.v_proj\.(.*)", _HF_ENC + r"fusion_layer.attn.vision_proj.\2"),
    (_ENC + r"fusion_layers\.(\d+)\.attn\.l_proj\.(.*)", _HF_ENC + r"fusion_layer.attn.text_proj.\2"),
    (_ENC + r"fusion_layers\.(\d+)\.attn\.values_v_proj\.(.*)", _HF_ENC + r"fusion_layer.attn.values_vision_proj.\2"),
    (_ENC + r"fusion_layers\.(\d+)\.attn\.values_l_proj\.(.*)", _HF_ENC + r"fusion_layer.attn.values_text_proj.\2"),
    (_ENC + r"fusion_layers\.(\d+)\.attn\.out_v_proj\.(.*)", _HF_ENC + r"fusion_layer.attn.out_vision_proj.\2"),
    (_ENC + r"fusion_layers\.(\d+)\.attn\.out_l_proj\.(.*)", _HF_ENC + r"fusion_layer.attn.out_text_proj.\2"),
    # decoder layers
    (_DEC + r"cross_attn\.(.*)", _HF_DEC + r"encoder_attn.\2"),
    (_DEC + r"norm1\.(.*)", _HF_DEC + r"encoder_attn_layer_norm.\2"),
    (_DEC + r"ca_text\.in_proj_(weight|bias)", tuple(_HF_DEC + rf"encoder_attn_text.{p}.\2" for p in _MHA_QKV),
     split_qkv),
    (_DEC + r"ca_text\.out_proj\.(.*)", _HF_DEC + r"encoder_attn_text.out_proj.\2"),
    (_DEC + r"catext_norm\.(.*)", _HF_DEC + r"encoder_attn_text_layer_norm.\2"),
    (_DEC + r"self_attn\.in_proj_(weight|bias)", tuple(_HF_DEC + rf"self_attn.{p}.\2" for p in _MHA_QKV), split_qkv),
    (_DEC + r"self_attn\.out_proj\.(.*)", _HF_DEC + r"self_attn.out_proj.\2"),
    (_DEC + r"norm2\.(.*)", _HF_DEC + r"self_attn_layer_norm.\2"),
    (_DEC + r"linear1\.(.*)", _HF_DEC + r"fc1.\2"),
    (_DEC + r"linear2\.(.*)", _HF_DEC + r"fc2.\2"),
    (_DEC + r"norm3\.(.*)", _HF_DEC + r"final_layer_norm.\2"),
    # decoder heads, two-stage proposals, queries
    (r"transformer\.decoder\.norm\.(.*)", r"model.decoder.layer_norm.\1"),
    (r"transformer\.decoder\.ref_point_head\.(.*)", r"model.decoder.reference_points_head.\1"),
    (r"transformer\.decoder\.bbox_embed\.(.*)", r"model.decoder.bbox_embed.\1"),
    (r"bbox_embed\.(.*)", r"bbox_embed.\1"),  # the same module as the decoder's (dec_pred_bbox_embed_share)
    (r"transformer\.enc_output\.(.*)", r"model.enc_output.\1"),
    (r"transformer\.enc_output_norm\.(.*)", r"model.enc_output_norm.\1"),
    (r"transformer\.enc_out_bbox_embed\.(.*)", r"model.encoder_output_bbox_embed.\1"),
    (r"transformer\.level_embed", "model.level_embed"),
    (r"transformer\.tgt_embed\.(.*)", r"model.query_position_embeddings.\1"),
)
# transformers weights the official model does not have: Swin's final norm (unused when it is a backbone).
UNUSED_TARGETS = (_SWIN + "layernorm.",)


def map_checkpoint(state: dict) -> dict:
    """Official CountGD keys (``module.``-prefixed in DataParallel checkpoints) -> transformers GroundingDINO
    keys through ``CHECKPOINT_KEY_MAP``. A key the table does not cover raises ``KeyError`` naming it."""
    return remap_state_dict({k.removeprefix("module."): v for k, v in state.items()}, CHECKPOINT_KEY_MAP,
                            "CountGD checkpoint")


def grounding_dino_config(text_config, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12,
                          encoder_layers=6, decoder_layers=6, ffn_dim=2048, num_queries=900, num_feature_levels=4):
    """CountGD's ``cfg_fsc147_vit_b.py`` as a ``GroundingDinoConfig``: Swin-B 384 (levels 1-3 out), d_model 256,
    8 heads, 4 points, two-stage, shared decoder box head, 256 text slots. Sizes are arguments for tiny tests."""
    from transformers import GroundingDinoConfig, SwinConfig

    swin = SwinConfig(embed_dim=embed_dim, depths=list(depths), num_heads=list(num_heads), window_size=window_size,
                      image_size=384, out_indices=[2, 3, 4])
    return GroundingDinoConfig(backbone_config=swin, text_config=text_config, encoder_layers=encoder_layers,
                               decoder_layers=decoder_layers, encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim,
                               num_queries=num_queries, num_feature_levels=num_feature_levels, d_model=256,
                               encoder_attention_heads=8, decoder_attention_heads=8, max_text_len=256,
                               two_stage=True, decoder_bbox_embed_share=True, two_stage_bbox_embed_share=False)


def load_countgd(config, state: dict, separator_ids: Sequence[int]):
    """``GroundingDinoForObjectDetection`` with the official checkpoint's weights (cast to float32: the
    checkpoint may mix dtypes) and the tokenizer's separator ids (transformers hard-codes bert-base-uncased's)."""
    from transformers import GroundingDinoForObjectDetection

    mapped = map_checkpoint(state)
    for key in [k for k in mapped if k.startswith("bbox_embed.")]:
        shared = mapped.get("model.decoder." + key)
        if shared is not None and not torch.equal(shared, mapped[key]):
            raise KeyError(f"CountGD checkpoint key {key!r} differs from the decoder's shared box head")
    model = GroundingDinoForObjectDetection(config).eval()
    load_strict(model, mapped, "CountGD checkpoint", torch.float32, keep_init=UNUSED_TARGETS)
    buffers = dict(model.named_buffers())
    for key, value in state.items():  # the official relative position index must be the one transformers computes
        key = key.removeprefix("module.")
        if key.endswith("attn.relative_position_index"):
            block = re.match(_BLOCK, key).expand(_SWIN_BLOCK)
            ours = buffers[block + "attention.relative_position_bias.relative_position_index"]
            if not torch.equal(ours, value.flatten().to(ours.device)):
                raise KeyError(f"CountGD checkpoint key {key!r} differs from transformers' Swin relative positions")
    model.model.special_tokens.copy_(torch.tensor(list(separator_ids)))
    return model.requires_grad_(False)


def resize_size(h: int, w: int, size: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """(height, width) of CountGD's ``RandomResize([800], max_size=1333)`` (datasets_inference/transforms.py):
    the short side becomes ``size``, reduced so the long side stays near ``max_size``; the long side is
    truncated, not rounded (so it can exceed ``max_size`` by one)."""
    short, long = min(h, w), max(h, w)
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if short == size:
        return h, w
    return (int(size * h / w), size) if w < h else (size, int(size * w / h))


def preprocess(pixels: torch.Tensor) -> torch.Tensor:
    """One (3, H, W) image in [0, 1] -> CountGD's normalised input: 8-bit PIL image, bilinear resize, ImageNet
    mean/std (torchvision's PIL resize is ``Image.resize(..., BILINEAR)``)."""
    from PIL import Image

    arr = (pixels.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    h, w = resize_size(*arr.shape[:2])
    img = Image.fromarray(arr).resize((w, h), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def batch_images(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad to the largest size, bottom/right, with a pixel mask (1 = image), as
    ``nested_tensor_from_tensor_list`` (whose mask is the complement)."""
    h, w = max(x.shape[1] for x in images), max(x.shape[2] for x in images)
    batch = torch.zeros(len(images), 3, h, w)
    mask = torch.zeros(len(images), h, w, dtype=torch.long)
    for i, x in enumerate(images):
        batch[i, :, :x.shape[1], :x.shape[2]] = x
        mask[i, :x.shape[1], :x.shape[2]] = 1
    return batch, mask


def count_queries(logits: torch.Tensor, box_threshold: float) -> torch.Tensor:
    """Queries whose largest sigmoid over all text slots exceeds the threshold (``single_image_inference.py``);
    padded slots are -inf (sigmoid 0)."""
    return (logits.sigmoid().amax(-1) > box_threshold).sum(-1)


def prompt_items(prompts_file) -> dict[str, list[dict]]:
    """``{prompt: [{prompt: phrase, count: n}, ...]}`` from the counting prompt records (a name in
    ``ntrk_bench/data/prompts/`` or a path; one or a list)."""
    table = {}
    for name in [prompts_file] if isinstance(prompts_file, (str, Path)) else prompts_file:
        path = Path(name) if Path(name).is_file() else Path(str(PROMPTS_DIR / str(name)))
        for record in json.loads(path.read_text()):
            table[record["prompt"]] = list(record["items"])
    return table


class CountGD:
    """CountGD text-only counting. ``evaluate`` reports per sample the predicted and target counts (summed over
    the prompt's items), the absolute error (``countgd_mae``, mean over the items) and exact-count accuracy
    (``countgd_accuracy``, 100 when every item's count is exact) against the counts in the prompt records;
    calling it gives the predicted counts."""
    name = "countgd"
    differentiable = False

    def __init__(self, checkpoint: str = "checkpoints", checkpoint_file: str = "checkpoint_fsc147_best.pth",
                 text_encoder: str = "bert-base-uncased", prompts_file="counting_standin.json",
                 box_threshold: float = 0.23, model: dict | None = None, device: str = "auto",
                 dtype: str = "float32", allow_download: bool = False, batch_size: int = 4):
        from transformers import AutoConfig, AutoTokenizer

        self.device = torch.device(resolve_device(device))
        self.batch_size, self.box_threshold = batch_size, box_threshold
        self.prompts_file, self.items = prompts_file, prompt_items(prompts_file) if prompts_file else {}
        try:
            state = read_state_dict(checkpoint, checkpoint_file, "CountGD", allow_download)
        except MissingModel:
            raise MissingModel(f"CountGD checkpoint '{checkpoint_file}' not found under '{checkpoint}': download "
                               f"it from the CountGD release (github.com/niki-amini-naieni/CountGD, README) and set "
                               f"reward.checkpoint=/path/to/{checkpoint_file}") from None
        self.tokenizer = from_pretrained(AutoTokenizer, text_encoder, "CountGD BERT tokenizer", allow_download)
        text_config = from_pretrained(AutoConfig, text_encoder, "CountGD BERT config", allow_download)
        separators = self.tokenizer.convert_tokens_to_ids(list(SEPARATORS))
        detector = load_countgd(grounding_dino_config(text_config, **(model or {})), state, separators)
        self.model = detector.to(self.device, getattr(torch, dtype))

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor, phrases: Sequence[str]) -> torch.Tensor:
        """(N, queries, 256) class logits for image i and caption ``phrases[i] + " ."``."""
        images, mask = batch_images([preprocess(x) for x in pixels])
        text = self.tokenizer([p + " ." for p in phrases], padding="longest", truncation=True, max_length=256,
                              return_tensors="pt")
        out = self.model(pixel_values=images.to(self.device, self.model.dtype), pixel_mask=mask.to(self.device),
                         **{k: v.to(self.device) for k, v in text.items()})
        return out.logits

    def count(self, pixels: torch.Tensor, phrases: Sequence[str]) -> torch.Tensor:
        """Predicted count of ``phrases[i]`` in image i, in batches of ``batch_size``."""
        return torch.cat([count_queries(self.logits(pixels[i:i + self.batch_size], phrases[i:i + self.batch_size]),
                                        self.box_threshold).cpu() for i in range(0, len(pixels), self.batch_size)])

    def items_of(self, prompt: str) -> list[dict]:
        """The prompt's counting items (``{prompt: phrase, count: target}``) from the records; without a
        ``prompts_file``, the prompt itself is the one phrase, with no target."""
        if not self.prompts_file:
            return [{"prompt": prompt}]
        if prompt not in self.items:
            raise KeyError(f"prompt {prompt!r} has no counting record in {self.prompts_file!r}")
        return self.items[prompt]

    def item_counts(self, pixels: torch.Tensor, prompts: Sequence[str]) -> list[tuple[int, dict, int]]:
        """(sample index, item, predicted count) for every item of every prompt, each phrase counted alone."""
        pairs = [(i, item) for i, p in enumerate(prompts) for item in self.items_of(p)]
        counts = self.count(pixels[[i for i, _ in pairs]], [item["prompt"] for _, item in pairs]).tolist()
        return [(i, item, n) for (i, item), n in zip(pairs, counts)]

    def evaluate(self, pixels: torch.Tensor, prompts: Sequence[str], latents=None) -> dict:
        if not self.prompts_file:
            raise ValueError("CountGD evaluation needs prompts_file: the prompt records holding the target counts")
        n = len(prompts)
        out = {"countgd_count": [0] * n, "countgd_target": [0] * n, "countgd_mae": [0.0] * n,
               "countgd_accuracy": [100.0] * n}
        for i, item, count in self.item_counts(pixels, prompts):
            target = int(item["count"])
            out["countgd_count"][i] += count
            out["countgd_target"][i] += target
            out["countgd_mae"][i] += abs(count - target) / len(self.items_of(prompts[i]))
            if count != target:
                out["countgd_accuracy"][i] = 0.0
        return out

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Predicted counts, summed over each prompt's items (the number of objects CountGD finds)."""
        totals = torch.zeros(len(prompts))
        for i, _, count in self.item_counts(pixels, prompts):
            totals[i] += count
        return totals.to(pixels.device)


__all__ = ["CHECKPOINT_KEY_MAP", "CountGD", "count_queries", "grounding_dino_config", "load_countgd", "map_checkpoint",
           "preprocess", "prompt_items", "resize_size"]
