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
