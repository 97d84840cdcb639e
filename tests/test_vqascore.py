"""VQAScore (CLIP-FlanT5) port against the official t2v_metrics outputs on a tiny random model.

Fixtures (tests/data/golden/, made by running the official code, see the project's golden README):
``clipt5_tiny/`` - t2v_metrics 1.2 ``CLIPT5ForConditionalGeneration`` state dict, inputs, intermediate tensors and
P("Yes") scores; ``t5_untied/`` - a T5 with an untied ``lm_head`` saved by transformers 4.55 and its logits.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewards import vqascore as vq

GOLDEN = Path(__file__).parent / "data" / "golden"
CLIPT5 = GOLDEN / "clipt5_tiny"
TOWER = CLIPT5 / "tower"


@pytest.fixture(scope="module")
def golden():
    return torch.load(CLIPT5 / "clipt5_tiny.pt", weights_only=True)


@pytest.fixture(scope="module")
def port(golden):
    from transformers import CLIPVisionModel

    tower = CLIPVisionModel.from_pretrained(TOWER)
    return vq.build_clip_flant5(golden["t5"], golden["state_dict"], tower, torch.float32)


def test_port_reproduces_official_clip_flant5(golden, port):
    with torch.no_grad():
        hidden = port.tower_hidden_state(golden["images"])
        tokens = port.image_tokens(golden["images"])
        embeds, mask = vq.splice_image_tokens(golden["input_ids"], tokens, port.t5.shared, 0)
        logits = port.answer_logits(golden["images"], golden["input_ids"], golden["labels"])
        scores = vq.answer_probability(logits, golden["labels"])
    # penultimate tower layer (the last differs by ~15 on this fixture), projected tokens, spliced embeddings
    torch.testing.assert_close(hidden, golden["hs_m2"], rtol=0, atol=1e-4)
    torch.testing.assert_close(tokens, golden["feats"], rtol=0, atol=1e-4)
    torch.testing.assert_close(embeds, golden["embeds"], rtol=0, atol=1e-4)
    assert torch.equal(mask, golden["mask"])
    torch.testing.assert_close(logits, golden["logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(scores, golden["scores"], rtol=0, atol=1e-6)


def test_untied_t5_head_trap():
    """transformers 5 ties T5's lm_head to the embeddings; the port keeps the checkpoint's two matrices."""
    from safetensors.torch import load_file
    from transformers import T5Config, T5ForConditionalGeneration

    folder = GOLDEN / "t5_untied" / "t5_untied_tf455"
    ref = torch.load(GOLDEN / "t5_untied" / "t5_untied_ref.pt", weights_only=True)
    config, state = json.loads((folder / "config.json").read_text()), load_file(folder / "model.safetensors")
    ids, labels = torch.tensor([[5, 9, 11, 1]]), torch.tensor([[13, 1]])
    model = vq.untied_t5(config, state, torch.float32)
    with torch.no_grad():
        logits = model(input_ids=ids, labels=labels).logits
    torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=1e-5)
    assert torch.equal(model.lm_head.weight, ref["lm_head"]) and torch.equal(model.shared.weight, ref["shared"])
    # the trap is real here: the plain construction + load_state_dict leaves one matrix for both
    naive = T5ForConditionalGeneration(T5Config(**{k: v for k, v in config.items() if k != "architectures"}))
    naive.load_state_dict(state, strict=False)
    with torch.no_grad():
        assert (naive(input_ids=ids, labels=labels).logits - ref["logits"]).abs().max() > 0.1


def test_unknown_or_missing_key_fails_loudly(golden):
    from transformers import CLIPVisionModel

    state = dict(golden["state_dict"])
    tower = CLIPVisionModel.from_pretrained(TOWER)
    with pytest.raises(KeyError, match="mm_proj.0.weight"):  # a prefix outside the key map
        vq.map_checkpoint({("mm_proj.0.weight" if k == "mm_projector.0.weight" else k): v for k, v in state.items()})
    renamed = {("mm_projector.0.wieght" if k == "mm_projector.0.weight" else k): v for k, v in state.items()}
    with pytest.raises(KeyError, match="wieght"):
        vq.build_clip_flant5(golden["t5"], renamed, tower, torch.float32)
    missing = {k: v for k, v in state.items() if k != "decoder.block.1.layer.2.DenseReluDense.wo.weight"}
    with pytest.raises(KeyError, match="decoder.block.1.layer.2.DenseReluDense.wo.weight"):
        vq.build_clip_flant5(golden["t5"], missing, tower, torch.float32)
    with pytest.raises(KeyError, match="embed_tokens.weight"):
        vq.map_checkpoint(state | {"embed_tokens.weight": state["shared.weight"] + 1})
    partial_tower = {k: v for k, v in state.items() if not k.endswith("post_layernorm.bias")}
    with pytest.raises(KeyError, match="post_layernorm.bias"):
        vq.build_clip_flant5(golden["t5"], partial_tower, tower, torch.float32)


def test_pad_to_square_matches_expand2square():
    """t2v_metrics pads with PIL: a new image of the mean colour, the input pasted at (long - short) // 2."""
    mean = (0.48145466, 0.4578275, 0.40821073)
    colour = tuple(int(m * 255) for m in mean)
    rgb = torch.randint(0, 256, (2, 37, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for arr in (rgb, rgb.transpose(0, 1).contiguous()):
        h, w = arr.shape[:2]
        canvas = Image.new("RGB", (max(h, w), max(h, w)), colour)
        canvas.paste(Image.fromarray(arr.numpy()), ((max(h, w) - w) // 2, (max(h, w) - h) // 2))
        ours = vq.pad_to_square(arr.permute(2, 0, 1)[None].float() / 255, [c / 255 for c in colour])
        expected = torch.from_numpy(np.array(canvas)).permute(2, 0, 1)[None].float() / 255
        assert torch.equal(ours, expected)


def test_question_is_the_t5_chat_template():
    before, after = vq.question("a red cube")
    assert before + "<image>" + after == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nDoes this figure show \"a red cube\"? "
        "Please answer yes or no. ASSISTANT: ")


def tiny_tokenizer(path: Path) -> str:
    """A word-level stand-in for the FlanT5 tokenizer (ids < 64, the tiny T5's vocabulary): 'Yes' is id 13 as
    in the fixture's labels, and every chunk ends in </s> (id 1) as T5's tokenizer does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(10)] + ["Yes"] + (
        "A chat between a curious user and an artificial intelligence assistant . The gives helpful , detailed "
        "polite answers to the user's questions USER : Does this figure show \" ? Please answer yes or no ASSISTANT "
        "red cube dog").split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    assert vocab["Yes"] == 13 and len(vocab) <= 64
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    return str(path)


def official_layout(golden, folder: Path, fmt: str) -> str:
    """The fixture's state dict as a hub folder of the official checkpoint: config.json + weights."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(golden["t5"]))
    state = {k: v.clone() for k, v in golden["state_dict"].items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, folder / "model.safetensors")
    else:  # two .bin shards and their index, as zhiqiulin/clip-flant5-xxl ships
        keys = sorted(state)
        shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
        for name, ks in shards.items():
            torch.save({k: state[k] for k in ks}, folder / name)
        index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return str(folder)


@pytest.mark.parametrize("fmt", ["safetensors", "bin_shards"])
def test_hydra_yaml_end_to_end(golden, tmp_path, fmt):
    from hydra.utils import instantiate

    from ntrk_bench.config import load_group

    cfg = load_group("reward", "vqascore")
    assert cfg._target_ == "rewards.vqascore.VQAScore"
    reward = instantiate(cfg, model_id=official_layout(golden, tmp_path / "ckpt", fmt), clip_id=str(TOWER),
                         tokenizer_id=tiny_tokenizer(tmp_path / "tok"), device="cpu", dtype="float32", batch_size=2)
    assert reward.labels.tolist() == golden["labels"][0].tolist()
    with torch.no_grad():  # official inputs through the Hydra-built model: the official scores
        torch.testing.assert_close(reward.score_inputs(golden["images"], golden["input_ids"]).float(), golden["scores"],
                                   rtol=0, atol=1e-6)
    ids = reward.question_batch(["a red cube", "dog"])
    assert (ids == vq.IMAGE_TOKEN_INDEX).sum(1).tolist() == [1, 1] and ids[1, -1] == reward.tokenizer.pad_token_id

    prompts = ["a red cube", "dog", "a curious dog and a red cube"]
    pixels = torch.rand(3, 3, 40, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    scores = reward(pixels, prompts)  # batches of 2: the short prompt is padded against the long one
    assert scores.shape == (3,) and scores.dtype == torch.float32 and ((scores > 0) & (scores < 1)).all()
    with torch.no_grad():
        alone = torch.cat([reward(pixels[i:i + 1], prompts[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(scores.detach(), alone, rtol=0, atol=1e-6)
    (grad,) = torch.autograd.grad(scores.sum(), pixels)
    assert torch.isfinite(grad).all() and (grad.abs().sum((1, 2, 3)) > 0).all()
