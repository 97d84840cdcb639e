"""Held-out evaluators whose packages cannot share an environment with diffusers 0.42 / transformers 5: each is
imported only inside its own environment, behind the evaluation stage's subprocess boundary
(``python -m ntrk_bench.evaluate --env NAME=/env/bin/python``). They score saved files through the
official APIs; nothing here is imported by the core environment.

The packages do not install beside transformers 5: tests/test_evaluation_stage.py runs VBenchEval through the
subprocess boundary against a stand-in ``vbench`` module; the others are not exercised by this repository's tests.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


def _need(module: str, how: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is not importable here: {how}; run it in its own environment with "
                          f"`python -m ntrk_bench.evaluate --env NAME=/path/to/that/env/bin/python`") from None


class ImageRewardEval:
    """ImageReward v1.0 (THUDM): ``RM.load(...).score(prompt, path)``, normalised as the package does."""
    reads_files = True

    def __init__(self, name: str = "imagereward", model: str = "ImageReward-v1.0", device: str = "cuda",
                 download_root: str | None = None):
        rm = _need("ImageReward", "pip install image-reward (with transformers<4.56, timm==0.6.13)")
        self.name, self.model = name, rm.load(model, device=device, download_root=download_root)

    def score_files(self, files: Sequence[Path], prompts: Sequence[str]) -> dict:
        return {self.name: [float(self.model.score(p, str(f))) for f, p in zip(files, prompts)]}


class VQAScoreEval:
    """VQAScore (t2v_metrics <= 3.0, ``clip-flant5-xxl``): P("Yes" | 'Does this figure show "{text}"?')."""
    reads_files = True

    def __init__(self, name: str = "vqascore", model: str = "clip-flant5-xxl", device: str = "cuda",
                 cache_dir: str | None = None):
        t2v = _need("t2v_metrics", "pip install t2v_metrics==1.2 (transformers 4.36) or 3.0 (torch 2.5.1, transformers 4.49)")
        kw = {"cache_dir": cache_dir} if cache_dir else {}
        self.name, self.model = name, t2v.VQAScore(model=model, device=device, **kw)

    def score_files(self, files: Sequence[Path], prompts: Sequence[str]) -> dict:
        return {self.name: [float(self.model(images=[str(f)], texts=[p])[0, 0]) for f, p in zip(files, prompts)]}


@dataclass(frozen=True)
class CacheFile:
    """A file VBench reads from its cache directory in local mode, and where it comes from (vbench 0.1.5,
    ``vbench/utils.py`` ``init_submodules(local=True)``, which otherwise fetches it at run time)."""
    path: str  # relative to the cache directory
    source: str  # a URL; a hub repo (kind "hf"); a git repository (kind "git"); the file linked to (kind "link")
    kind: str = "url"  # url | zip (an archive at `source` holding `path`) | hf | git (`path` is a file of the clone) | link

    def fetch_command(self, cache: Path) -> str:
        """One shell line that puts this file in place."""
        target, where = Path(cache, self.path), Path(cache, self.path).parent
        if self.kind == "url":
            return f"wget -P {where} {self.source}"
        if self.kind == "zip":  # vbench/utils.py: wget models.zip, then unzip -d raft_model/
            archive = Path(cache, Path(self.path).parts[0])
            return f"wget -P {archive} {self.source} && unzip -d {archive} {archive / Path(self.source).name}"
        if self.kind == "hf":
            return f"hf download {self.source} {target.name} --local-dir {where}"
        if self.kind == "git":
            return f"git clone {self.source} {where}"
        if self.kind == "link":
            return f"mkdir -p {where} && ln -s {Path(cache, self.source)} {target}"
        raise ValueError(f"unknown cache file kind {self.kind!r}")


_DINO = "dino_model/dino_vitbase16_pretrain.pth"
#: what each Table-3 dimension reads in local mode (vbench/utils.py init_submodules, and the modules it names)
VBENCH_CACHE_FILES = {
    "subject_consistency": (
        CacheFile("dino_model/facebookresearch_dino_main/hubconf.py", "https://github.com/facebookresearch/dino", "git"),
        CacheFile(_DINO, "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
        # DINO's hubconf.py loads its weights with torch.hub.load_state_dict_from_url whatever VBench passes, i.e.
        # from <torch hub dir>/checkpoints/; VBenchEval points the hub dir at <cache>/torch_hub
        CacheFile("torch_hub/checkpoints/dino_vitbase16_pretrain.pth", _DINO, "link"),
    ),
    "background_consistency": (
        CacheFile("clip_model/ViT-B-32.pt", "https://openaipublic.azureedge.net/clip/models/"
                  "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"),
    ),
    "motion_smoothness": (CacheFile("amt_model/amt-s.pth", "lalala125/AMT", "hf"),),
    "dynamic_degree": (
        CacheFile("raft_model/models/raft-things.pth", "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip",
                  "zip"),
    ),
    "aesthetic_quality": (
        CacheFile("clip_model/ViT-L-14.pt", "https://openaipublic.azureedge.net/clip/models/"
                  "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
        # vbench/aesthetic_quality.py get_aesthetic_model(<cache>/aesthetic_model/emb_reader)
        CacheFile("aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
                  "https://raw.githubusercontent.com/LAION-AI/aesthetic-predictor/main/sa_0_4_vit_l_14_linear.pth"),
    ),
    "imaging_quality": (
        CacheFile("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
                  "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth"),
    ),
}
#: per-video results on another scale than the dimension's score: vbench/imaging_quality.py averages MUSIQ's
#: 0-100 per-video scores and divides the mean by 100 (the scale of the VBench paper and leaderboard)
VBENCH_PER_VIDEO_SCALE = {"imaging_quality": 0.01}


def vbench_cache_dir(cache_dir: str | None = None) -> Path:
    """VBench's cache: the given directory, else $VBENCH_CACHE_DIR, else ~/.cache/vbench (vbench/utils.py CACHE_DIR)."""
    return Path(cache_dir or os.environ.get("VBENCH_CACHE_DIR") or Path.home() / ".cache" / "vbench").expanduser()


def missing_vbench_files(dimension: str, cache: Path) -> list[CacheFile]:
    """The files ``dimension`` reads in local mode that are not under ``cache`` (links must resolve)."""
    if dimension not in VBENCH_CACHE_FILES:
        raise KeyError(f"VBench dimension {dimension!r} has no cache manifest; known: {', '.join(VBENCH_CACHE_FILES)}")
    return [f for f in VBENCH_CACHE_FILES[dimension] if not Path(cache, f.path).exists()]


class VBenchEval:
    """One VBench dimension in ``custom_input`` mode (the six dimensions of Table 3 support it), run in local mode
    (``evaluate(local=True)``) from a prefilled cache directory, so nothing is fetched at run time; per-video
    results are read back from VBench's ``*_eval_results.json``, on the dimension's own scale."""
    reads_files = True

    def __init__(self, name: str, dimension: str, device: str = "cuda", cache_dir: str | None = None,
                 full_info: str | None = None):
        from ntrk_bench.hub import MissingModel

        cache = vbench_cache_dir(cache_dir)
        missing = missing_vbench_files(dimension, cache)
        if missing:
            raise MissingModel("\n".join(f"VBench {dimension} needs '{Path(cache, f.path)}' (not found): "
                                         f"`{f.fetch_command(cache)}`" for f in missing))
        os.environ["VBENCH_CACHE_DIR"] = str(cache)  # vbench/utils.py reads it when first imported
        self.vbench = _need("vbench", "pip install vbench (pins transformers 4.33, numpy<2): `make env-vbench`")
        _need("vbench.utils", "").CACHE_DIR = str(cache)  # init_submodules reads it (even if imported earlier)
        import torch

        torch.hub.set_dir(str(cache / "torch_hub"))  # DINO's hubconf.py reads <hub dir>/checkpoints/
        self.name, self.dimension, self.device, self.full_info = name, dimension, device, full_info

    def score_files(self, files: Sequence[Path], prompts: Sequence[str]) -> dict:
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            videos = Path(tmp, "videos")
            videos.mkdir()
            for i, f in enumerate(files):
                (videos / f"{i:05d}.mp4").symlink_to(Path(f).resolve())
            prompt_list = {str(videos / f"{i:05d}.mp4"): p for i, p in enumerate(prompts)}
            bench = self.vbench.VBench(torch.device(self.device), self.full_info or "", tmp)
            bench.evaluate(videos_path=str(videos), name="ntrk", dimension_list=[self.dimension], local=True,
                           mode="custom_input", prompt_list=prompt_list, imaging_quality_preprocessing_mode="longer")
            per = json.loads(Path(tmp, "ntrk_eval_results.json").read_text())[self.dimension][1]
            by_path = {Path(r["video_path"]).name: float(r["video_results"]) for r in per}
        scale = VBENCH_PER_VIDEO_SCALE.get(self.dimension, 1.0)
        return {self.name: [scale * by_path[f"{i:05d}.mp4"] for i in range(len(files))]}


class VideoRewardEval:
    """VideoReward (VideoAlign): ``VideoVLMRewardInference(...).reward(paths, prompts, use_norm=True)``;
    Overall = VQ + MQ + TA, the paper's target. Needs the VideoAlign checkout on PYTHONPATH."""
    reads_files = True

    def __init__(self, name: str = "videoreward", checkpoint: str = "./checkpoints", device: str = "cuda"):
        inference = _need("inference", "clone KlingAIResearch/VideoAlign and put it on PYTHONPATH")
        import torch

        self.name = name
        self.model = inference.VideoVLMRewardInference(load_from_pretrained=checkpoint, device=device,
                                                       dtype=torch.bfloat16)

    def score_files(self, files: Sequence[Path], prompts: Sequence[str]) -> dict:
        out = self.model.reward([str(f) for f in files], list(prompts), use_norm=True)
        return {self.name: [float(r["Overall"]) for r in out], **{f"{self.name}_{k}": [float(r[k]) for r in out]
                                                               for k in ("VQ", "MQ", "TA")}}
