"""Seconds for one forward + backward of the VideoReward target through the pixels (rewards/videoreward.py).

On CUDA: Qwen2-VL-2B-Instruct built from its published config (values below, random weights, nothing downloaded)
plus the LoRA-merged layout's ``rm_head``, in bfloat16, scoring one 81-frame 480x832 video (Wan2.1's output,
16 fps; the reward samples it at 2 fps and resizes to at most 200704 pixels, the published data_config).
Prompt ids come from Qwen2-VL's tokenizer when it is in the local Hugging Face cache; otherwise from the tiny
byte-level tokenizer of the test fixture, whose prompt is about 4x longer than Qwen2's BPE gives (an upper bound;
the script prints the sequence length).

On CPU: the same code path on the tiny golden-fixture model (tests/data/golden/va), float32, one thread, with
the 2B model's frame settings; it says so. Sizes: ``--frames/--height/--width`` (default CPU: 9x64x64 and
33x120x208; CUDA: 81x480x832).

    python scripts/time_videoreward.py [--frames 81 --height 480 --width 832] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.qwen_vision import CLIP_MEAN, CLIP_STD  # noqa: E402
from rewards.videoreward import VideoReward, VideoRewardModel, reward_tokenizer  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden" / "va"
PROMPT = "a turkey in a cage"
# KwaiVGI/VideoReward model_config.json: data_config (fps, max_frame_pixels) and inference_config (means/stds)
FRAMES = dict(input_fps=16.0, fps=2.0, max_pixels=200704)
NORM = {"VQ_mean": 3.6757, "VQ_std": 2.2476, "MQ_mean": 1.1646, "MQ_std": 1.3811, "TA_mean": 2.8105, "TA_std": 2.5121}
TOKENIZER_ROWS = 151660  # Qwen2-VL's tokenizer (151657) + the three reward tokens


def qwen2_vl_2b_config():
    """Qwen/Qwen2-VL-2B-Instruct config.json values (text: Qwen2-1.5B; vision: 675M ViT, 32 blocks)."""
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=32768,
                         vocab_size=TOKENIZER_ROWS, tie_word_embeddings=True, use_sliding_window=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)


def build_2b(device: str) -> tuple[VideoReward, str]:
    from ntrk_bench.hub import MissingModel

    try:
        tokenizer, which = reward_tokenizer("Qwen/Qwen2-VL-2B-Instruct"), "Qwen2-VL tokenizer"
    except MissingModel:
        tokenizer, which = reward_tokenizer(str(FIXTURE / "base")), "fixture byte-level tokenizer (prompt ~4x longer)"
    config = qwen2_vl_2b_config()
    config.video_token_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")  # the tokenizer's own id
    with torch.device(device):
        model = VideoRewardModel(config)
    processor = {"image_mean": CLIP_MEAN, "image_std": CLIP_STD, "patch_size": 14, "temporal_patch_size": 2,
                 "merge_size": 2}
    reward = VideoReward.from_model(model, tokenizer, processor, **FRAMES, use_norm=True, norm=NORM, device=device,
                                    dtype="bfloat16", source={"model": "Qwen2-VL-2B config, random weights"})
    return reward, which


def build_tiny() -> VideoReward:
    return VideoReward(checkpoint=str(FIXTURE / "ckpt"), checkpoint_file="checkpoint-1/model.pth",
                       base_model=str(FIXTURE / "base"), use_norm=False, device="cpu", dtype="float32", **FRAMES)


def time_one(reward: VideoReward, frames: int, height: int, width: int, repeats: int) -> tuple[float, int]:
    """Best of ``repeats`` seconds for score + backward to the pixels, and the token count."""
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        pixels = torch.rand(1, 3, frames, height, width, device=reward.device, requires_grad=True)
        if reward.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        reward(pixels, [PROMPT]).sum().backward()
        if reward.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        assert pixels.grad is not None and torch.isfinite(pixels.grad).all()
    _, grid = reward.video_inputs(pixels[0].detach())
    ids, _ = reward.prompt_ids([PROMPT], grid[None])
    return best, ids.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if torch.cuda.is_available():
        reward, which = build_2b("cuda")
        sizes = [(args.frames or 81, args.height or 480, args.width or 832)]
        print(f"CUDA {torch.cuda.get_device_name()}: Qwen2-VL-2B config, random weights, bfloat16; {which}")
    else:
        torch.set_num_threads(1)
        reward = build_tiny()
        sizes = [(args.frames, args.height, args.width)] if args.frames else [(9, 64, 64), (33, 120, 208)]
        print("CPU, 1 thread: NOT the 2B model - the tiny golden-fixture Qwen2-VL (hidden 32, 2 layers), float32, "
              "byte-level tokenizer")
    for frames, height, width in sizes:
        seconds, tokens = time_one(reward, frames, height, width, args.repeats)
        _, grid = reward.video_inputs(torch.zeros(3, frames, height, width, device=reward.device))
        print(f"{frames} frames {height}x{width} @ {reward.input_fps:g} fps -> grid (t, h, w) {tuple(grid.tolist())}, "
              f"{tokens} tokens: forward+backward {seconds:.3f} s")
    if reward.device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB")


if __name__ == "__main__":
    main()
