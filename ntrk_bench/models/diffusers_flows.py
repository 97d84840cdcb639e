"""Z-Image and Wan2.1 behind the FlowModel protocol (diffusers ``ZImagePipeline`` / ``WanPipeline``;
ecosystem Sec. 3.3-3.4). Both are rectified flows x_t = (1 - t) x0 + t eps like FLUX; ``velocity`` returns
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


class _PipelineFlow:
    """What both wrappers share: the pipeline's modules, frozen, and CFG settings."""

    def __init__(self, pipe, guidance_scale: float, max_sequence_length: int, cfg: bool, device: str):
        self.pipe, self.device = pipe, torch.device(device)
        self.transformer, self.vae = pipe.transformer, pipe.vae
        self.guidance_scale, self.max_sequence_length = guidance_scale, max_sequence_length
        self.cfg, self.passes_per_eval = cfg, 2 if cfg else 1
        for module in (self.transformer, self.vae, pipe.text_encoder):
            module.requires_grad_(False).eval()


class ZImageFlow(_PipelineFlow):
    def __init__(self, pipe, height: int = 512, width: int = 512, guidance_scale: float = 0.0,
                 max_sequence_length: int = 512, device: str = "cpu"):
        super().__init__(pipe, guidance_scale, max_sequence_length, guidance_scale > 0, device)
        f = pipe.vae_scale_factor
        self.latent_shape = (self.transformer.config.in_channels, 2 * (height // (f * 2)), 2 * (width // (f * 2)))

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: str = "bfloat16", device: str = "auto", allow_download: bool = False,
                        **kwargs) -> "ZImageFlow":
        from diffusers import ZImagePipeline

        device = resolve_device(device)
        pipe = from_pretrained(ZImagePipeline, model_id, "Z-Image", allow_download, dtype=getattr(torch, dtype))
        return cls(pipe.to(device), device=device, **kwargs)

    def condition(self, prompts: Sequence[str]):
        with torch.no_grad():
            return self.pipe.encode_prompt(list(prompts), device=self.device, do_classifier_free_guidance=self.cfg,
                                           max_sequence_length=self.max_sequence_length)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        pos, neg = cond
        b, cfg = x.shape[0], self.cfg
        frames = list(x.to(self.transformer.dtype).unsqueeze(2).unbind(0)) * (2 if cfg else 1)
        step = (1 - t.to(torch.float32)).expand(b).repeat(2 if cfg else 1)
        out = torch.stack([o.float() for o in self.transformer(frames, step, list(pos) + (list(neg) if cfg else []),
                                                                return_dict=False)[0]]).squeeze(2)
        if cfg:
            out = out[:b] + self.guidance_scale * (out[:b] - out[b:])
        return -out  # the pipeline negates the transformer's output before the Euler step

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        z = x0.to(self.vae.dtype) / cfg.scaling_factor + cfg.shift_factor
        return (self.vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)


class WanFlow(_PipelineFlow):
    def __init__(self, pipe, height: int = 480, width: int = 832, frames: int = 81, guidance_scale: float = 5.0,
                 max_sequence_length: int = 512, negative_prompt: str | None = None, fps: int = 16,
                 device: str = "cpu"):
        super().__init__(pipe, guidance_scale, max_sequence_length, guidance_scale > 1, device)
        ft, fs = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        self.latent_shape = (self.transformer.config.in_channels, (frames - 1) // ft + 1, height // fs, width // fs)
        self.negative_prompt, self.fps = negative_prompt, fps

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: str = "bfloat16", device: str = "auto", allow_download: bool = False,
                        **kwargs) -> "WanFlow":
        from diffusers import AutoencoderKLWan, WanPipeline

        device = resolve_device(device)
        # the VAE in float32, as Wan's model cards recommend
        vae = from_pretrained(AutoencoderKLWan, model_id, "Wan2.1 VAE", allow_download, subfolder="vae",
                              torch_dtype=torch.float32)
        pipe = from_pretrained(WanPipeline, model_id, "Wan2.1", allow_download, vae=vae, dtype=getattr(torch, dtype))
        return cls(pipe.to(device), device=device, **kwargs)

    def condition(self, prompts: Sequence[str]):
        with torch.no_grad():
            neg = None if self.negative_prompt is None else [self.negative_prompt] * len(prompts)
            return self.pipe.encode_prompt(list(prompts), neg, do_classifier_free_guidance=self.cfg,
                                           max_sequence_length=self.max_sequence_length, device=self.device)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        pos, neg = cond
        b = x.shape[0]
        h, step = x.to(self.transformer.dtype), (1000 * t.to(torch.float32)).expand(b)
        out = self.transformer(hidden_states=h, timestep=step, encoder_hidden_states=pos, return_dict=False)[0]
        if self.cfg:
            unc = self.transformer(hidden_states=h, timestep=step, encoder_hidden_states=neg, return_dict=False)[0]
            out = unc + self.guidance_scale * (out - unc)
        return out.float()

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) frames in [0, 1]."""
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(x0.device)
        std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(x0.device)
        z = (x0.float() * std + mean).to(self.vae.dtype)
        return (self.vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)


def from_config(cfg):
    """A model of the ``zimage`` or ``wan`` family from its ``conf/model`` option."""
    common = dict(dtype=cfg.dtype, device=cfg.device, allow_download=cfg.allow_download, height=cfg.height,
                  width=cfg.width, guidance_scale=cfg.guidance_scale, max_sequence_length=cfg.max_sequence_length)
    if cfg.family == "zimage":
        return ZImageFlow.from_pretrained(cfg.model_id, **common)
    return WanFlow.from_pretrained(cfg.model_id, frames=cfg.frames, fps=cfg.fps, negative_prompt=cfg.negative_prompt,
                                   **common)
