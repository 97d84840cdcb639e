"""FLUX behind the FlowModel protocol (diffusers ``FluxPipeline``, as Psi-Sampler runs it).

The sampler sees FLUX's *unpacked* latent (16, H/8, W/8) - 16 x 64 x 64 at 512 px - so that whitening
tiles and transforms act on channels and pixels rather than on 2 x 2-packed tokens. ``velocity`` packs
the state, calls the transformer exactly as ``FluxPipeline.__call__`` does (timestep in [0, 1], guidance
embedding only for guidance-distilled checkpoints such as FLUX.1-dev, cached text and image ids) and
unpacks the prediction: FLUX is a rectified flow with velocity eps - x0 for x_t = (1 - t) x0 + t eps.
``decode`` undoes the VAE scaling and shift and maps to [0, 1] like the pipeline's postprocessing,
differentiably.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

from ..hub import MissingModel, from_pretrained, resolve_device

__all__ = ["Encoders", "FluxFlow", "MissingModel", "decode_latents", "place"]


@dataclass
class FluxCondition:
    embeds: torch.Tensor  # T5 sequence embeddings (B, L, D)
    pooled: torch.Tensor  # CLIP pooled embeddings (B, P)
    text_ids: torch.Tensor  # (L, 3)


class FluxFlow:
    """FLUX as a FlowModel. It owns the device (the transformer's) and the sampler state's dtype (float32:
    the kernel and whitening maths), while the transformer and VAE run in their weights' dtype (bf16)."""

    dtype = torch.float32

    def __init__(self, pipe, height: int = 512, width: int = 512, guidance_scale: float = 3.5,
                 max_sequence_length: int = 512, device: str | torch.device | None = None,
                 offload_encoders: bool = False):
        self.pipe, self.transformer, self.vae = pipe, pipe.transformer, pipe.vae
        self.device = torch.device(device) if device is not None else self.transformer.device
        self.weight_dtype = self.transformer.dtype
        self.height, self.width = height, width
        f = pipe.vae_scale_factor
        h, w = 2 * (height // (f * 2)), 2 * (width // (f * 2))
        self.latent_shape = (self.transformer.config.in_channels // 4, h, w)
        self.img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.weight_dtype)
        self.guidance_scale = guidance_scale
        self.max_sequence_length = max_sequence_length
        self.encoders = Encoders([pipe.text_encoder, pipe.text_encoder_2], self.device, offload_encoders)
        self._encoded: dict[str, tuple] = {}  # prompt -> (T5 embeds, pooled, text ids): each prompt encoded once
        for module in (self.transformer, self.vae, pipe.text_encoder, pipe.text_encoder_2):
            module.requires_grad_(False).eval()

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: str = "bfloat16", device: str = "auto", allow_download: bool = False,
                        transformer_id: str | None = None, gradient_checkpointing: bool = False,
                        offload_encoders: bool = False, **kwargs) -> "FluxFlow":
        """The pipeline of ``model_id``; ``transformer_id`` swaps in a fine-tuned transformer (MixGRPO)."""
        from diffusers import FluxPipeline, FluxTransformer2DModel

        device = resolve_device(device)
        extra = {}
        if transformer_id:
            extra["transformer"] = from_pretrained(FluxTransformer2DModel, transformer_id, "fine-tuned FLUX transformer",
                                                   allow_download, torch_dtype=getattr(torch, dtype))
        pipe = from_pretrained(FluxPipeline, model_id, "FLUX", allow_download, dtype=getattr(torch, dtype), **extra)
        return cls(place(pipe, device, gradient_checkpointing, offload_encoders), device=device,
                   offload_encoders=offload_encoders, **kwargs)

    def condition(self, prompts: Sequence[str]) -> FluxCondition:
        """The prompts' T5 and CLIP embeddings on the device; each distinct prompt is encoded once."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._encoded]
        if new:
            with torch.no_grad(), self.encoders.on_device():
                embeds, pooled, text_ids = self.pipe.encode_prompt(
                    prompt=new, prompt_2=None, device=self.encoders.device, max_sequence_length=self.max_sequence_length)
            for i, p in enumerate(new):
                self._encoded[p] = (embeds[i:i + 1].to(self.device), pooled[i:i + 1].to(self.device),
                                    text_ids.to(self.device))
        parts = [self._encoded[p] for p in prompts]
        return FluxCondition(torch.cat([e for e, _, _ in parts]), torch.cat([q for _, q, _ in parts]), parts[0][2])

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.latent_shape
        return self.pipe._pack_latents(x, x.shape[0], c, h, w)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pipe._unpack_latents(tokens, self.height, self.width, self.pipe.vae_scale_factor)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: FluxCondition) -> torch.Tensor:
        b = x.shape[0]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance_scale, device=self.device, dtype=torch.float32)
        h = self.pack(x.to(self.device, self.weight_dtype))
        v = self.transformer(hidden_states=h, timestep=t.to(self.device, self.weight_dtype).expand(b),
                             guidance=guidance, pooled_projections=cond.pooled, encoder_hidden_states=cond.embeds,
                             txt_ids=cond.text_ids, img_ids=self.img_ids, return_dict=False)[0]
        return self.unpack(v).to(x.dtype)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, x0)


def decode_latents(vae, x0: torch.Tensor) -> torch.Tensor:
    """Undo the VAE's scaling and shift, decode, map [-1, 1] to [0, 1] as the pipelines' postprocessing,
    differentiably; pixels come back in the state's dtype."""
    cfg = vae.config
    z = x0.to(vae.device, vae.dtype) / cfg.scaling_factor + cfg.shift_factor
    return (vae.decode(z, return_dict=False)[0].to(x0.dtype) / 2 + 0.5).clamp(0, 1)


class Encoders:
    """A pipeline's text encoders: on the model's device, or kept on the CPU and moved to the device only
    while encoding (``offload_encoders``): prompts are encoded once per item, the transformer runs every step."""

    def __init__(self, modules, device: torch.device, offload: bool):
        self.modules = [m for m in modules if m is not None]
        self.device, self.offload = device, offload

    @contextmanager
    def on_device(self):
        if not self.offload:
            yield
            return
        for m in self.modules:
            m.to(self.device)
        try:
            yield
        finally:
            for m in self.modules:
                m.to("cpu")


def place(pipe, device: str, gradient_checkpointing: bool = False, offload_encoders: bool = False):
    """Move a pipeline to ``device`` (text encoders to the CPU when offloaded) and switch on the transformer's
    gradient checkpointing (activations recomputed in backward: memory for gradient methods)."""
    pipe = pipe.to(device)
    if offload_encoders:
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).to("cpu")
    if gradient_checkpointing:
        pipe.transformer.enable_gradient_checkpointing()
    return pipe
