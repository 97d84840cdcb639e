import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def make_method(name: str, **params):
    """A method as ``conf/method/<name>.yaml`` configures it, with ``params`` replacing its values (the
    run's whitening option is ``whitening`` here, default: none given, i.e. the method's default)."""
    from omegaconf import OmegaConf

    from ntrk_bench.config import load_group
    from ntrk_bench.method import build_method

    block = OmegaConf.to_container(load_group("method", name), resolve=False)
    if "whitening" in block:
        block["whitening"] = params.pop("whitening", None)
    return build_method({**block, **params})


QWEN25_PROC = os.path.join(os.path.dirname(__file__), "data", "golden", "qwen25_proc")


def save_tiny_qwen25_vl(path, weight_std: float | None = None):
    """A tiny random Qwen2.5-VL with the golden fixture's tokenizer and processor config, saved as a hub
    snapshot at ``path``. ``weight_std``: redraw every weight from N(0, std^2), well away from the
    initialiser's near-zero scale (so that positions matter)."""
    import shutil
    from pathlib import Path

    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for f in Path(QWEN25_PROC).iterdir():
        if f.name != "README.md":
            shutil.copy(f, path / f.name)
    tok = AutoTokenizer.from_pretrained(QWEN25_PROC)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                     "<|vision_end|>")}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 100.0, "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1], tokens_per_second=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    if weight_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, weight_std)
    model.save_pretrained(path)
    return path
