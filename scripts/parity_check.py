"""Port vs official package: score the same saved images with both and print max/mean |difference|.

    python scripts/parity_check.py IMAGE [IMAGE ...] --prompt "a cat" [--prompt ...] \
        [--only imagereward,hpsv2] [--env imagereward=/envs/ir/bin/python] [--device cuda] \
        [--set hpsv2.checkpoint=/path/to/HPS_v2_compressed.pt ...]

The ports (``rewards/``) run here, through their Hydra YAMLs (``reward/<name>.yaml``, weights from the local
hub cache). The official packages usually cannot share this environment (they pin transformers 4.x,
protobuf<4, ...), so each official scorer runs this same file in the environment given by ``--env NAME=PYTHON``
(default: this interpreter), fed the very weight files the port loaded. A row whose package or weights are
absent prints one line saying what is missing. One prompt per image, or one prompt for all.

To add an evaluator: a function ``official_<name>(files, prompts, weights, device) -> list[float]`` that
imports only the official package, and a row in ``EVALUATORS``: (package module, weight files the port uses,
the official function).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path


# --------------------------------------------------------------------------------------------------------
# Official scorers: run in the official package's environment; they import nothing from this repository.
# --------------------------------------------------------------------------------------------------------

def official_imagereward(files, prompts, weights, device):
    """image-reward 1.5: ``RM.load(path, med_config=...)``, then ``score(prompt, path)`` (normalised)."""
    import ImageReward as RM

    model = RM.load(weights["checkpoint"], device=device, med_config=weights["med_config"])
    return [float(model.score(p, str(f))) for f, p in zip(files, prompts)]


def official_hps(version):
    def score(files, prompts, weights, device):
        """hpsv2 1.2.0: ``hpsv2.score(path, prompt, cp=..., hps_version=...)`` (cosine, one image per call)."""
        import hpsv2

        return [float(hpsv2.score(str(f), p, cp=weights["checkpoint"], hps_version=version)[0])
                for f, p in zip(files, prompts)]
    return score


def official_vqascore(files, prompts, weights, device):
    """t2v_metrics <= 3.0 (CLIP-FlanT5 was dropped in 3.1): ``VQAScore(model='clip-flant5-xxl')``, P("Yes") per
    (image path, prompt); ``cache_dir`` is the hub cache holding the port's ``zhiqiulin/clip-flant5-xxl``."""
    from pathlib import Path

    import t2v_metrics

    cache_dir = str(Path(weights["config"]).parents[3])  # <cache>/models--zhiqiulin--clip-flant5-xxl/snapshots/<rev>/
    model = t2v_metrics.VQAScore(model="clip-flant5-xxl", device=device, cache_dir=cache_dir)
    return [float(model(images=[str(f)], texts=[p])[0, 0]) for f, p in zip(files, prompts)]


def official_countgd(files, prompts, weights, device):
    """CountGD (a checkout of niki-amini-naieni/CountGD on PYTHONPATH): the model, transform and count of
    ``single_image_inference.py`` (caption = prompt + " .", boxes above 0.23), no exemplars. Compare with the
    port run with ``--set countgd.prompts_file=null`` (each prompt is the phrase counted)."""
    import argparse as _argparse
    from pathlib import Path

    import datasets_inference.transforms as T
    import torch
    from models.registry import MODULE_BUILD_FUNCS
    from PIL import Image
    from util.slconfig import SLConfig

    cfg = SLConfig.fromfile(str(Path(T.__file__).resolve().parents[1] / "config" / "cfg_fsc147_vit_b.py"))
    cfg.merge_from_dict({"text_encoder_type": str(Path(weights["text_encoder"]).parent)})
    args = _argparse.Namespace(**cfg._cfg_dict.to_dict(), device=device)
    model = MODULE_BUILD_FUNCS.get(args.modelname)(args)[0]
    model.load_state_dict(torch.load(weights["checkpoint"], map_location="cpu")["model"], strict=False)
    model = model.to(device).eval()
    transform = T.Compose([T.RandomResize([800], max_size=1333), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    counts = []
    for f, p in zip(files, prompts):
        image, target = transform(Image.open(f).convert("RGB"), {"exemplars": torch.tensor([])})
        with torch.no_grad():
            out = model(image[None].to(device), [target["exemplars"].to(device)], [torch.tensor([0]).to(device)],
                        captions=[p + " ."])
        counts.append(float((out["pred_logits"][0].sigmoid().max(-1).values > 0.23).sum()))
    return counts


# name -> (official package module,
#          {weight: (YAML key of the hub repo or path, YAML key of the file name, file name when that is null)},
#          official scorer)
EVALUATORS = {
    "imagereward": ("ImageReward", {"checkpoint": ("checkpoint", "checkpoint_file", None),
                                    "med_config": ("med_config", "med_config_file", None)}, official_imagereward),
    "hpsv2": ("hpsv2", {"checkpoint": ("checkpoint", "checkpoint_file", "HPS_v2_compressed.pt")},
              official_hps("v2.0")),
    "hpsv2_1": ("hpsv2", {"checkpoint": ("checkpoint", "checkpoint_file", "HPS_v2.1_compressed.pt")},
                official_hps("v2.1")),
    "vqascore": ("t2v_metrics", {"config": ("model_id", None, "config.json")}, official_vqascore),
    "countgd": ("datasets_inference", {"checkpoint": ("checkpoint", "checkpoint_file", None),
                                       "text_encoder": ("text_encoder", None, "config.json")}, official_countgd),
}


# --------------------------------------------------------------------------------------------------------
# This environment: the ports
# --------------------------------------------------------------------------------------------------------

def weight_files(name: str, cfg: dict) -> dict[str, str]:
    """The local files the port reads (``ntrk_bench.hub.hub_file``: MissingModel naming what to fetch)."""
    from ntrk_bench.hub import hub_file

    out = {}
    for weight, (repo_key, file_key, default_file) in EVALUATORS[name][1].items():
        out[weight] = hub_file(cfg[repo_key], cfg.get(file_key) or default_file, f"{name} {weight}", False)
    return out


def package_present(python: str, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def run_official(python: str, name: str, files, prompts, weights, device) -> list[float]:
    cmd = [python, __file__, "--official", name, "--device", device, "--weights", json.dumps(weights),
           *map(str, files), *sum((["--prompt", p] for p in prompts), [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit status {out.returncode}"
        raise RuntimeError(f"official {name} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check(name: str, files, prompts, python: str, device: str, overrides: dict) -> str:
    import torch

    from ntrk_bench.config import build_reward, load_group
    from ntrk_bench.hub import MissingModel
    from ntrk_bench.io import load_image

    module = EVALUATORS[name][0]
    cfg = {**load_group("reward", name), **overrides}
    try:
        weights = weight_files(name, cfg)
    except MissingModel as err:
        return f"{name}: skipped, port weights missing: {err}"
    if not package_present(python, module):
        return f"{name}: skipped, official package '{module}' is not importable by {python} (use --env {name}=PYTHON)"
    try:
        port = build_reward(name, **{**overrides, "device": device})
    except (MissingModel, ImportError, KeyError, RuntimeError, ValueError) as err:  # weights absent or not this
        return f"{name}: port cannot load: {err}"                                     # architecture
    with torch.no_grad():  # one image at a time: saved images may differ in size
        ours = torch.cat([port(load_image(f)[:3][None], [p]) for f, p in zip(files, prompts)]).double()
    try:
        theirs = torch.tensor(run_official(python, name, files, prompts, weights, device), dtype=torch.float64)
    except RuntimeError as err:  # e.g. hpsv2 also fetches the ViT-H-14 base weights through open_clip
        return f"{name}: official scorer failed ({err})"
    diff = (ours - theirs).abs()
    return (f"{name}: {len(files)} images, max |diff| {diff.max().item():.3g}, mean |diff| {diff.mean().item():.3g} "
            f"(port mean {ours.mean().item():.4f}, official mean {theirs.mean().item():.4f})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--prompt", action="append", required=True, help="one per image, or one for all")
    ap.add_argument("--only", default=",".join(EVALUATORS), help="comma-separated evaluators")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=PYTHON",
                    help="the python of the environment holding NAME's official package")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], metavar="NAME.KEY=VALUE",
                    help="override a key of conf/reward/NAME.yaml for the port (and the files both sides read)")
    ap.add_argument("--official", default=None, help=argparse.SUPPRESS)  # official side (subprocess)
    ap.add_argument("--weights", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    prompts = args.prompt * len(args.images) if len(args.prompt) == 1 else args.prompt
    if len(prompts) != len(args.images):
        ap.error(f"{len(args.images)} images but {len(prompts)} prompts")
    if args.official:
        scorer = EVALUATORS[args.official][2]
        print(json.dumps(scorer(args.images, prompts, json.loads(args.weights), args.device)))
        return
    import yaml

    envs = dict(e.split("=", 1) for e in args.env)
    overrides: dict[str, dict] = {}
    for item in args.set:
        key, value = item.split("=", 1)
        name, key = key.split(".", 1)
        overrides.setdefault(name, {})[key] = yaml.safe_load(value)  # numbers, null, {a: 1} as in YAML
    for name in [n for n in args.only.split(",") if n]:
        if name not in EVALUATORS:
            ap.error(f"unknown evaluator {name!r}; rows: {', '.join(EVALUATORS)}")
        print(check(name, args.images, prompts, envs.get(name, sys.executable), args.device, overrides.get(name, {})),
              flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
