"""Qwen2.5-VL yes-probability reward on a tiny random Qwen2.5-VL: inputs equal the real Qwen2_5_VLProcessor's,
the score equals the model's own loss on them, and the gradient reaches the pixels.

The tokenizer and processor configuration are the tiny Qwen2.5-VL processor of the golden fixtures
(tests/data/golden/qwen25_proc/, saved by transformers 5.24), with Qwen2.5-VL's published chat template in place
of the fixture's placeholder (see the README there)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_qwen25_vl
import torch

QUESTIONS = {"a red ball in front of a blue box": "Is the red ball closer to the camera than the blue box?",
             "a tree": "Is there a tree?"}
DUAL_PROCESS_PREFIX = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                       "<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Qwen2.5-VL saved with the fixture's tokenizer and processor config, as a hub snapshot."""
    return save_tiny_qwen25_vl(tmp_path_factory.mktemp("tiny_qwen25vl"), weight_std=0.2)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "vlm.json"
    path.write_text(json.dumps([{"prompt": p, "question": q} for p, q in QUESTIONS.items()]))
    return str(path)


@pytest.fixture(scope="module")
def reward(tiny_dir, records):
    from rewards.vlm_yes import VLMYesProbability

    return VLMYesProbability(model_id=str(tiny_dir), prompts_file=records, device="cpu", dtype="float32",
                             batch_size=2)


def real_processor(tiny_dir):
    """The real Qwen2_5_VLProcessor with the PIL image processor; its video processor (torchvision) left out."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def check_argument_for_proper_class(self, name, arg):
            if name != "video_processor":
                return super().check_argument_for_proper_class(name, arg)

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    return ImageOnlyProcessor(image_processor=Qwen2VLImageProcessorPil.from_pretrained(tiny_dir), tokenizer=tok,
                              video_processor=None, chat_template=tok.chat_template)


def uint8_pixels(h, w, seed):
    """Pixels on the uint8 grid (so the PIL path of the processor sees the same values) and their PIL image."""
    from PIL import Image

    arr = np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255, Image.fromarray(arr)


def processor_inputs(reward, tiny_dir, image, prompt):
    """What the real processor gives for the reward's text (chat prefix + question + answer) and the image."""
    proc = real_processor(tiny_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": reward.question(prompt)}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == DUAL_PROCESS_PREFIX.format(question=reward.question(prompt))  # Dual-Process's Qwen prompt
    return proc(text=[text + "Yes"], images=[image], return_tensors="pt")


def test_inputs_equal_the_real_processor(reward, tiny_dir):
    prompt = "a red ball in front of a blue box"
    pixels, image = uint8_pixels(56, 84, 0)  # multiples of 28 within [min, max] pixels: no resize
    ours, n_answer = reward.model_inputs(pixels[None], [prompt])
    ref = processor_inputs(reward, tiny_dir, image, prompt)
    assert n_answer == len(reward.tokenizer("Yes", add_special_tokens=False)["input_ids"])
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(ours[key].cpu(), ref[key]), key
    assert int(ref["mm_token_type_ids"].sum()) == 6  # (2 x 3 merged patches of a 4 x 6 grid)
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    assert (ours["pixel_values"] - ref["pixel_values"]).abs().max() < 1e-5


def test_resize_keeps_an_even_grid_like_the_processor(reward, tiny_dir):
    from rewards.vlm_yes import vision_inputs

    proc = real_processor(tiny_dir)
    for h, w in [(1024, 1024), (512, 768), (100, 150)]:
        _, grid = vision_inputs(torch.rand(1, 3, h, w), reward.mean, reward.std, 14, 2, 2, reward.min_pixels,
                                reward.max_pixels)
        assert grid[0, 1] % 2 == 0 and grid[0, 2] % 2 == 0
        assert int(grid.prod()) == proc.image_processor.get_number_of_image_patches(h, w, {})
    assert grid.tolist() == [[1, 8, 10]]  # 100 x 150 -> 112 x 140
    # off-grid sizes are resized bicubic in torch; the PIL path of the processor agrees to a few grey levels
    pixels, image = uint8_pixels(100, 150, 1)
    ours, _ = vision_inputs(pixels[None], reward.mean, reward.std, 14, 2, 2, reward.min_pixels, reward.max_pixels)
    ref = proc.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape and (ours - ref).abs().mean() < 0.05


def test_score_equals_the_models_loss(reward, tiny_dir):
    """exp(-CE of "Yes") through the model's own forward and loss on the real processor's inputs."""
    prompts = list(QUESTIONS)
    images = [uint8_pixels(56, 84, s) for s in (2, 3)]
    with torch.no_grad():
        scores = reward(torch.stack([p for p, _ in images]), prompts)  # batched: left padding, two lengths
        logp = reward.log_prob(torch.stack([p for p, _ in images]), prompts)
    for i, prompt in enumerate(prompts):
        ref = processor_inputs(reward, tiny_dir, images[i][1], prompt)
        n_answer = len(reward.tokenizer("Yes", add_special_tokens=False)["input_ids"])
        labels = torch.full_like(ref["input_ids"], -100)
        labels[:, -n_answer:] = ref["input_ids"][:, -n_answer:]
        with torch.no_grad():
            loss = reward.model(**ref, labels=labels).loss
        assert abs(float(logp[i]) + float(loss)) < 1e-5, (float(logp[i]), -float(loss))
        assert abs(float(scores[i]) - float(torch.exp(-loss))) < 1e-6
    assert scores.dtype == torch.float32 and scores.shape == (2,) and ((scores > 0) & (scores < 1)).all()
    # the 3D (M-RoPE) positions matter: without mm_token_type_ids the model falls back to 1D positions
    inputs, n_answer = reward.model_inputs(torch.stack([p for p, _ in images])[:1], prompts[:1])
    with torch.no_grad():
        plain = reward.model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"}).logits
    from rewards.vlm_yes import answer_log_probability

    assert abs(float(answer_log_probability(plain, inputs["input_ids"], n_answer)[0]) - float(logp[0])) > 1e-4


def test_gradient_reaches_pixels(reward):
    pixels = torch.rand(2, 3, 64, 96, requires_grad=True)  # resized to 56 x 112 on the way
    scores = reward(pixels, list(QUESTIONS))
    (grad,) = torch.autograd.grad(scores.sum(), pixels)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0


def test_config_and_missing_records(tiny_dir, records):
    from ntrk_bench.config import build_reward, load_group

    cfg = load_group("reward", "vlm_yes")
    assert cfg._target_ == "rewards.vlm_yes.VLMYesProbability" and cfg.allow_download is False
    r = build_reward("vlm_yes", model_id=str(tiny_dir), prompts_file="vlm_depth_standin.json", device="cpu",
                     dtype="float32")
    shipped = json.loads((Path(__file__).parent.parent / "ntrk_bench" / "data" / "prompts" /
                          "vlm_depth_standin.json").read_text())
    assert r.question(shipped[0]["prompt"]).startswith(shipped[0]["question"])
    with pytest.raises(KeyError, match="has no record"):
        r(torch.rand(1, 3, 56, 56), ["a prompt without a question"])
    with pytest.raises(ValueError, match="needs prompts_file"):
        build_reward("vlm_yes", model_id=str(tiny_dir), device="cpu")
