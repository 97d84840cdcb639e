"""FLUX behind the FlowModel protocol (diffusers ``FluxPipeline``; anchors Sec. 2.1, ecosystem Sec. 3.2).

The sampler sees FLUX's *unpacked* latent (16, H/8, W/8) - 16 x 64 x 64 at 512 px - so that whitening
tiles and transforms act on channels and pixels rather than on 2 x 2-packed tokens. ``velocity`` packs
the state, calls the transformer exactly as ``FluxPipeline.__call__`` does (timestep in [0, 1], guidance
embedding only for guidance-distilled checkpoints such as FLUX.1-dev, cached text and image ids) and
unpacks the prediction: FLUX is a rectified flow with velocity eps - x0 for x_t = (1 - t) x0 + t eps.
``decode`` undoes the VAE scaling and shift and maps to [0, 1] like the pipeline's postprocessing,
differentiably.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..hub import MissingModel, from_pretrained, resolve_device

__all__ = ["FluxFlow", "MissingModel"]


@dataclass
class FluxCondition:
    embeds: torch.Tensor  # T5 sequence embeddings (B, L, D)
    pooled: torch.Tensor  # CLIP pooled embeddings (B, P)
    text_ids: torch.Tensor  # (L, 3)


class FluxFlow:
    def __init__(self, pipe, height: int = 512, width: int = 512, guidance_scale: float = 3.5,
                 max_sequence_length: int = 512, device: str | torch.device = "cpu"):
        self.pipe, self.device = pipe, torch.device(device)
        self.transformer, self.vae = pipe.transformer, pipe.vae
        self.dtype = self.transformer.dtype
        self.height, self.width = height, width
        f = pipe.vae_scale_factor
        h, w = 2 * (height // (f * 2)), 2 * (width // (f * 2))
        self.latent_shape = (self.transformer.config.in_channels // 4, h, w)
        self.img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.dtype)
        self.guidance_scale = guidance_scale
        self.max_sequence_length = max_sequence_length
        for module in (self.transformer, self.vae, pipe.text_encoder, pipe.text_encoder_2):
            module.requires_grad_(False).eval()

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: str = "bfloat16", device: str = "cpu", allow_download: bool = False,
                        transformer_id: str | None = None, **kwargs) -> "FluxFlow":
        """The pipeline of ``model_id``; ``transformer_id`` swaps in a fine-tuned transformer (MixGRPO)."""
        from diffusers import FluxPipeline, FluxTransformer2DModel

        device = resolve_device(device)
        extra = {}
        if transformer_id:
            extra["transformer"] = from_pretrained(FluxTransformer2DModel, transformer_id, "fine-tuned FLUX transformer",
                                                   allow_download, torch_dtype=getattr(torch, dtype))
        pipe = from_pretrained(FluxPipeline, model_id, "FLUX", allow_download, dtype=getattr(torch, dtype), **extra)
        pipe = pipe.to(device)
        return cls(pipe, device=device, **kwargs)

    def condition(self, prompts: Sequence[str]) -> FluxCondition:
        with torch.no_grad():
            embeds, pooled, text_ids = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=self.device,
                                                               max_sequence_length=self.max_sequence_length)
        return FluxCondition(embeds, pooled, text_ids)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.latent_shape
        return self.pipe._pack_latents(x, x.shape[0], c, h, w)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pipe._unpack_latents(tokens, self.height, self.width, self.pipe.vae_scale_factor)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: FluxCondition) -> torch.Tensor:
        b = x.shape[0]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance_scale, device=x.device, dtype=torch.float32)
        v = self.transformer(hidden_states=self.pack(x.to(self.dtype)), timestep=t.to(self.dtype).expand(b),
                             guidance=guidance, pooled_projections=cond.pooled, encoder_hidden_states=cond.embeds,
                             txt_ids=cond.text_ids, img_ids=self.img_ids, return_dict=False)[0]
        return self.unpack(v)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        z = x0.to(self.vae.dtype) / cfg.scaling_factor + cfg.shift_factor
        return (self.vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)
