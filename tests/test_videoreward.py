"""VideoReward port (rewards/videoreward.py) against the official VideoAlign outputs on a tiny random model.

Fixture: tests/data/golden/va/ (README there), a small lossless copy of the shared golden ``va/`` fixture.
"""
from pathlib import Path

import pytest
import torch

from rewards.qwen_vision import VIDEO_MIN_PIXELS, sample_frame_indices, smart_resize
from rewards.videoreward import HEADS, VideoReward

VA = Path(__file__).parent / "data" / "golden" / "va"
# The fixture's frames are already on the resized grid (252 x 420 = 105840 px); a max of that size keeps them there.
# (Its model_config.json says 9408, which the 60 x 100 source frames never met: smart_resize upscaled them to the
# video minimum, 100352.)
FIXTURE_MAX_PIXELS = 252 * 420


def build(**kw) -> VideoReward:
    args = dict(checkpoint=str(VA / "ckpt"), checkpoint_file="checkpoint-1/model.pth", base_model=str(VA / "base"),
                input_fps=2.0, max_pixels=FIXTURE_MAX_PIXELS, use_norm=False, device="cpu", dtype="float32")
    return VideoReward(**{**args, **kw})


@pytest.fixture(scope="module")
def ref():
    r = torch.load(VA / "ref_small.pt", weights_only=True)
    lut, codes = r["pixel_values_videos_lut"], r["pixel_values_videos_codes"]
    per = codes.shape[1] // 3  # columns of one channel: 2 x 14 x 14
    r["pixel_values_videos"] = torch.cat([lut[c][codes[:, c * per:(c + 1) * per].long()] for c in range(3)], 1)
    r["input_ids"] = r["input_ids"].long()
    r["video"] = (r["frames_uint8"].float() / 255).transpose(0, 1)[None]  # (1, 3, F, H, W) in [0, 1]
    return r


@pytest.fixture(scope="module")
def port():
    return build()


def official_inputs(ref):
    return ref["input_ids"], torch.ones_like(ref["input_ids"]), ref["pixel_values_videos"], ref["video_grid_thw"]


def test_golden_rewards_from_official_inputs(port, ref):
    raw = port.raw_rewards(*official_inputs(ref))
    assert (raw - ref["rewards"]).abs().max() < 1e-4
    assert port.conventions["lora_scaling"] == ref["lora_scaling"] and port.reward_token_ids == ref["special_ids"]


def test_golden_rewards_end_to_end_from_frames(port, ref):
    """Prompt ids, frame preprocessing and model together: the 4 decoded frames as a 4-frame video."""
    assert (port.rewards(ref["video"], [ref["prompt"]]) - ref["rewards"]).abs().max() < 1e-4


def test_prompt_ids_equal_official(port, ref):
    ids, mask = port.prompt_ids([ref["prompt"]], ref["video_grid_thw"])
    assert torch.equal(ids, ref["input_ids"]) and bool(mask.all())


def test_mrope_positions_fail_the_golden_check(ref):
    raw = build(position_ids="mrope").raw_rewards(*official_inputs(ref))
    assert (raw - ref["rewards"]).abs().max() > 0.1  # 0.735 measured; the 1e-4 check fails


def test_preprocessing_equals_official_pixels(port, ref):
    pixel_values, grid = port.video_inputs(ref["video"][0])
    assert torch.equal(grid, ref["video_grid_thw"][0])
    assert torch.equal(pixel_values, ref["pixel_values_videos"])


def test_frame_rules_follow_the_fixture():
    # 60 x 100 source frames, max_pixels 28*28*12 in the message: upscaled to the video minimum (fixture: 252 x 420)
    assert smart_resize(60, 100, 28, VIDEO_MIN_PIXELS, 28 * 28 * 12) == (252, 420)
    assert sample_frame_indices(16, 8.0, 2.0) == [0, 5, 10, 15]  # the fixture's 16-frame 8-fps video
    wan = sample_frame_indices(81, 16.0, 2.0)  # a Wan2.1 video: 81 frames at 16 fps
    assert len(wan) == round(81 / 16 * 2 / 2) * 2 and wan[0] == 0 and wan[-1] == 80


def test_gradients_reach_pixels(port):
    pixels = torch.rand(1, 3, 5, 40, 60, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    score = port(pixels, ["a cat"])
    score.sum().backward()
    assert score.shape == (1,) and score.dtype == torch.float32
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


def test_batched_prompts_of_different_lengths_score_as_single(port):
    """Right padding with sequential positions leaves every real token's state unchanged."""
    pixels = torch.rand(2, 3, 5, 40, 60, generator=torch.Generator().manual_seed(1))
    prompts = ["a cat", "a much longer prompt about a dog running on the beach"]
    with torch.no_grad():
        single = torch.cat([port(pixels[i:i + 1], prompts[i:i + 1]) for i in range(2)])
        port.batch_size = 2
        try:
            batched = port(pixels, prompts)
        finally:
            port.batch_size = 1
    assert (batched - single).abs().max() < 1e-5


def test_norm_heads_and_evaluate(ref):
    norm = {"VQ_mean": 1.0, "VQ_std": 2.0, "MQ_mean": -1.0, "MQ_std": 0.5, "TA_mean": 0.25, "TA_std": 4.0}
    reward = build(use_norm=True, norm=norm, heads=["VQ", "TA"])
    raw = ref["rewards"][0]
    expect = [(raw[i] - norm[f"{h}_mean"]) / norm[f"{h}_std"] for i, h in enumerate(HEADS)]
    out = reward.evaluate(ref["video"], [ref["prompt"]])
    assert abs(out["videoreward"][0] - (expect[0] + expect[2])) < 1e-4
    for i, h in enumerate(HEADS):
        assert abs(out[f"videoreward_{h.lower()}"][0] - expect[i]) < 1e-4
    assert reward.conventions["heads"] == "VQ+TA" and reward.conventions["position_ids"] == "sequential"
    with pytest.raises(ValueError, match="inference_config"):
        build(use_norm=True)  # the fixture's model_config.json has no inference_config


@pytest.mark.parametrize("rename, named", [
    (("base_model.model.visual.blocks.0.attn.qkv.weight", "base_model.model.visual.blocks.0.attn.qkv_x.weight"),
     "qkv_x"),
    (("base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight",
      "base_model.model.model.layers.1.mlp.up_proj.lora_B.other.weight"), "layers.1.mlp.up_proj"),
    (("base_model.model.rm_head.weight", "base_model.model.score.weight"), "score"),
])
def test_renamed_key_fails_loudly(tmp_path, rename, named):
    state = torch.load(VA / "ckpt" / "checkpoint-1" / "model.pth", weights_only=True)
    state[rename[1]] = state.pop(rename[0])
    (tmp_path / "checkpoint-1").mkdir()
    torch.save(state, tmp_path / "checkpoint-1" / "model.pth")
    (tmp_path / "model_config.json").write_text((VA / "ckpt" / "model_config.json").read_text())
    with pytest.raises(KeyError, match=named):
        build(checkpoint=str(tmp_path))


def test_hydra_config_builds_the_port(ref):
    from ntrk_bench.config import build_reward

    reward = build_reward("videoreward", checkpoint=str(VA / "ckpt"), checkpoint_file="checkpoint-1/model.pth",
                          base_model=str(VA / "base"), device="cpu", dtype="float32", use_norm=False)
    assert isinstance(reward, VideoReward) and reward.differentiable
    assert reward.input_fps == 16.0 and reward.fps == 2.0 and reward.max_pixels == 9408  # from model_config.json
    assert (reward.raw_rewards(*official_inputs(ref)) - ref["rewards"]).abs().max() < 1e-4
