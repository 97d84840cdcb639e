"""Qwen2.5-VL yes-probability reward (the VLM task of the paper, Sec. C.4), differentiable from pixels.

Recipe of Dual-Process image generation (Luo et al., ICCV 2025; g-luo/dual_process,
``dual_process/dig_operators.py``: ``create_vlm_prompt``, ``loss_vlm``), itself VQAScore's (Lin et al., ECCV 2024):
one image and the question (plus " Answer with Yes or No.") in the model's chat template with the generation
prompt, the answer "Yes" appended, and

    P(answer) = exp(-mean cross-entropy over the answer tokens).

The Qwen2-VL / Qwen2.5-VL processors need torchvision (their video processor), which cannot live next to the CPU
torch build, so the processor's work is done here in torch, on tensors that keep the gradient:

* resize to ``smart_resize(H, W, factor=patch*merge, min_pixels, max_pixels)`` (qwen-vl-utils' rule; both sides
  multiples of 28, so the patch grid is even and merges 2x2), bicubic with antialiasing as the processor's PIL
  bicubic;
* normalise with the processor's (CLIP) mean and std;
* flatten into (grid_t * grid_h * grid_w, C * temporal_patch * patch * patch) patches in the processor's order
  (Qwen2VLImageProcessor ``patchify``: grid rows/cols of merge blocks, then the 2x2 block, then channel, the image
  repeated temporal_patch times, patch rows, patch cols), with ``image_grid_thw`` = (1, H/14, W/14);
* expand the one ``<|image_pad|>`` of the chat template into grid_t*grid_h*grid_w / merge^2 tokens and mark them
  in ``mm_token_type_ids`` (1 = image), which transformers 5 needs for Qwen2.5-VL's 3D (M-RoPE) positions.

The tensor helpers are shared with VideoReward (``rewards/qwen_vision.py``). tests/test_vlm_yes.py checks these
inputs against the real ``Qwen2_5_VLProcessor`` and the score against the model's own loss on a tiny random
Qwen2.5-VL.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ntrk_bench.hub import from_pretrained, hub_file, resolve_device

from .qwen_vision import normalise, patchify, resize_frames, smart_resize
from .remote import PromptRecords


# ----------------------------------------------------------------------------------------------- image -> patches
def vision_inputs(pixels: torch.Tensor, mean, std, patch_size: int, merge_size: int, temporal_patch_size: int,
                  min_pixels: int, max_pixels: int, antialias: bool = True):
    """Pixels (B, 3, H, W) in [0, 1] -> (pixel_values (B * gh * gw, 3 * T * p * p), image_grid_thw (B, 3)) as
    Qwen2VLImageProcessor makes them: ``smart_resize`` to multiples of patch*merge within [min, max] pixels,
    bicubic (antialiased, as the processor's PIL bicubic), CLIP normalisation, the processor's patch layout; the
    images of a batch are concatenated along the patches as the processor does."""
    h, w = smart_resize(pixels.shape[-2], pixels.shape[-1], patch_size * merge_size, min_pixels, max_pixels)
    if antialias or (h, w) == tuple(pixels.shape[-2:]):
        x = resize_frames(pixels, h, w, quantize=False)  # on the 0..255 scale
    else:
        x = 255 * F.interpolate(pixels.float(), size=(h, w), mode="bicubic", align_corners=False)
    x = normalise(x, mean, std)
    parts = [patchify(image[None], patch_size, temporal_patch_size, merge_size) for image in x]
    return torch.cat([p for p, _ in parts]), torch.stack([g for _, g in parts]).to(pixels.device)


# ------------------------------------------------------------------------------------------------ text -> tokens
def chat_prefix(tokenizer, question: str, chat_template: str | None = None) -> str:
    """The model's chat template with one image and the question, ending in the assistant turn's opening
    (Dual-Process ``configs/vlm/qwenvl.yaml`` writes the same string out for Qwen2.5-VL)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return tokenizer.apply_chat_template(messages, chat_template=chat_template, add_generation_prompt=True,
                                         tokenize=False)


def answer_tokens(tokenizer, prefix: str, answer: str) -> tuple[list[int], int]:
    """Ids of prefix + answer and where the answer starts: the first position where they differ from the prefix
    alone (Dual-Process ``create_vlm_prompt``; robust to a merge across the boundary)."""
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    all_ids = tokenizer(prefix + answer, add_special_tokens=False)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(prefix_ids, all_ids)) if a != b), len(prefix_ids))
    if start >= len(all_ids):
        raise ValueError(f"the answer {answer!r} adds no token after the prompt")
    return all_ids, start


def expand_image_tokens(ids: list[int], image_token_id: int, n_tokens: int) -> list[int]:
    """One ``<|image_pad|>`` -> ``n_tokens`` of them (Qwen2_5_VLProcessor ``replace_image_token``)."""
    if ids.count(image_token_id) != 1:
        raise ValueError(f"expected one image token in the prompt, found {ids.count(image_token_id)}")
    i = ids.index(image_token_id)
    return ids[:i] + [image_token_id] * n_tokens + ids[i + 1:]


def batch_text_inputs(sequences: Sequence[list[int]], image_token_id: int, pad_token_id: int):
    """Left-padded ``input_ids``, ``attention_mask`` and ``mm_token_type_ids`` (0 text, 1 image) of a batch; left
    padding puts every answer at the end, so the logits of the last positions are all that is needed."""
    n = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), n), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), n), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, n - len(s):] = torch.tensor(s)
        mask[row, n - len(s):] = 1
    return ids, mask, (ids == image_token_id).long() * mask


def answer_log_probability(logits: torch.Tensor, input_ids: torch.Tensor, n_answer: int) -> torch.Tensor:
    """Mean log-probability of the last ``n_answer`` tokens under next-token ``logits`` (B, >= n_answer + 1, V)
    of the last positions: -mean cross-entropy, as ``loss_vlm`` (with VQAScore's exp(-loss) outside)."""
    logp = torch.log_softmax(logits[:, -n_answer - 1:-1].float(), dim=-1)
    target = input_ids[:, -n_answer:].to(logits.device)
    return logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).mean(-1)


# ---------------------------------------------------------------------------------------------------- the reward
def load_chat_template(model_id: str, tokenizer, allow_download: bool) -> str | None:
    """The tokenizer's chat template, else the processor's (``chat_template.jinja`` / ``chat_template.json``)."""
    if tokenizer.chat_template:
        return None  # apply_chat_template uses the tokenizer's own
    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            path = Path(hub_file(model_id, name, "Qwen2.5-VL chat template", allow_download))
        except RuntimeError:
            continue
        text = path.read_text()
        return json.loads(text)["chat_template"] if name.endswith(".json") else text
    raise ValueError(f"no chat template found for {model_id!r} (tokenizer_config, chat_template.jinja/.json)")


class VLMYesProbability:
    """P(answer | image, question) of Qwen2.5-VL, the question looked up by prompt in ``prompts_file`` records
    ``{prompt, question}``. Returns probabilities in [0, 1] (``log_probability=True``: their logarithm).
    ``conventions`` lists the settings recorded with each result."""

    name = "vlm_yes"
    differentiable = True

    def __init__(self, model_id: str = "Qwen/Qwen2.5-VL-7B-Instruct", prompts_file: str | None = None,
                 answer: str = "Yes", question_suffix: str = "Answer with Yes or No.",
                 min_pixels: int | None = None, max_pixels: int | None = None, antialias: bool = True,
                 log_probability: bool = False, device: str = "auto", dtype: str = "bfloat16",
                 allow_download: bool = False, batch_size: int = 1):
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        if not prompts_file:
            raise ValueError("vlm_yes needs prompts_file: {prompt, question} records (e.g. vlm_depth_standin.json)")
        self.records = PromptRecords(prompts_file, required=("question",))
        self.answer, self.question_suffix = answer, question_suffix
        self.antialias, self.log_probability = antialias, log_probability
        self.batch_size = batch_size
        self.device = torch.device(resolve_device(device))
        self.model = from_pretrained(Qwen2_5_VLForConditionalGeneration, model_id, "Qwen2.5-VL", allow_download,
                                     dtype=getattr(torch, dtype))
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = from_pretrained(AutoTokenizer, model_id, "Qwen2.5-VL tokenizer", allow_download)
        # the image processor's configuration only (its PIL class needs no torchvision); the work is done in torch
        ip = from_pretrained(Qwen2VLImageProcessorPil, model_id, "Qwen2.5-VL image processor", allow_download)
        self.mean, self.std = ip.image_mean, ip.image_std
        self.patch_size, self.merge_size = ip.patch_size, ip.merge_size
        self.temporal_patch_size = ip.temporal_patch_size
        self.min_pixels = min_pixels or ip.size["shortest_edge"]
        self.max_pixels = max_pixels or ip.size["longest_edge"]
        self.chat_template = load_chat_template(model_id, self.tokenizer, allow_download)
        self.image_token_id = self.model.config.image_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.conventions = {
            "model_id": model_id, "prompts_file": str(self.records.path), "answer": answer,
            "question_suffix": question_suffix, "chat_template": "processor" if self.chat_template else "tokenizer",
            "score": "log P(answer)" if log_probability else "P(answer) = exp(-mean CE of the answer tokens)",
            "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
            "resize": "smart_resize, bicubic" + (" antialias" if antialias else ""),
            "positions": "M-RoPE (mm_token_type_ids)", "dtype": dtype}

    def question(self, prompt: str) -> str:
        q = self.records[prompt]["question"]
        return f"{q} {self.question_suffix}" if self.question_suffix else q

    def token_sequences(self, prompts: Sequence[str], n_image_tokens: int) -> tuple[list[list[int]], int]:
        """Per prompt: chat prefix + answer ids with the image tokens expanded; and the answer's token count."""
        sequences, counts = [], set()
        for p in prompts:
            prefix = chat_prefix(self.tokenizer, self.question(p), self.chat_template)
            ids, start = answer_tokens(self.tokenizer, prefix, self.answer)
            sequences.append(expand_image_tokens(ids, self.image_token_id, n_image_tokens))
            counts.add(len(ids) - start)
        if len(counts) != 1:  # cannot happen with a template that ends each prefix alike; fail loudly if it does
            raise ValueError(f"the answer {self.answer!r} tokenises differently across prompts: {sorted(counts)}")
        return sequences, counts.pop()

    def model_inputs(self, pixels: torch.Tensor, prompts: Sequence[str]) -> tuple[dict, int]:
        """The keyword inputs of the model's forward (as Qwen2_5_VLProcessor would give them) and the answer
        length."""
        pixel_values, grid = vision_inputs(pixels.to(self.device), self.mean, self.std, self.patch_size,
                                           self.merge_size, self.temporal_patch_size, self.min_pixels,
                                           self.max_pixels, self.antialias)
        n_image_tokens = int(grid[0].prod()) // self.merge_size ** 2
        sequences, n_answer = self.token_sequences(prompts, n_image_tokens)
        ids, mask, mm_types = batch_text_inputs(sequences, self.image_token_id, self.pad_token_id)
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                  "mm_token_type_ids": mm_types.to(self.device), "pixel_values": pixel_values.to(self.model.dtype),
                  "image_grid_thw": grid}
        return inputs, n_answer

    def log_prob(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        inputs, n_answer = self.model_inputs(pixels, prompts)
        out = self.model(**inputs, use_cache=False, logits_to_keep=n_answer + 1)
        return answer_log_probability(out.logits, inputs["input_ids"], n_answer)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if len(prompts) != len(pixels):
            raise ValueError(f"{len(pixels)} images but {len(prompts)} prompts")
        parts = [self.log_prob(pixels[i:i + self.batch_size], list(prompts[i:i + self.batch_size]))
                 for i in range(0, len(pixels), self.batch_size)]
        logp = torch.cat(parts)
        return (logp if self.log_probability else logp.exp()).float().to(pixels.device)


__all__ = ["VLMYesProbability", "answer_log_probability", "answer_tokens", "chat_prefix", "vision_inputs"]
