"""Qwen2-VL / Qwen2.5-VL visual input built in torch, differentiable from [0, 1] pixels.

The official path reads uint8 frames (PIL or a video decoder), resizes them with ``smart_resize``
(qwen-vl-utils ``vision_process.py``), and the Qwen2-VL image processor rescales by 1/255, normalises with
the CLIP mean/std and cuts the frames into flattened ``temporal x patch x patch`` patches ordered by 2x2
merge blocks (transformers ``Qwen2VLImageProcessor._preprocess``). The processor needs torchvision in
transformers 5, so these functions do the same on tensors:

* ``smart_resize`` / ``sample_frame_indices``: qwen-vl-utils' size and frame-count rules;
* ``resize_frames``: bicubic with antialias on the 0..255 scale, optionally snapped to the uint8 grid with a
  straight-through gradient (then it equals torchvision's uint8 resize used by ``fetch_video``);
* ``normalise`` and ``patchify``: the processor's rescale/normalise and patch layout.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# qwen-vl-utils vision_process.py constants
IMAGE_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28
VIDEO_MIN_PIXELS = 128 * 28 * 28
MAX_RATIO = 200
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768

# OpenAI CLIP mean/std, the Qwen2-VL processor's defaults (preprocessor_config.json of Qwen/Qwen2-VL-2B-Instruct)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Output (height, width): multiples of ``factor``, area within [min_pixels, max_pixels], aspect kept.

    qwen-vl-utils ``smart_resize``: the maximum is tested first, so a ``max_pixels`` below ``min_pixels``
    does not stop small frames from being upscaled to ``min_pixels``."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio must be below {MAX_RATIO}, got {max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def sample_frame_indices(total_frames: int, video_fps: float, fps: float = 2.0, min_frames: int = FPS_MIN_FRAMES,
                         max_frames: int = FPS_MAX_FRAMES) -> list[int]:
    """Frames kept when a ``video_fps`` video is read at ``fps``: qwen-vl-utils ``smart_nframes`` (an even count,
    clamped to [min_frames, min(max_frames, total)]) and uniform sampling ``linspace(0, total - 1, n).round()``
    (``sample_type='uniform'`` in VideoAlign's reader)."""
    lo = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
    hi = math.floor(min(max_frames, total_frames) / FRAME_FACTOR) * FRAME_FACTOR
    n = round(min(max(total_frames / video_fps * fps, lo), hi) / FRAME_FACTOR) * FRAME_FACTOR
    n = min(n, total_frames)
    if not FRAME_FACTOR <= n <= total_frames:
        raise ValueError(f"{total_frames} frames at {video_fps} fps give {n} frames at {fps} fps, "
                         f"fewer than {FRAME_FACTOR}")
    return torch.linspace(0, total_frames - 1, n).round().long().tolist()


def resize_frames(frames: torch.Tensor, height: int, width: int, quantize: bool = True) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, height, width) on the 0..255 scale, bicubic with antialias.

    ``quantize`` rounds and clamps to the uint8 grid as torchvision's uint8 resize in ``fetch_video`` does;
    the gradient passes straight through the rounding (the values equal the official ones, the gradient is
    that of the unrounded resize)."""
    x = frames.float() * 255.0
    if (height, width) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    if quantize:
        x = x + (x.round().clamp(0, 255) - x).detach()
    return x


def normalise(frames_255: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """The processor's ``rescale`` then ``normalize``: (x / 255 - mean) / std per channel of (N, 3, H, W).

    transformers' ``rescale`` multiplies by 1/255 in float64 and casts to float32; on uint8 values that equals
    the float32 division x / 255, while a float32 multiply by 1/255 differs by up to one ulp."""
    m = torch.tensor(mean, dtype=frames_255.dtype, device=frames_255.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=frames_255.dtype, device=frames_255.device).view(1, -1, 1, 1)
    return (frames_255 / 255 - m) / s


def patchify(frames: torch.Tensor, patch_size: int = 14, temporal_patch_size: int = 2,
             merge_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, C, H, W) normalised frames -> (pixel_values (t*h*w, C*tp*p*p), grid_thw (3,)).

    Qwen2-VL processor layout: the last frame is repeated up to a multiple of ``temporal_patch_size`` (an
    image is one frame), patches are ordered by ``merge_size x merge_size`` blocks, and each row is
    flattened as (channel, time, row, column)."""
    t, c, h, w = frames.shape
    if h % (patch_size * merge_size) or w % (patch_size * merge_size):
        raise ValueError(f"frame size {h}x{w} is not a multiple of {patch_size * merge_size}")
    if t % temporal_patch_size:
        frames = torch.cat([frames, frames[-1:].expand(temporal_patch_size - t % temporal_patch_size, -1, -1, -1)])
        t = frames.shape[0]
    gt, gh, gw = t // temporal_patch_size, h // patch_size, w // patch_size
    x = frames.reshape(gt, temporal_patch_size, c, gh // merge_size, merge_size, patch_size,
                       gw // merge_size, merge_size, patch_size)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = x.reshape(gt * gh * gw, c * temporal_patch_size * patch_size * patch_size)
    return pixel_values, torch.tensor([gt, gh, gw], dtype=torch.long)


__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGE_FACTOR", "VIDEO_MIN_PIXELS", "normalise", "patchify", "resize_frames",
           "sample_frame_indices", "smart_resize"]
