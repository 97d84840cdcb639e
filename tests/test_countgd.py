"""CountGD port (transformers GroundingDINO) against the official CountGD outputs on a tiny random model.

Fixtures (tests/data/golden/, made by running the official CountGD code; see countgd_tiny/README.md):
``countgd_tiny/countgd_tiny_checkpoint.pth`` - the official checkpoint format (``{'model': state_dict}``, official
key names, float16 storage); ``countgd_tiny/countgd_tiny_io.pt`` - image, official preprocessed input, tokens and
masks, official logits/boxes/counts for two captions; ``tinybert/`` - the BERT and vocabulary it was built with.
"""
import json
from pathlib import Path

import pytest
import torch

from rewards import countgd as cg

GOLDEN = Path(__file__).parent / "data" / "golden"
CKPT_DIR = GOLDEN / "countgd_tiny"
CKPT_FILE = "countgd_tiny_checkpoint.pth"
BERT = GOLDEN / "tinybert"
IMAGENET_MEAN, IMAGENET_STD = torch.tensor(cg.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(cg.IMAGENET_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def golden():
    io = torch.load(CKPT_DIR / "countgd_tiny_io.pt", weights_only=True)
    tiny = json.loads((CKPT_DIR / "config.json").read_text())
    over = tiny["overrides"]
    io["sizes"] = dict(depths=tiny["swin_B_384_22k_overrides"]["depths"], encoder_layers=over["enc_layers"],
                       decoder_layers=over["dec_layers"], ffn_dim=over["dim_feedforward"],
                       num_queries=over["num_queries"], num_feature_levels=over["num_feature_levels"])
    # the official transform output, stored as its 8-bit resized image (a lossless re-encoding)
    io["pixel_values"] = ((io["official_input_uint8"].float() / 255 - IMAGENET_MEAN) / IMAGENET_STD)[None]
    return io


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(BERT)


@pytest.fixture(scope="module")
def state():
    return torch.load(CKPT_DIR / CKPT_FILE, weights_only=True)["model"]


def build(state, golden, tokenizer):
    from transformers import AutoConfig

    config = cg.grounding_dino_config(AutoConfig.from_pretrained(BERT), **golden["sizes"])
    return cg.load_countgd(config, state, tokenizer.convert_tokens_to_ids(list(cg.SEPARATORS)))


def test_port_reproduces_official_logits_boxes_counts(golden, tokenizer, state):
    model = build(state, golden, tokenizer)
    assert model.model.special_tokens.tolist() == golden["special_token_ids"]
    for caption, ref in ((golden["caption"], golden), (golden["caption2"], golden["caption2_outputs"])):
        text = tokenizer([caption], return_tensors="pt")
        assert torch.equal(text["input_ids"], ref["input_ids"])
        with torch.no_grad():
            out = model(pixel_values=golden["pixel_values"], **text)
        n = text["input_ids"].shape[1]
        torch.testing.assert_close(out.logits[..., :n], ref["pred_logits_text"], rtol=0, atol=1e-3)
        assert torch.isneginf(out.logits[..., n:]).all() and out.logits.shape[-1] == 256
        torch.testing.assert_close(out.pred_boxes, ref["pred_boxes"], rtol=0, atol=1e-5)
        assert cg.count_queries(out.logits, golden["box_threshold"]).item() == ref["count"]


def test_separator_ids_trap(golden):
    """transformers hard-codes bert-base-uncased's separators; the sub-sentence masks need the tokenizer's."""
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        SPECIAL_TOKENS, generate_masks_with_special_tokens_and_transfer_map)

    ids = golden["input_ids"]
    ours = generate_masks_with_special_tokens_and_transfer_map(ids, torch.tensor(golden["special_token_ids"]))
    assert torch.equal(ours[0], golden["text_self_attention_masks"]) and torch.equal(ours[1], golden["position_ids"])
    default = generate_masks_with_special_tokens_and_transfer_map(ids, torch.tensor(SPECIAL_TOKENS))
    assert not torch.equal(default[1], golden["position_ids"])


def test_preprocessing_matches_official(golden):
    """RandomResize([800], max_size=1333) on PIL (bilinear), ToTensor, ImageNet normalisation."""
    image = golden["image_uint8"].permute(2, 0, 1).float() / 255
    assert cg.resize_size(*image.shape[1:]) == tuple(golden["pixel_values"].shape[-2:]) == (107, 1337)
    torch.testing.assert_close(cg.preprocess(image)[None], golden["pixel_values"], rtol=0, atol=1e-6)
    assert cg.resize_size(512, 512) == (800, 800) and cg.resize_size(600, 800) == (800, 1066)


def test_renamed_or_missing_key_fails_loudly(golden, tokenizer, state):
    key = "transformer.decoder.layers.0.ca_text.out_proj.weight"
    typo = key.replace("ca_text", "catext")
    unknown = {(typo if k == key else k): v for k, v in state.items()}
    with pytest.raises(KeyError, match="catext.out_proj.weight"):
        cg.map_checkpoint(unknown)
    renamed = {("input_proj.2.0.wieght" if k == "input_proj.2.0.weight" else k): v for k, v in state.items()}
    # the official key renamed: its weight is missing and the renamed one unexpected, both named
    with pytest.raises(KeyError, match=r"missing '\S*input_proj_vision.2.0.weight'.*unexpected '\S*2.0.wieght'"):
        build(renamed, golden, tokenizer)
    bad_share = state | {"bbox_embed.1.layers.0.bias": state["bbox_embed.1.layers.0.bias"] + 1}
    with pytest.raises(KeyError, match="bbox_embed.1.layers.0.bias"):
        build(bad_share, golden, tokenizer)


def test_shipped_prompt_records_resolve():
    """The YAML's default prompts_file is a name resolved in ntrk_bench/data/prompts/."""
    from ntrk_bench.config import load_group

    records = cg.prompt_items(load_group("reward", "countgd").prompts_file)
    assert records and all(item["prompt"] and int(item["count"]) >= 0 for items in records.values() for item in items)


def test_hydra_yaml_end_to_end(golden, tmp_path):
    """The YAML built by Hydra, pointed at the official-format checkpoint: per-sample counts from pixels equal
    the official counts (78 for "strawberry", 100 for "a cat . grape"), padded text batches included."""
    from hydra.utils import instantiate

    from ntrk_bench.config import load_group

    n1, n2 = golden["count"], golden["caption2_outputs"]["count"]
    records = [{"prompt": f"{n1} strawberries on a long table", "items": [{"prompt": "strawberry", "count": n1}]},
               {"prompt": "both", "items": [{"prompt": "strawberry", "count": n1 - 3},
                                            {"prompt": "a cat . grape", "count": n2 + 2}]}]
    (tmp_path / "counting.json").write_text(json.dumps(records))
    cfg = load_group("reward", "countgd")
    assert cfg._target_ == "rewards.countgd.CountGD" and cfg.box_threshold == golden["box_threshold"]
    evaluator = instantiate(cfg, checkpoint=str(CKPT_DIR), checkpoint_file=CKPT_FILE, text_encoder=str(BERT),
                            prompts_file=str(tmp_path / "counting.json"), model=golden["sizes"], device="cpu",
                            batch_size=3)
    pixels = (golden["image_uint8"].permute(2, 0, 1).float() / 255)[None].expand(2, -1, -1, -1)
    out = evaluator.evaluate(pixels, [r["prompt"] for r in records])  # one batch: 5- and 7-token captions, padded
    assert out["countgd_count"] == [n1, n1 + n2] and out["countgd_target"] == [n1, n1 + n2 - 1]
    # absolute error averaged over a prompt's items; exact only when every item is
    assert out["countgd_mae"] == [0.0, 2.5] and out["countgd_accuracy"] == [100.0, 0.0]
    with pytest.raises(KeyError, match="no such prompt"):
        evaluator.evaluate(pixels[:1], ["no such prompt"])
    evaluator.count = lambda px, phrases: torch.tensor([{"strawberry": n1, "a cat . grape": n2}[p] for p in phrases])
    assert evaluator(pixels, [r["prompt"] for r in records]).tolist() == [n1, n1 + n2]  # counts over the items
    evaluator.prompts_file = None  # no records: the prompt is the phrase
    assert evaluator(pixels, ["strawberry", "a cat . grape"]).tolist() == [n1, n2]
    with pytest.raises(ValueError, match="prompts_file"):
        evaluator.evaluate(pixels, ["strawberry", "a cat . grape"])
