"""Held-out evaluators whose packages cannot share an environment with diffusers (deps.md): each is
imported only inside its own environment, behind the evaluation stage's subprocess boundary
(``python -m ntrk_bench.evaluate --env NAME=/env/bin/python``). They score saved files through the
official APIs; nothing here is imported by the core environment.

Not exercised by this repository's tests: the packages do not install beside transformers 5 here.
"""
from __future__ import annotations

import json
import tempfile
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


class VBenchEval:
    """One VBench dimension in ``custom_input`` mode (the six dimensions of Table 3 support it); per video
    results are read back from VBench's ``*_eval_results.json``."""
    reads_files = True

    def __init__(self, name: str, dimension: str, device: str = "cuda", full_info: str | None = None):
        self.vbench = _need("vbench", "pip install vbench (pins transformers 4.33, numpy<2)")
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
            bench.evaluate(videos_path=str(videos), name="ntrk", dimension_list=[self.dimension], mode="custom_input",
                           prompt_list=prompt_list, imaging_quality_preprocessing_mode="longer")
            per = json.loads(Path(tmp, "ntrk_eval_results.json").read_text())[self.dimension][1]
            by_path = {Path(r["video_path"]).name: float(r["video_results"]) for r in per}
        return {self.name: [by_path[f"{i:05d}.mp4"] for i in range(len(files))]}


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
