"""Z-Image and Wan2.1 behind the FlowModel protocol (diffusers ``ZImagePipeline`` / ``WanPipeline``;
diffusers' pipeline code). Both are rectified flows x_t = (1 - t) x0 + t eps like FLUX; ``velocity`` returns
eps - x0 and reproduces each pipeline's transformer call and classifier-free guidance exactly:

* Z-Image: latents (16, H/8, W/8) as a list of (C, 1, H, W) frames, timestep 1 - t, the output *negated*;
  CFG ``pos + g (pos - neg)`` whenever g > 0 (two transformer passes per evaluation).
* Wan2.1: latents (16, F', H/8, W/8), timestep 1000 t, CFG ``neg + g (pos - neg)`` when g > 1; decoding
  undoes the per-channel latent normalisation (``latents_mean`` / ``latents_std``).

NFE counts evaluations of the guided velocity, as the paper's tables do; ``passes_per_eval`` says how many
transformer calls one costs.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..hub import from_pretrained, resolve_device
from .flux import Encoders, decode_latents, place


class _PipelineFlow:
    """What both wrappers share: the pipeline's modules, frozen, CFG settings, and the placement: the model
    owns the device (the transformer's) and the sampler state's dtype (float32); the transformer runs in its
    weights' dtype."""

    dtype = torch.float32

    def __init__(self, pipe, guidance_scale: float, max_sequence_length: int, cfg: bool, device: str | None,
                 offload_encoders: bool = False):
        self.pipe, self.transformer, self.vae = pipe, pipe.transformer, pipe.vae
        self.device = torch.device(device) if device is not None else self.transformer.device
        self.weight_dtype = self.transformer.dtype
        self.guidance_scale, self.max_sequence_length = guidance_scale, max_sequence_length
        self.cfg, self.passes_per_eval = cfg, 2 if cfg else 1
        self.encoders = Encoders([pipe.text_encoder], self.device, offload_encoders)
        self._encoded: dict = {}  # prompt -> its encoding: each distinct prompt is encoded once
        for module in (self.transformer, self.vae, pipe.text_encoder):
            module.requires_grad_(False).eval()

    def encoded(self, prompts: Sequence[str], encode) -> list:
        """Per prompt, ``encode([prompt])``'s result moved to the device (cached)."""
        for p in dict.fromkeys(prompts):
            if p not in self._encoded:
                with torch.no_grad(), self.encoders.on_device():
                    self._encoded[p] = _to(encode([p]), self.device)
        return [self._encoded[p] for p in prompts]


def _to(obj, device):
    """Tensors in (nested lists / tuples of) ``obj`` moved to ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(o, device) for o in obj)
    return obj


class ZImageFlow(_PipelineFlow):
    def __init__(self, pipe, height: int = 512, width: int = 512, guidance_scale: float = 0.0,
                 max_sequence_length: int = 512, device: str | None = None, offload_encoders: bool = False):
        super().__init__(pipe, guidance_scale, max_sequence_length, guidance_scale > 0, device, offload_encoders)
        f = pipe.vae_scale_factor
        self.latent_shape = (self.transformer.config.in_channels, 2 * (height // (f * 2)), 2 * (width // (f * 2)))

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: str = "bfloat16", device: str = "auto", allow_download: bool = False,
                        gradient_checkpointing: bool = False, offload_encoders: bool = False, **kwargs) -> "ZImageFlow":
        from diffusers import ZImagePipeline

        device = resolve_device(device)
        pipe = from_pretrained(ZImagePipeline, model_id, "Z-Image", allow_download, dtype=getattr(torch, dtype))
        return cls(place(pipe, device, gradient_checkpointing, offload_encoders), device=device,
                   offload_encoders=offload_encoders, **kwargs)

    def condition(self, prompts: Sequence[str]):
        """(positive, negative) lists of per-prompt embeddings, as ``ZImagePipeline.encode_prompt`` returns."""
        parts = self.encoded(prompts, lambda p: self.pipe.encode_prompt(
            p, device=self.encoders.device, do_classifier_free_guidance=self.cfg,
            max_sequence_length=self.max_sequence_length))
        return [e for pos, _ in parts for e in pos], [e for _, neg in parts for e in (neg or [])]

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        pos, neg = cond
        b, cfg = x.shape[0], self.cfg
        frames = list(x.to(self.device, self.weight_dtype).unsqueeze(2).unbind(0)) * (2 if cfg else 1)
        step = (1 - t.to(self.device, torch.float32)).expand(b).repeat(2 if cfg else 1)
        out = torch.stack([o.float() for o in self.transformer(frames, step, list(pos) + (list(neg) if cfg else []),
                                                                return_dict=False)[0]]).squeeze(2)
        if cfg:
            out = out[:b] + self.guidance_scale * (out[:b] - out[b:])
        return (-out).to(x.dtype)  # the pipeline negates the transformer's output before the Euler step

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, x0)


class WanFlow(_PipelineFlow):
    def __init__(self, pipe, height: int = 480, width: int = 832, frames: int = 81, guidance_scale: float = 5.0,
                 max_sequence_length: int = 512, negative_prompt: str | None = None, fps: int = 16,
                 device: str | None = None, offload_encoders: bool = False):
        super().__init__(pipe, guidance_scale, max_sequence_length, guidance_scale > 1, device, offload_encoders)
        ft, fs = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        self.latent_shape = (self.transformer.config.in_channels, (frames - 1) // ft + 1, height // fs, width // fs)
        self.negative_prompt, self.fps = negative_prompt, fps

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: str = "bfloat16", device: str = "auto", allow_download: bool = False,
                        gradient_checkpointing: bool = False, offload_encoders: bool = False, **kwargs) -> "WanFlow":
        from diffusers import AutoencoderKLWan, WanPipeline

        device = resolve_device(device)
        # the VAE in float32, as Wan's model cards recommend
        vae = from_pretrained(AutoencoderKLWan, model_id, "Wan2.1 VAE", allow_download, subfolder="vae",
                              torch_dtype=torch.float32)
        pipe = from_pretrained(WanPipeline, model_id, "Wan2.1", allow_download, vae=vae, dtype=getattr(torch, dtype))
        return cls(place(pipe, device, gradient_checkpointing, offload_encoders), device=device,
                   offload_encoders=offload_encoders, **kwargs)

    def condition(self, prompts: Sequence[str]):
        """(positive, negative) embeddings (B, L, D), as ``WanPipeline.encode_prompt`` returns."""
        neg = None if self.negative_prompt is None else [self.negative_prompt]
        parts = self.encoded(prompts, lambda p: self.pipe.encode_prompt(
            p, neg, do_classifier_free_guidance=self.cfg, max_sequence_length=self.max_sequence_length,
            device=self.encoders.device))
        pos = torch.cat([a for a, _ in parts])
        return pos, (torch.cat([b for _, b in parts]) if self.cfg else None)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        pos, neg = cond
        b = x.shape[0]
        h, step = x.to(self.device, self.weight_dtype), (1000 * t.to(self.device, torch.float32)).expand(b)
        out = self.transformer(hidden_states=h, timestep=step, encoder_hidden_states=pos, return_dict=False)[0]
        if self.cfg:
            unc = self.transformer(hidden_states=h, timestep=step, encoder_hidden_states=neg, return_dict=False)[0]
            out = unc + self.guidance_scale * (out - unc)
        return out.to(x.dtype)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) frames in [0, 1]."""
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean, device=x0.device, dtype=x0.dtype).view(1, cfg.z_dim, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=x0.device, dtype=x0.dtype).view(1, cfg.z_dim, 1, 1, 1)
        z = (x0 * std + mean).to(self.vae.device, self.vae.dtype)
        return (self.vae.decode(z, return_dict=False)[0].to(x0.dtype) / 2 + 0.5).clamp(0, 1)
