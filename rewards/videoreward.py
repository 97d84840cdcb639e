"""VideoReward (VideoAlign) as a differentiable target reward on transformers 5, from [0, 1] video pixels.

VideoReward (KlingAIResearch/VideoAlign, MIT; weights ``KwaiVGI/VideoReward``) is Qwen2-VL-2B-Instruct with LoRA on
the language model's linear layers and a bias-free ``rm_head`` read at three special tokens, ``<|VQ_reward|>``
(visual quality), ``<|MQ_reward|>`` (motion quality) and ``<|TA_reward|>`` (text alignment), which the prompt
template places after each criterion's description. Official inference (``inference.VideoVLMRewardInference``)
normalises each head with the checkpoint's ``inference_config`` (``use_norm``) and reports Overall = VQ + MQ + TA,
the paper's Table 3 target.

The checkpoint (``checkpoint-<step>/model.pth``) is a full state dict in PEFT-wrapped names; the base model is
needed only for its config, tokenizer and preprocessor config. This port

* merges LoRA by hand, W = W0 + scaling * B A with scaling = alpha / r (peft ``LoraLayer``; alpha / sqrt(r) with
  rsLoRA), and renames keys with the table ``KEY_PREFIXES``; missing or unexpected keys raise ``KeyError``;
* builds the prompt ids itself: the base tokenizer plus the three reward tokens (as VideoAlign's
  ``create_model_and_processor``), its chat template, and one ``<|video_pad|>`` per merged visual token (what the
  Qwen2-VL processor does, which needs torchvision in transformers 5);
* reads frames with qwen-vl-utils' rules in torch (``rewards.qwen_vision``): frames sampled at ``fps`` from a
  video of ``input_fps``, ``smart_resize`` to multiples of 28 within [min_pixels, max_pixels], bicubic with
  antialias snapped to uint8 (straight-through gradient), the processor's rescale/normalise and patch layout;
* uses plain sequential position ids by default. VideoAlign's ``Qwen2VLRewardModelBT.forward`` embeds the tokens
  itself and calls the inner Qwen2-VL model with ``input_ids=None, position_ids=None``; transformers 4.45 then
  uses positions 0..L-1 in all three M-RoPE sections, so the checkpoint was trained and is scored that way.
  ``position_ids="mrope"`` gives Qwen2-VL's 3-D positions instead (off by 0.7 on the golden fixture).

Every convention is a constructor field and is listed in ``conventions``.
"""
from __future__ import annotations

import json
from typing import Sequence

import torch
from torch import nn

from ntrk_bench.hub import from_pretrained, hub_file, resolve_device

from .qwen_vision import VIDEO_MIN_PIXELS, normalise, patchify, resize_frames, sample_frame_indices, smart_resize

HEADS = ("VQ", "MQ", "TA")
REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
VIDEO_PAD = "<|video_pad|>"

# VideoAlign prompt_template.py, DETAILED_PROMPT_WITH_SPECIAL_TOKEN (template "detailed_special"), verbatim
PROMPT_TEMPLATE = "\n".join((
    '',
    'You are tasked with evaluating a generated video based on three distinct criteria: Visual '
    'Quality, Motion Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of '
    'the three categories, with 0 being the worst and 10 being the best. Each evaluation should be '
    'independent of the others.',
    '',
    '**Visual Quality:**  ',
    'Evaluate the overall visual quality of the video, with a focus on static factors. The following '
    'sub-dimensions should be considered:',
    '- **Reasonableness:** The video should not contain any significant biological or logical errors, '
    'such as abnormal body structures or nonsensical environmental setups.',
    '- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and '
    'easy to interpret, with no blurring or indistinct areas.',
    '- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other '
    'visual elements (e.g., hair, clothing, shadows).',
    '- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color '
    'scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene '
    'should convey a sense of harmony and balance.',
    '- **Safety:** The video should not contain harmful or inappropriate content, such as political, '
    'violent, or adult material. If such content is present, the image quality and satisfaction score '
    'should be the lowest possible. ',
    '',
    'Please provide the ratings of Visual Quality: <|VQ_reward|>',
    'END',
    '',
    '**Motion Quality:**  ',
    'Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following '
    'sub-dimensions:',
    '- **Stability:** Evaluate the continuity and stability between frames. There should be no '
    'sudden, unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating '
    'colors, textures, or missing body parts).',
    '- **Naturalness:** The movement should align with physical laws and be realistic. For example, '
    'clothing should flow naturally with motion, and facial expressions should change appropriately '
    '(e.g., blinking, mouth movements).',
    '- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between '
    'different motions or camera angles should be seamless, and the overall dynamic feel should be '
    'visually pleasing.',
    '- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend '
    'naturally with the background, without obvious artifacts or the feeling of cut-and-paste '
    'effects.',
    '- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any '
    'areas where the video might have blurry or unsteady sections that hinder visual continuity.',
    '- **Amplitude:** If the video is largely static or has little movement, assign a low score for '
    'motion quality.',
    '',
    'Please provide the ratings of Motion Quality: <|MQ_reward|>',
    'END',
    '',
    '**Text Alignment:**  ',
    'Assess how well the video matches the textual prompt across the following sub-dimensions:',
    '- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, '
    'animal, object) align with the textual description. The subject should match the description in '
    'terms of number, appearance, and behavior.',
    '- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial '
    'expressions like talking or blinking) align with the described prompt. The motion should match '
    'the prompt in terms of type, scale, and direction.',
    '- **Environment Relevance:** Assess whether the background and scene fit the prompt. This '
    'includes checking if real-world locations or scenes are accurately represented, though some '
    'stylistic adaptation is acceptable.  ',
    '- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, '
    'evaluate how well the video adheres to this style.',
    '- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, '
    'focus shifts) are consistent with the expected behavior from the prompt.',
    '',
    'Textual prompt - {text_prompt}',
    'Please provide the ratings of Text Alignment: <|TA_reward|>',
    'END',
    '',
))


# Checkpoint prefix (PEFT-wrapped Qwen2VLRewardModelBT, transformers 4.45 names) -> module of this port
# (transformers 5 Qwen2VLModel as ``backbone``, plus ``rm_head``).
KEY_PREFIXES = {
    "base_model.model.visual.": "backbone.visual.",
    "base_model.model.model.": "backbone.language_model.",
    "base_model.model.rm_head.": "rm_head.",
}
# The tied language-model head: a reward reads hidden states, never logits.
UNUSED_KEYS = ("base_model.model.lm_head.weight",)
# peft's names around a LoRA-wrapped nn.Linear ``<stem>``
LORA_BASE, LORA_A, LORA_B = ".base_layer.", ".lora_A.default.weight", ".lora_B.default.weight"


def merge_lora(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W0 + scaling * B A (peft ``LoraLayer.get_delta_weight``), in float32 (cast once to the run's dtype later)."""
    return weight.float() + scaling * (lora_b.float() @ lora_a.float())


def lora_scaling(peft_config: dict, rank: int) -> float:
    """peft's ``scaling``: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
    if int(peft_config["lora_r"]) != rank:
        raise ValueError(f"model_config.json says lora_r={peft_config['lora_r']}, "
                         f"the checkpoint's LoRA has rank {rank}")
    alpha = float(peft_config["lora_alpha"])
    return alpha / rank ** 0.5 if peft_config.get("use_rslora") else alpha / rank


def merge_lora_layers(state: dict, scaling: float) -> dict:
    """Replace each LoRA-wrapped linear ``<stem>.{base_layer.weight, base_layer.bias, lora_A, lora_B}`` by
    ``<stem>.{weight, bias}``; other keys pass unchanged. A layer missing one of its three weights raises
    ``KeyError``."""
    out = {}
    for key, value in state.items():
        stem = key.split(LORA_BASE)[0] if LORA_BASE in key else key.removesuffix(LORA_A).removesuffix(LORA_B)
        if stem == key:  # not part of a LoRA-wrapped layer
            out[key] = value
            continue
        parts = (stem + LORA_BASE + "weight", stem + LORA_A, stem + LORA_B)
        if not all(p in state for p in parts):
            raise KeyError(f"incomplete LoRA layer {stem!r} in the checkpoint: needs {parts}")
        if key == parts[0]:
            out[stem + ".weight"] = merge_lora(value, state[parts[1]], state[parts[2]], scaling)
        elif key == stem + LORA_BASE + "bias":
            out[stem + ".bias"] = value
        elif key not in parts:
            raise KeyError(f"unexpected checkpoint key {key!r} in LoRA layer {stem!r}")
    return out


def remap_checkpoint(state: dict, scaling: float) -> dict:
    """The PEFT-wrapped checkpoint -> this port's state dict (LoRA merged, prefixes renamed by ``KEY_PREFIXES``,
    ``UNUSED_KEYS`` dropped). A key no rule covers raises ``KeyError``."""
    out = {}
    for key, value in merge_lora_layers(state, scaling).items():
        if key in UNUSED_KEYS:
            continue
        prefix = next((p for p in KEY_PREFIXES if key.startswith(p)), None)
        if prefix is None or "lora_" in key:
            raise KeyError(f"unexpected checkpoint key {key!r}: no rule in KEY_PREFIXES")
        out[KEY_PREFIXES[prefix] + key[len(prefix):]] = value
    return out


def load_exact(module: nn.Module, state: dict) -> None:
    """``load_state_dict`` that names every missing or unexpected key (``KeyError``) instead of loading part."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"VideoReward checkpoint does not fit the model: missing {missing[:8]}"
                       f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                       f"{' ...' if len(unexpected) > 8 else ''}")
    module.load_state_dict(state, strict=True)


class VideoRewardModel(nn.Module):
    """Qwen2-VL (transformers 5 ``Qwen2VLModel``) + ``rm_head`` read at the reward tokens: VideoAlign's
    ``Qwen2VLRewardModelBT.forward`` with ``reward_token='special'``."""

    def __init__(self, config, output_dim: int = 1):
        from transformers import Qwen2VLModel

        super().__init__()
        self.backbone = Qwen2VLModel(config)
        self.rm_head = nn.Linear(config.text_config.hidden_size, output_dim, bias=False)

    def position_ids(self, input_ids, attention_mask, video_grid_thw, kind: str) -> torch.Tensor:
        """``sequential``: 0..L-1 for every row (and all three M-RoPE sections), as VideoAlign's forward gets
        from transformers 4.45; ``mrope``: Qwen2-VL's 3-D positions (``Qwen2VLModel.get_rope_index``)."""
        if kind == "sequential":
            return torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
        if kind == "mrope":
            token_type = (input_ids == self.backbone.config.video_token_id).int() * 2  # 2 = video (transformers 5)
            return self.backbone.get_rope_index(input_ids, token_type, video_grid_thw=video_grid_thw,
                                                attention_mask=attention_mask)[0]
        raise ValueError(f"position_ids must be 'sequential' or 'mrope', got {kind!r}")

    def forward(self, input_ids, attention_mask, pixel_values_videos, video_grid_thw, reward_token_ids,
                position_ids: str = "sequential") -> torch.Tensor:
        """(B, 3) raw rewards, one per reward token, in the order of ``reward_token_ids``."""
        positions = self.position_ids(input_ids, attention_mask, video_grid_thw, position_ids)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                               pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw).last_hidden_state
        at = torch.stack([input_ids == t for t in reward_token_ids], dim=1)  # (B, 3, L)
        if not (at.sum(-1) == 1).all():
            raise ValueError("each prompt must hold each reward token exactly once")
        rows = torch.arange(len(input_ids), device=input_ids.device)[:, None]
        logits = self.rm_head(hidden[rows, at.int().argmax(-1)])  # (B, 3, output_dim)
        # output_dim 1: one shared head; 3: head i read at token i (VideoAlign takes the diagonal)
        return logits[..., 0] if logits.shape[-1] == 1 else logits.diagonal(dim1=1, dim2=2)


def read_model_config(checkpoint: str, allow_download: bool = False) -> dict:
    """The checkpoint's ``model_config.json`` (VideoAlign ``train_reward.save_configs_to_json``: data_config,
    model_config, peft_lora_config, and inference_config with the heads' means/stds), checked to be the setting
    this port reproduces."""
    with open(hub_file(checkpoint, "model_config.json", "VideoReward", allow_download)) as f:
        official = json.load(f)
    data, model = official["data_config"], official["model_config"]
    if data.get("prompt_template_type") != "detailed_special" or model.get("reward_token") != "special":
        raise ValueError("only VideoAlign's 'detailed_special' template read at special reward tokens is ported")
    if data.get("num_frames") is not None or data.get("sample_type", "uniform") != "uniform":
        raise ValueError("only fps-based uniform frame sampling is ported (data_config.num_frames must be null)")
    return official


def reward_tokenizer(base_model: str, allow_download: bool = False):
    """The base tokenizer, right-padded, plus the three reward tokens (VideoAlign ``create_model_and_processor``)."""
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(AutoTokenizer, base_model, "VideoReward base tokenizer", allow_download,
                                padding_side="right")
    tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
    return tokenizer


def lora_rank(state: dict) -> int:
    """The rank r of the checkpoint's LoRA layers (rows of lora_A)."""
    ranks = {v.shape[0] for k, v in state.items() if k.endswith(LORA_A)}
    if len(ranks) != 1:
        raise ValueError(f"expected one LoRA rank in the checkpoint, found {sorted(ranks)}")
    return ranks.pop()


def build_model(config, state: dict, scaling: float, vocab_rows: int, device) -> "VideoRewardModel":
    """``VideoRewardModel`` on ``config`` with the checkpoint loaded exactly (LoRA merged with ``scaling``)."""
    rows = state["base_model.model.model.embed_tokens.weight"].shape[0]
    if rows != vocab_rows:
        raise ValueError(f"the tokenizer has {vocab_rows} tokens with the reward tokens, the checkpoint's embedding "
                         f"{rows} rows: wrong base model?")
    config.text_config.vocab_size = rows  # VideoAlign resizes the embeddings to the tokenizer
    rm_head = state.get("base_model.model.rm_head.weight")
    with torch.device(device):
        model = VideoRewardModel(config, output_dim=1 if rm_head is None else rm_head.shape[0])
    load_exact(model, remap_checkpoint(state, scaling))
    return model


class VideoReward:
    """VideoReward score of (B, 3, F, H, W) videos in [0, 1]: the sum of the chosen heads (default VQ + MQ +
    TA, normalised as ``use_norm``); differentiable in the pixels."""

    name = "videoreward"
    differentiable = True

    def __init__(self, checkpoint: str = "KwaiVGI/VideoReward", checkpoint_file: str = "checkpoint-11352/model.pth",
                 base_model: str = "Qwen/Qwen2-VL-2B-Instruct", input_fps: float = 16.0, fps: float | None = None,
                 min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int | None = None, quantize: bool = True,
                 position_ids: str = "sequential", use_norm: bool = True, norm: dict | None = None,
                 heads: Sequence[str] = HEADS, device: str = "auto", dtype: str = "float32",
                 allow_download: bool = False, batch_size: int = 1):
        from transformers import AutoConfig

        official = read_model_config(checkpoint, allow_download)
        tokenizer = reward_tokenizer(base_model, allow_download)
        with open(hub_file(base_model, "preprocessor_config.json", "VideoReward base processor", allow_download)) as f:
            processor_config = json.load(f)
        device_ = torch.device(resolve_device(device))
        state = torch.load(hub_file(checkpoint, checkpoint_file, "VideoReward", allow_download), map_location="cpu",
                           weights_only=True, mmap=True)
        scaling = lora_scaling(official["peft_lora_config"], lora_rank(state))
        config = from_pretrained(AutoConfig, base_model, "VideoReward base config", allow_download)
        model = build_model(config, state, scaling, len(tokenizer), device_)
        data = official["data_config"]
        self._configure(model, tokenizer, processor_config, input_fps=input_fps,
                        fps=fps if fps is not None else data["fps"], min_pixels=min_pixels,
                        max_pixels=max_pixels if max_pixels is not None else data["max_frame_pixels"],
                        quantize=quantize, position_ids=position_ids, use_norm=use_norm,
                        norm=norm if norm is not None else official.get("inference_config"), heads=heads,
                        device=device, dtype=dtype, batch_size=batch_size,
                        source={"checkpoint": f"{checkpoint}/{checkpoint_file}", "base_model": base_model,
                                "lora_scaling": scaling})

    @classmethod
    def from_model(cls, model: "VideoRewardModel", tokenizer, processor_config: dict, **settings) -> "VideoReward":
        """A VideoReward around a model built elsewhere (e.g. random weights for timing); ``tokenizer`` must
        hold the reward tokens (``reward_tokenizer``); ``settings`` are the constructor's conventions."""
        self = cls.__new__(cls)
        self._configure(model, tokenizer, processor_config, **settings)
        return self

    def _configure(self, model, tokenizer, processor_config: dict, *, fps: float, max_pixels: int,
                   input_fps: float = 16.0, min_pixels: int = VIDEO_MIN_PIXELS, quantize: bool = True,
                   position_ids: str = "sequential", use_norm: bool = True, norm: dict | None = None,
                   heads: Sequence[str] = HEADS, device: str = "auto", dtype: str = "float32", batch_size: int = 1,
                   source: dict | None = None):
        if position_ids not in ("sequential", "mrope"):
            raise ValueError(f"position_ids must be 'sequential' or 'mrope', got {position_ids!r}")
        if not heads or not set(heads) <= set(HEADS):
            raise ValueError(f"heads must be a non-empty subset of {HEADS}, got {list(heads)}")
        if use_norm and not norm:
            raise ValueError("use_norm=True, but the checkpoint's model_config.json has no inference_config: "
                             "pass norm={VQ_mean: ..., VQ_std: ..., ...} or use_norm=false")
        self.tokenizer = tokenizer
        self.reward_token_ids = tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS))
        if tokenizer.unk_token_id in self.reward_token_ids or None in self.reward_token_ids:
            raise ValueError(f"the tokenizer lacks the reward tokens {REWARD_TOKENS}: use reward_tokenizer()")
        self.mean, self.std = tuple(processor_config["image_mean"]), tuple(processor_config["image_std"])
        self.patch = tuple(processor_config.get(k, d) for k, d in
                           (("patch_size", 14), ("temporal_patch_size", 2), ("merge_size", 2)))
        self.device, self.dtype = torch.device(resolve_device(device)), getattr(torch, dtype)
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        self.input_fps, self.fps, self.quantize = float(input_fps), float(fps), bool(quantize)
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.position_ids, self.use_norm, self.batch_size = position_ids, bool(use_norm), int(batch_size)
        self.norm = {k: float(v) for k, v in norm.items()} if norm else None
        self.heads = tuple(heads)
        self.conventions = {
            **(source or {}), "position_ids": position_ids, "input_fps": self.input_fps, "fps": self.fps,
            "frame_sampling": "uniform (qwen-vl-utils smart_nframes)", "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "resize": "bicubic antialias" + (", uint8 grid, straight-through gradient" if quantize else ""),
            "use_norm": self.use_norm, "norm": self.norm if self.use_norm else None, "heads": "+".join(self.heads),
            "dtype": dtype}

    # ---- inputs -------------------------------------------------------------------------------------------
    def video_inputs(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One (3, F, H, W) video in [0, 1] -> (pixel_values_videos, grid_thw) as ``fetch_video`` + processor.
        (The processor's own smart_resize, within [3136, 1003520] pixels, leaves these 28-multiple frames as they
        are while max_pixels <= 1003520, so it is not repeated.)"""
        frames = video[:, sample_frame_indices(video.shape[1], self.input_fps, self.fps)].transpose(0, 1)
        h, w = smart_resize(frames.shape[-2], frames.shape[-1], self.patch[0] * self.patch[2], self.min_pixels,
                            self.max_pixels)
        x = normalise(resize_frames(frames, h, w, self.quantize), self.mean, self.std)
        return patchify(x, *self.patch)

    def prompt_ids(self, prompts: Sequence[str], grids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Chat-template ids with each video's ``<|video_pad|>`` repeated once per merged visual token (the
        processor's expansion), right-padded."""
        texts = []
        for prompt, grid in zip(prompts, grids):
            text = PROMPT_TEMPLATE.format(text_prompt=prompt)
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            n_tokens = int(grid.prod()) // self.patch[2] ** 2
            texts.append(text.replace(VIDEO_PAD, VIDEO_PAD * n_tokens, 1))
        batch = self.tokenizer(texts, padding=True, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    # ---- scores -------------------------------------------------------------------------------------------
    def raw_rewards(self, input_ids, attention_mask, pixel_values_videos, video_grid_thw) -> torch.Tensor:
        """(B, 3) raw VQ, MQ, TA from prepared inputs (float32)."""
        d = self.device
        return self.model(input_ids.to(d), attention_mask.to(d), pixel_values_videos.to(d, self.dtype),
                          video_grid_thw.to(d), self.reward_token_ids, self.position_ids).float()

    def normalised(self, raw: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per head with the checkpoint's inference_config when ``use_norm`` (inference._norm)."""
        if not self.use_norm:
            return raw
        mean = raw.new_tensor([self.norm[f"{h}_mean"] for h in HEADS])
        std = raw.new_tensor([self.norm[f"{h}_std"] for h in HEADS])
        return (raw - mean) / std

    def rewards(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """(B, 3) VQ, MQ, TA of (B, 3, F, H, W) videos in [0, 1] (normalised when ``use_norm``)."""
        if pixels.ndim != 5 or pixels.shape[1] != 3:
            raise ValueError(f"VideoReward scores videos (B, 3, F, H, W), got {tuple(pixels.shape)}")
        if len(prompts) != len(pixels):
            raise ValueError(f"{len(pixels)} videos but {len(prompts)} prompts")
        out = []
        for i in range(0, len(pixels), self.batch_size):
            videos = [self.video_inputs(v) for v in pixels[i:i + self.batch_size].to(self.device, torch.float32)]
            grids = torch.stack([g for _, g in videos])
            ids, mask = self.prompt_ids(prompts[i:i + self.batch_size], grids)
            out.append(self.normalised(self.raw_rewards(ids, mask, torch.cat([p for p, _ in videos]), grids)))
        return torch.cat(out)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """(B,) float32: the sum of ``heads`` (the paper's target VQ + MQ + TA), on the pixels' device."""
        pick = [HEADS.index(h) for h in self.heads]
        return self.rewards(pixels, list(prompts))[:, pick].sum(-1).to(pixels.device)

    def evaluate(self, pixels: torch.Tensor, prompts: Sequence[str], latents=None) -> dict:
        """Per-sample score and the three heads, e.g. {videoreward: [...], videoreward_vq: [...], ...}."""
        pick = [HEADS.index(h) for h in self.heads]
        with torch.no_grad():
            r = self.rewards(pixels, list(prompts))
        return {self.name: r[:, pick].sum(-1).tolist(), **{f"{self.name}_{h.lower()}": r[:, j].tolist()
                                                           for j, h in enumerate(HEADS)}}


__all__ = ["HEADS", "KEY_PREFIXES", "PROMPT_TEMPLATE", "REWARD_TOKENS", "VideoReward", "VideoRewardModel",
           "build_model", "lora_rank", "lora_scaling", "merge_lora", "read_model_config", "remap_checkpoint",
           "reward_tokenizer"]
