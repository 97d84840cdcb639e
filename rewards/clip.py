"""CLIP-based rewards on transformers, differentiable from pixels (HPSv2 is rewards/hpsv2.py).

Both take pixels in [0, 1], resize them to the vision tower's resolution (bilinear, as Psi-Sampler's
differentiable path; the official processors resize bicubic from PIL, which shifts scores slightly) and
normalise with the processor's mean and std.

* ``LaionAesthetic``: LAION aesthetic predictor v2 (improved-aesthetic-predictor,
  ``sac+logos+ava1-l14-linearMSE``): an MLP without activations on the L2-normalised CLIP ViT-L/14 image
  embedding.
* ``PickScore``: PickScore_v1 (a CLIP ViT-H/14), scored as the raw cosine of image and text embeddings -
  the paper's magnitudes (0.21-0.26) are cosines, not the logit-scaled score of PickScore's README.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ntrk_bench.hub import MissingModel, from_pretrained, hub_file, resolve_device


def clip_input(pixels: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the normalised (B, 3, size, size) input of a CLIP vision tower."""
    x = F.interpolate(pixels.float(), size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def features(out) -> torch.Tensor:
    """Projected CLIP features, L2-normalised (transformers 5 returns a model output, 4.x a tensor)."""
    return F.normalize(getattr(out, "pooler_output", out).float(), dim=-1)


class _CLIPReward:
    differentiable = True

    def __init__(self, clip_id: str, processor_id: str | None, what: str, device: str = "auto",
                 dtype: str = "float32", allow_download: bool = False):
        from transformers import AutoProcessor, CLIPModel

        self.device = torch.device(resolve_device(device))
        self.model = from_pretrained(CLIPModel, clip_id, what, allow_download, dtype=getattr(torch, dtype))
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        self.processor = from_pretrained(AutoProcessor, processor_id or clip_id, f"{what} processor", allow_download)
        ip = self.processor.image_processor
        crop = getattr(ip, "crop_size", None) or {}
        self.size = crop.get("height") or self.model.config.vision_config.image_size
        self.mean, self.std = ip.image_mean, ip.image_std

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = clip_input(pixels.to(self.device), self.size, self.mean, self.std).to(self.model.dtype)
        return features(self.model.get_image_features(pixel_values=x))

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        tok = self.processor.tokenizer(list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            return features(self.model.get_text_features(**tok.to(self.device)))


class LaionAesthetic(_CLIPReward):
    name = "laion_aesthetic"

    def __init__(self, clip_id: str = "openai/clip-vit-large-patch14", head: str = "trl-lib/ddpo-aesthetic-predictor",
                 head_file: str = "aesthetic-model.pth", **kw):
        super().__init__(clip_id, None, "CLIP ViT-L/14 (aesthetic)", **kw)
        dim = self.model.config.projection_dim
        # improved-aesthetic-predictor's MLP: Linear/Dropout layers, no activations (the ReLUs are commented out)
        self.head = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                  nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
        state = torch.load(hub_file(head, head_file, "LAION aesthetic head", kw.get("allow_download", False)),
                           map_location="cpu", weights_only=True)
        self.head.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
        self.head = self.head.to(self.device).eval().requires_grad_(False)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return self.head(self.image_features(pixels)).squeeze(-1).to(pixels.device)


class PickScore(_CLIPReward):
    name = "pickscore"

    def __init__(self, clip_id: str = "yuvalkirstain/PickScore_v1",
                 processor_id: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", **kw):
        super().__init__(clip_id, processor_id, "PickScore", **kw)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return (self.image_features(pixels) * self.text_features(prompts)).sum(-1).to(pixels.device)


__all__ = ["LaionAesthetic", "MissingModel", "PickScore", "clip_input"]
