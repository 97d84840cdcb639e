"""The paper's CLIP rewards on tiny randomly initialised models, saved and loaded back offline: the real
loading code (from_pretrained, hub ids replaced by a local directory), the conventions, and gradients."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ntrk_bench.config import build_reward  # noqa: E402
from ntrk_bench.evaluate import build_evaluator  # noqa: E402
from tiny import clip_tokenizer  # noqa: E402
from ntrk_bench.hub import MissingModel  # noqa: E402


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    d = tmp_path_factory.mktemp("clip")
    tok = clip_tokenizer()
    torch.manual_seed(0)
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
              ).save_pretrained(d)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(d)
    head = torch.nn.Sequential(torch.nn.Linear(16, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                               torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                               torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, d / "aesthetic-model.pth")  # the .pth's keys
    return d


def images(n=3, size=32):
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 256, (n, 3, size, size), generator=g) / 255).float()  # exact uint8 values


def test_aesthetic_is_the_mlp_on_normalised_clip_features_and_matches_the_processor(tiny_clip):
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    r = build_reward("laion_aesthetic", clip_id=str(tiny_clip), head=str(tiny_clip), device="cpu")
    x = images()
    model, proc = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    pil = [Image.fromarray((im * 255).round().byte().permute(1, 2, 0).numpy()) for im in x]
    with torch.no_grad():  # the official path: processor from PIL, features normalised, then the MLP
        f = model.get_image_features(**proc(images=pil, return_tensors="pt"))
        f = getattr(f, "pooler_output", f)
        expected = r.head(f / f.norm(dim=-1, keepdim=True)).squeeze(-1)
    assert torch.allclose(r(x), expected, atol=1e-4), (r(x), expected)
    x.requires_grad_(True)
    r(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # differentiable from pixels (a target reward)


def test_pickscore_is_the_cosine_of_image_and_prompt_features(tiny_clip):
    r = build_reward("pickscore", clip_id=str(tiny_clip), processor_id=str(tiny_clip), device="cpu")
    x = images(2)
    s = r(x, ["a cat", "a cat"])
    assert s.shape == (2,) and (s.abs() <= 1).all()
    swapped = r(x, ["cat", "a cat"])
    img, txt = r.image_features(x), r.text_features(["cat", "a cat"])
    assert torch.allclose(swapped, (img * txt).sum(-1), atol=1e-6)
    scores = build_evaluator("pickscore", clip_id=str(tiny_clip), processor_id=str(tiny_clip), device="cpu"
                             ).evaluate(x, ["a cat", "a cat"])
    assert scores["pickscore"] == pytest.approx(s.tolist(), abs=1e-6)


def test_missing_reward_weights_are_one_line_naming_what_to_fetch(tmp_path):
    with pytest.raises(MissingModel, match="hf download openai/clip-vit-large-patch14"):
        build_reward("laion_aesthetic", device="cpu")
    with pytest.raises(KeyError, match="unknown reward 'mystery'"):
        build_reward("mystery")
