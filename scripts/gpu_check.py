"""Does every method run where it is meant to, and what does it cost? (``make gpu-check``)

    python scripts/gpu_check.py [--size real|tiny] [--models flux,zimage,wan] [--rows ...] [--big-row das_500]

Without downloads: builds FLUX.1-schnell, Z-Image and Wan2.1-1.3B pipelines whose transformers have their
published configurations and random weights (``--size real``, the default on CUDA; tiny VAEs and text
encoders as wide as the transformer reads) or tiny ones (``--size tiny``, the default on a CPU), in bf16 on
CUDA. For each model it runs every method's 25-NFE paper row and one 500-NFE row through the shared
Problem (memory bounded by ``--batch-size``, gradient checkpointing on for ``--size real``), with every
input of the model, the reward and W checked against the model's device and dtype, and prints: seconds per
NFE (forward; forward + backward through the decoder and a pixel reward), peak GPU memory, W's ms per call
and its share of an NTRK step, the measured NFE of each row, and whether every tensor stayed on the device.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ntrk_bench.config import CONF_DIR  # noqa: E402
from ntrk_bench.generate import method_of  # noqa: E402
from ntrk_bench.method import Problem  # noqa: E402
from ntrk_bench.models import counted, tiny  # noqa: E402
from ntrk_bench.models.diffusers_flows import WanFlow, ZImageFlow  # noqa: E402
from ntrk_bench.models.flux import FluxFlow, place  # noqa: E402
from ntrk_bench.placement import PlacementGuard  # noqa: E402
from ntrk_bench.sde import FlowSDE  # noqa: E402

ROWS_25 = ["base_25", "dps_25", "freedom_25", "meanshift_25", "ntrk_25"]


class PixelReward:
    """A smooth differentiable reward of the decoded pixels (mean brightness of the centre): the check is about
    placement, memory and time, not about what is rewarded."""

    differentiable, name = True, "pixel_mean"

    def __call__(self, pixels, prompts):
        h, w = pixels.shape[-2:]
        return pixels[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4].float().flatten(1).mean(1)


def cast(pipe, dtype: torch.dtype):
    """The pipeline in ``dtype`` (built in float32: nothing to do there)."""
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def build(family: str, size: str, device: str, dtype: torch.dtype, frames: int):
    """(FlowModel, whitening option) of one family at one size."""
    real = size == "real"
    if family == "flux":
        pipe = cast(tiny.flux_pipeline(tiny.FLUX_SCHNELL if real else tiny.TINY_FLUX), dtype)
        side = 512 if real else 64
        flow = FluxFlow(place(pipe, device, gradient_checkpointing=real), height=side // 4 if real else side,
                        width=side // 4 if real else side, max_sequence_length=32, device=device)
        return flow, "full" if real else "twoos"
    if family == "zimage":
        pipe = cast(tiny.zimage_pipeline(tiny.ZIMAGE if real else tiny.TINY_ZIMAGE), dtype)
        side = 128 if real else 64
        return ZImageFlow(place(pipe, device, gradient_checkpointing=real), height=side, width=side,
                          max_sequence_length=32, device=device), "full" if real else "twoos"
    pipe = cast(tiny.wan_pipeline(tiny.WAN21_1_3B if real else tiny.TINY_WAN), dtype)
    pipe.vae.to(torch.float32)  # Wan's VAE in float32, as its model cards recommend
    h, w = (480, 832) if real else (64, 64)  # the tiny Wan VAE has the real factors (4 in time, 8 in space)
    return WanFlow(place(pipe, device, gradient_checkpointing=real), height=h, width=w, frames=frames,
                   guidance_scale=1.0, max_sequence_length=32, device=device), "full_wan" if real else "twoos"


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps: int = 3) -> float:
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / reps


def compose(row: str, whitening: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=[f"row={row}", f"whitening={whitening}", "run_name=gpu_check"])


def check_model(family: str, args, device: str, dtype: torch.dtype) -> dict:
    flow, whitening = build(family, args.size, device, dtype, args.frames)
    model = counted(flow)
    guard = PlacementGuard(model.device, model.dtype, strict=False)
    guarded = counted(guard("model", flow))
    sde, reward = FlowSDE(), PixelReward()
    out = {"model": family, "latent": "x".join(map(str, flow.latent_shape))}
    x = torch.randn(1, *flow.latent_shape, generator=torch.Generator().manual_seed(0)).to(flow.device, flow.dtype)
    cond = flow.condition(["a photo of a cat"])
    t = torch.full((1,), 0.5, device=flow.device, dtype=flow.dtype)

    def forward():
        with torch.no_grad():
            flow.velocity(x, t, cond)

    def forward_backward():
        xg = x.detach().requires_grad_(True)
        v = flow.velocity(xg, t, cond)
        torch.autograd.grad(reward(flow.decode(xg - 0.5 * v), [""]).sum(), xg)

    out["s/NFE fwd"] = timed(forward, device)
    out["s/NFE fwd+bwd"] = timed(forward_backward, device)
    problem = Problem(sde, guarded, "a photo of a cat", reward, 25, torch.Generator().manual_seed(0))
    W = problem.whitening(compose("ntrk_25", whitening).whitening)
    g = torch.randn(1, *flow.latent_shape, generator=torch.Generator().manual_seed(1)).to(flow.device, flow.dtype)
    w_s = timed(lambda: W(g), device)
    out["W ms"] = 1e3 * w_s
    out["W share of NTRK step"] = w_s / (w_s + out["s/NFE fwd+bwd"])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for row in [*args.rows, args.big_row]:
        cfg = compose(row, whitening)
        method = method_of(cfg)
        guarded.counter.reset()
        p = Problem(sde, guarded, "a photo of a cat", guard("reward", reward), cfg.steps,
                    torch.Generator().manual_seed(0), batch_size=args.batch_size, guard=guard)
        start = time.perf_counter()
        method(p)
        sync(device)
        out[f"{row} s"] = time.perf_counter() - start
        out[f"{row} NFE"] = f"{guarded.counter.nfe}/{cfg.nfe}"
    if device.startswith("cuda"):
        out["peak GiB"] = torch.cuda.max_memory_allocated() / 2 ** 30
    out["on device"] = "yes" if not guard.violations else f"NO: {guard.violations[0]} (+{len(guard.violations) - 1})"
    out["inputs checked"] = guard.checked
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    ap.add_argument("--size", choices=["real", "tiny"], default="real" if cuda else "tiny")
    ap.add_argument("--models", default="flux,zimage,wan")
    ap.add_argument("--rows", nargs="*", default=ROWS_25)
    ap.add_argument("--big-row", default="das_500" if cuda else "svdd_500",
                    help="the 500-NFE row (CUDA: DAS, gradients for 20 particles; CPU: SVDD, forward passes only)")
    ap.add_argument("--batch-size", type=int, default=4, help="most samples per denoiser call")
    ap.add_argument("--frames", type=int, default=81, help="Wan frames (real size)")
    args = ap.parse_args(argv)
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda:
        args.frames = 9
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    print(f"gpu_check: {args.size} transformers on {device} ({dtype}), batch_size {args.batch_size}"
          + ("" if cuda else " - no CUDA here: tiny models, placement and NFE only"))
    rows, ok = [], True
    for family in args.models.split(","):
        res = check_model(family, args, device, dtype)
        ok &= res["on device"] == "yes" and all(v.split("/")[0] == v.split("/")[1] for k, v in res.items()
                                                 if k.endswith(" NFE"))
        rows.append(res)
        print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()),
              flush=True)
        if cuda:
            torch.cuda.empty_cache()
    try:
        import pandas as pd

        print(pd.DataFrame(rows).set_index("model").T.to_string(float_format=lambda v: f"{v:.4g}"))
    except ImportError:
        pass
    print("gpu_check: " + ("every row measured its NFE and every tensor stayed on the device" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
