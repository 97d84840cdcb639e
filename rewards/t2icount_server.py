"""T2I-Count counting reward, run by rewards/gradient_server.py inside the user's T2ICount environment.

T2ICount (Qian et al., CVPR 2025; cha15yq/T2ICount) has no licence, so nothing of it is copied here: this
scorer imports the user's own checkout (``checkout``) and calls its public entry points as its ``test.py`` does:
``models.reg_model.Count(config, sd_checkpoint, unet_config)``, ``load_state_dict(torch.load(checkpoint))``,
``set_eval()``, and ``model(images, class_prompts, prompt_attn_mask)[0]`` = the density map.

The reward is Psi-Sampler's quantity-aware target (KAIST-Visual-AI-Group/Psi-Sampler, ``src/reward_model.py``,
``T2ICountReward``): the image in [0, 1] resized to 384 x 384 and normalised to [-1, 1]; per item
``{prompt: class phrase, count: target}`` of the prompt's record, the phrase's prompt mask is 1 on the CLIP
token positions 1..L of 77 (T2ICount's ``datasets/dataset.py``); count = density.sum() / 60 (T2ICount
``test.py``); reward = -sum_items smooth_L1(count, target, beta=1).

Differentiability: T2ICount's ``Count.extract_feat`` encodes the image under ``torch.no_grad`` and detaches the
latents. As Psi-Sampler did, this scorer replaces that method on the loaded instance with one where the VAE
encoder keeps the graph (same computation otherwise: unscaled VAE posterior mode, CLIP text features without
gradient, UNet at t = 0); the UNet's parameters keep ``requires_grad`` because ldm's activation checkpointing
differentiates with respect to them in its backward.

NOT TESTED in this repository beyond the protocol (tests/test_remote_reward.py runs a stand-in scorer): it
needs the T2ICount checkout, its environment (``make env-t2icount``), SD-1.5 ``v1-5-pruned-emaonly.ckpt``, the
T2ICount checkpoint and ``openai/clip-vit-large-patch14`` in the Hugging Face cache. Python 3.8-compatible, and
imports nothing from this package.
"""
from __future__ import annotations

import os
import sys
import types

import torch
import torch.nn.functional as F

_MODELS = {}
TOKENS = 77  # CLIP context length of T2ICount's prompt mask


def _resolve(checkout: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(checkout, path)


def differentiable_extract_feat(self, img, prompt):
    """``Count.extract_feat`` with the image path kept differentiable (the text path stays frozen)."""
    latents = self.vae.encode(img).mode()
    with torch.no_grad():
        text = self.clip.encode(prompt)
    t = torch.zeros((img.shape[0],), device=img.device).long()
    return self.unet(latents, t, c_crossattn=[text]), text


def load(checkout: str, sd_checkpoint: str = "configs/v1-5-pruned-emaonly.ckpt",
         count_checkpoint: str = "best_model_paper.pth", config: str = "configs/v1-inference.yaml",
         device: str = "cuda", size: int = 384, strict: bool = True, **_):
    """Build T2ICount's ``Count`` once per configuration (relative paths are inside the checkout)."""
    if not checkout:
        raise ValueError("set scorer_args.checkout (conf/reward/t2icount.yaml) to your T2ICount checkout")
    key = (os.path.abspath(checkout), sd_checkpoint, count_checkpoint, config, device, size, strict)
    if key in _MODELS:
        return _MODELS[key]
    checkout = os.path.abspath(checkout)
    if not os.path.isfile(os.path.join(checkout, "models", "reg_model.py")):
        raise FileNotFoundError(f"{checkout} is not a T2ICount checkout (no models/reg_model.py)")
    for path in (sd_checkpoint, count_checkpoint, config):
        if not os.path.isfile(_resolve(checkout, path)):
            raise FileNotFoundError(f"T2ICount file missing: {_resolve(checkout, path)} (see the T2ICount README)")
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    from models.reg_model import Count  # the user's T2ICount checkout

    # T2ICount test.py: base_size 384, max_attn_size 384 // 8, down and up cross-attention maps
    unet_config = {"base_size": size, "max_attn_size": size // 8, "attn_selector": "down_cross+up_cross"}
    model = Count(_resolve(checkout, config), _resolve(checkout, sd_checkpoint), unet_config=unet_config)
    state = torch.load(_resolve(checkout, count_checkpoint), map_location="cpu")
    model.load_state_dict(state, strict=strict)
    model = model.to(device)
    model.set_eval()
    model.clip.device = device  # FrozenCLIPEmbedder moves its tokens to this attribute ("cuda" by default)
    model.extract_feat = types.MethodType(differentiable_extract_feat, model)
    _MODELS[key] = model
    return model


def prompt_mask(tokenizer, phrase: str) -> torch.Tensor:
    """(77,) mask over the CLIP positions of the class phrase: 1 on 1..L (T2ICount datasets/dataset.py)."""
    mask = torch.zeros(TOKENS)
    n = len(tokenizer(phrase, add_special_tokens=False)["input_ids"])
    mask[1:1 + n] = 1
    return mask


def counter_input(pixels: torch.Tensor, size: int, mode: str, antialias: bool) -> torch.Tensor:
    """[0, 1] pixels -> T2ICount's input: resized to size x size, normalised with mean = std = 0.5."""
    x = F.interpolate(pixels, size=(size, size), mode=mode, align_corners=False, antialias=antialias)
    return (x - 0.5) / 0.5


def counts(model, image: torch.Tensor, phrases, density_scale: float) -> torch.Tensor:
    """Predicted count of each phrase in one normalised image (1, 3, S, S): density.sum() / density_scale."""
    masks = torch.stack([prompt_mask(model.clip.tokenizer, p) for p in phrases]).to(image.device)
    density = model(image.expand(len(phrases), -1, -1, -1), list(phrases), masks[:, :, None, None])[0]
    return density.flatten(1).sum(1) / density_scale


def score(pixels, prompts, metadata, checkout: str, device: str = "cuda", size: int = 384,
          resize_mode: str = "bilinear", antialias: bool = True, density_scale: float = 60.0, beta: float = 1.0,
          **load_args):
    """Reward (B,) = -sum over the prompt's items of smooth_L1(count, target); ``metadata[i]["items"]`` =
    ``[{prompt, count}, ...]`` from the task's prompt records."""
    model = load(checkout, device=device, size=size, **load_args)
    x = counter_input(pixels.to(device, torch.float32), size, resize_mode, antialias)
    rewards = []
    for i, (prompt, meta) in enumerate(zip(prompts, metadata)):
        items = (meta or {}).get("items")
        if not items:
            raise ValueError(f"prompt {prompt!r} has no counting items in its record")
        predicted = counts(model, x[i:i + 1], [item["prompt"] for item in items], density_scale)
        target = torch.tensor([float(item["count"]) for item in items], device=predicted.device)
        loss = F.smooth_l1_loss(predicted, target, beta=beta, reduction="none").sum()
        print(f"t2icount: {prompt!r}: counts {[round(float(c), 2) for c in predicted]} "
              f"targets {target.tolist()} reward {-float(loss):.4f}", file=sys.stderr)
        rewards.append(-loss)
    return torch.stack(rewards).to(pixels.device)
