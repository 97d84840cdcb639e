"""Stand-in scorers for the gradient-server tests (tests/test_remote_reward.py), loaded by
rewards/gradient_server.py in a subprocess of the test interpreter."""
from __future__ import annotations

import os
import time

import torch

CHANNEL_WEIGHTS = (1.0, -0.5, 0.25)


def smooth(pixels, prompts, metadata, scale: float = 1.0):
    """A fixed smooth function of the pixels, the prompt and the metadata:
    scale * mean_{c,h,w}(w_c sin(3 x) + x^2) + 0.01 len(prompt) - (mean(x) - target)^2, target from the metadata
    (0 without)."""
    w = torch.tensor(CHANNEL_WEIGHTS, dtype=pixels.dtype).view(1, 3, *[1] * (pixels.dim() - 2))
    value = scale * (w * torch.sin(3 * pixels) + pixels ** 2).flatten(1).mean(1)
    targets = torch.tensor([float((m or {}).get("target", 0.0)) for m in metadata], dtype=pixels.dtype)
    lengths = torch.tensor([len(p) for p in prompts], dtype=pixels.dtype)
    return value + 0.01 * lengths - (pixels.flatten(1).mean(1) - targets) ** 2


def behave(pixels, prompts, metadata, seconds: float = 60.0, **smooth_args):
    """``smooth``, unless a prompt asks for a failure: "sleep" (longer than any test timeout), "crash" (the
    process exits with code 3), "wrong shape" (one score too few), "raise" (an exception), "print" (writes to
    stdout, which must not reach the protocol stream)."""
    if "sleep" in prompts:
        time.sleep(seconds)
    if "crash" in prompts:
        print("stand-in scorer: exiting on purpose")
        os._exit(3)
    if "raise" in prompts:
        raise ValueError("stand-in scorer failure")
    if "print" in prompts:
        print("a scorer that prints to stdout")
    scores = smooth(pixels, prompts, metadata, **smooth_args)
    return scores[:-1] if "wrong shape" in prompts else scores
