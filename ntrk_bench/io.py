"""Files of a run: atomic writes, images (PNG), videos (MP4) and image grids."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def write_atomic(path: Path, write) -> None:
    """Write through a temporary file and rename, so a killed job never leaves a half-written file. The
    temporary name is the writer's own (process id), so concurrent identical runs writing the same file
    (the run's summary, its grid) never rename each other's half-written copies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")  # keeps the suffix (format by name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data) -> None:
    """JSON as the standard has it: a NaN or infinity anywhere is an error, never a bare ``NaN`` token."""
    text = json.dumps(data, indent=1, allow_nan=False)
    write_atomic(path, lambda p: p.write_text(text))


def to_uint8(x: torch.Tensor):
    """(C, H, W) in [0, 1] -> (H, W[, C]) uint8 array (grey stays 2-D)."""
    arr = (x.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def save_image(x: torch.Tensor, path: Path) -> None:
    """One image (C, H, W) in [0, 1] as PNG, at its own resolution, atomically."""
    from PIL import Image

    write_atomic(path, lambda p: Image.fromarray(to_uint8(x)).save(p, format="PNG"))


def load_image(path: Path) -> torch.Tensor:
    """A saved PNG back as (C, H, W) in [0, 1] (grey images keep one channel)."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(path))
    x = torch.from_numpy(arr.copy()).float() / 255
    return x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)


def save_video(frames: torch.Tensor, path: Path, fps: int) -> None:
    """A video (C, F, H, W) in [0, 1] as MP4 at ``fps`` (VBench reads the container's fps), atomically.
    Needs imageio + imageio-ffmpeg (the ``video`` extra)."""
    from diffusers.utils import export_to_video

    write_atomic(path, lambda tmp: export_to_video([to_uint8(frames[:, i]) for i in range(frames.shape[1])], str(tmp),
                                                   fps=fps))


def save_grid(pixels: torch.Tensor, path: Path, columns: int = 10, scale: int = 2) -> None:
    """Samples in a grid: grey or RGB images as they are (videos: the first frame); other tensors as
    their first channel, min-max scaled."""
    from PIL import Image

    x = pixels.detach().float()
    if x.dim() == 5:  # (B, C, F, H, W)
        x = x[:, :, 0]
    if x.shape[1] not in (1, 3):
        ch = x[:, :1]
        lo, hi = ch.amin(dim=(2, 3), keepdim=True), ch.amax(dim=(2, 3), keepdim=True)
        x = (ch - lo) / (hi - lo + 1e-8)
    n, c, h, w = x.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    grid = torch.ones(c, rows * h, cols * w)
    for i in range(n):
        grid[:, (i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = x[i]
    img = Image.fromarray(to_uint8(grid))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale != 1 else img
    write_atomic(path, lambda p: img.save(p, format="PNG"))


def load_video(path: Path) -> torch.Tensor:
    """A saved MP4 back as (C, F, H, W) in [0, 1] (needs imageio + imageio-ffmpeg, the ``video`` extra)."""
    import imageio.v3 as iio

    frames = torch.from_numpy(iio.imread(str(path), plugin="FFMPEG")).float() / 255  # (F, H, W, C)
    return frames.permute(3, 0, 1, 2)


def load_output(path: Path) -> torch.Tensor:
    """An item's saved output (PNG image or MP4 video) as a [0, 1] tensor."""
    return load_video(path) if Path(path).suffix == ".mp4" else load_image(path)
