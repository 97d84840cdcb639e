"""The HPSv2 port (rewards/hpsv2.py) against the golden fixture made by the official hpsv2 1.2.0 package on a
tiny random ViT-H-14-layout CLIP (tests/data/golden/hpsv2_tiny/): the key map onto transformers' CLIPModel,
features and scores, the longest-side-resize-and-pad preprocessing, gradients, and the Hydra-built reward."""
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ntrk_bench.config import build_reward  # noqa: E402
from ntrk_bench.evaluate import build_evaluator  # noqa: E402
from rewards.hpsv2 import EOT, SOT, build_hps_model, clip_config, hps_input  # noqa: E402
from rewards.keymap import read_state_dict  # noqa: E402
from tiny import byte_chars  # noqa: E402

GOLDEN = Path(__file__).parent / "data" / "golden" / "hpsv2_tiny"
CHECKPOINT, ARCH = GOLDEN / "HPS_tiny_compressed.pt", GOLDEN / "HPS-tiny-H.json"
TOL = 1e-5  # golden README: open_clip -> CLIPModel remap observed 4.5e-8 (features), 3.0e-8 (scores)


@pytest.fixture(scope="module")
def io():
    return torch.load(GOLDEN / "hpsv2_tiny_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def state():
    return read_state_dict(str(CHECKPOINT))


@pytest.fixture(scope="module")
def model(state):
    return build_hps_model(state, json.loads(ARCH.read_text()))


def byte_level_clip_tokenizer(directory: Path, pad_token: str = "<|endoftext|>") -> Path:
    """A byte-level CLIP BPE (no merges) whose start/end-of-text ids are the real vocabulary's 49406/49407."""
    from transformers import CLIPTokenizer

    chars = byte_chars()
    vocab = {**{c: i for i, c in enumerate(chars)}, **{c + "</w>": 256 + i for i, c in enumerate(chars)},
             "<|startoftext|>": SOT, "<|endoftext|>": EOT}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77,
                  pad_token=pad_token).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return byte_level_clip_tokenizer(tmp_path_factory.mktemp("clip_bpe"))


def features(out):
    return torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1)


def test_port_reproduces_the_official_features_and_scores(io, model):
    with torch.no_grad():
        image = features(model.get_image_features(pixel_values=io["pixel_values"]))
        text = features(model.get_text_features(input_ids=io["input_ids"]))  # open_clip's ids, padded with 0
    assert (image - io["image_features"]).abs().max() <= TOL
    assert (text - io["text_features"]).abs().max() <= TOL
    assert ((image * text).sum(-1) - io["scores"]).abs().max() <= TOL


def test_padding_with_end_of_text_leaves_the_text_features_unchanged(io, model):
    """transformers' CLIPTokenizer pads with <|endoftext|> (49407), open_clip with 0: pooling reads the first EOT."""
    ids = io["input_ids"].clone()
    after_eot = torch.cumsum(ids == EOT, dim=-1) - (ids == EOT).long() > 0
    ids[after_eot] = EOT
    with torch.no_grad():
        text = features(model.get_text_features(input_ids=ids))
    assert (text - io["text_features"]).abs().max() <= TOL


def test_preprocessing_is_the_packages_resize_longest_side_and_pad(io):
    x = hps_input(io["image_uint8"].permute(2, 0, 1)[None].float() / 255)
    assert (x - io["pixel_values"]).abs().max() <= 1e-6  # observed 0.0
    assert x.shape == (1, 3, 224, 224)


def test_a_renamed_missing_or_misshaped_checkpoint_key_fails_naming_it(state, io):
    arch = io["config"]
    renamed = {("visual.ln_final.weight" if k == "visual.ln_post.weight" else k): v for k, v in state.items()}
    with pytest.raises(KeyError, match="visual.ln_final.weight"):
        build_hps_model(renamed, arch)
    missing = {k: v for k, v in state.items() if k != "text_projection"}
    with pytest.raises(KeyError, match=r"missing.*text_projection\.weight"):
        build_hps_model(missing, arch)
    key = "transformer.resblocks.1.attn.in_proj_weight"
    with pytest.raises(RuntimeError, match=r"text_model\.encoder\.layers\.1\.self_attn\.q_proj\.weight"):
        build_hps_model({**state, key: state[key][:-3]}, arch)  # a short in_proj splits into wrong-sized q/k/v
    with pytest.raises(ValueError, match="ls_init_value"):
        clip_config({**arch, "vision_cfg": {**arch["vision_cfg"], "ls_init_value": 1e-5}})


def test_reward_from_its_yaml_scores_images_end_to_end_with_gradients(io, tokenizer_dir):
    kw = dict(checkpoint=str(CHECKPOINT), architecture=str(ARCH), tokenizer_id=str(tokenizer_dir), device="cpu",
              batch_size=2)
    reward = build_reward("hpsv2_1", **kw)
    assert reward.differentiable and reward.name == "hpsv2_1"
    x = (io["image_uint8"].permute(2, 0, 1)[None].float() / 255).repeat(4, 1, 1, 1).requires_grad_(True)
    prompts = io["prompts"]  # the last is longer than the 77-token context
    scores = reward(x, prompts)  # batches of 2
    ids = reward.tokenize(prompts)
    assert ids.shape == (4, 77) and (ids[:, 0] == SOT).all() and ids[3, -1] == EOT  # truncated, ends with EOT
    with torch.no_grad():  # the official scores once the ids are the official ones (no BPE vocabulary offline)
        image = reward.image_features(hps_input(x))
        with_official_ids = (image * reward.text_features(io["input_ids"])).sum(-1)
        expected = (image * reward.text_features(ids)).sum(-1)
    assert torch.allclose(with_official_ids, io["scores"], atol=TOL)
    assert scores.shape == (4,) and torch.allclose(scores, expected, atol=1e-6)
    scores.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    evaluated = build_evaluator("hpsv2", **kw).evaluate(x.detach()[:1], prompts[:1])  # the v2.0 name, same file
    assert evaluated["hpsv2"] == pytest.approx([scores[0].item()], abs=1e-6)


def test_a_tokenizer_that_pads_with_bang_is_refused(tmp_path):
    """Saved with pad "!", a CLIPTokenizer keeps "!" as an added token even when told to pad with EOT."""
    bang = byte_level_clip_tokenizer(tmp_path, pad_token="!")
    with pytest.raises(ValueError, match="'!' as an added"):
        build_reward("hpsv2", checkpoint=str(CHECKPOINT), architecture=str(ARCH), tokenizer_id=str(bang), device="cpu")
