"""Every checkpoint an experiment needs: listed, checked against the local caches, and fetched.

    python scripts/prefetch_weights.py experiment=table3          # fetch what table 3 needs (connected machine)
    python scripts/prefetch_weights.py --all                      # every model and reward configured
    python scripts/prefetch_weights.py --check experiment=table14 # offline: list what is missing, exit 1 if any
    python scripts/prefetch_weights.py reward=vbench_dynamic_degree model=flux_dev task=counting

An experiment is composed with Hydra (conf/experiment/<name>.yaml, every model and task its sweep names); its
models and its tasks' target and held-out rewards are read from conf/model/*.yaml and conf/reward/*.yaml. Hub
weights go to the Hugging Face cache (HF_HOME), VBench's to its cache (VBENCH_CACHE_DIR, else ~/.cache/vbench),
CountGD's checkpoint to the path its config names. Each missing weight is one line naming its fetch command
(`hf download <repo> [files]`, or the URL); with HF_HUB_OFFLINE=1 or --check nothing is fetched.
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import DictConfig, OmegaConf  # noqa: E402

from ntrk_bench.config import CONF_DIR, load_group  # noqa: E402

#: files a tokenizer, processor or config needs, not the weights (AutoTokenizer / AutoProcessor / AutoConfig)
TOKENIZER_FILES = ("*.json", "*.txt", "*.model")
#: CountGD's FSC-147 checkpoint (github.com/niki-amini-naieni/CountGD README, "Google Drive link (1.2 GB)")
COUNTGD_DRIVE_ID = "1RbRcNLsOfeEbx6u39pBehqsgQiexHHrI"


# ---------------------------------------------------------------------------------------------------- weights
def in_hub_cache(repo: str, filename: str) -> bool:
    """Whether the Hugging Face cache (HF_HOME) holds ``filename`` of ``repo`` at its main revision."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo, filename), str)
    except ValueError:  # not a repo id (a local path that does not exist)
        return False


@dataclass(frozen=True)
class HubFiles:
    """Named files of a hub repo (what ``ntrk_bench.hub.hub_file`` reads); a local folder or file is used as it is."""
    what: str
    repo: str
    files: tuple

    def present(self) -> bool:
        if Path(self.repo).is_file():
            return True
        return all(Path(self.repo, f).is_file() or in_hub_cache(self.repo, f) for f in self.files)

    def command(self) -> str:
        return f"hf download {self.repo} {' '.join(self.files)}"

    def fetch(self) -> None:
        from huggingface_hub import hf_hub_download

        for f in self.files:
            hf_hub_download(self.repo, f)


@dataclass(frozen=True)
class HubRepo:
    """A hub repo read by ``from_pretrained`` (``ntrk_bench.hub.from_pretrained``): all of it, or the files
    matching ``include`` (a tokenizer); a local folder is used as it is."""
    what: str
    repo: str
    include: tuple = ()

    def present(self) -> bool:
        from huggingface_hub import snapshot_download

        if Path(self.repo).is_dir():
            return True
        try:
            folder = Path(snapshot_download(self.repo, local_files_only=True))
        except Exception:  # no snapshot of the repo in the cache (the hub's errors are many)
            return False
        return not self.include or any(any(folder.glob(p)) for p in self.include)

    def command(self) -> str:
        return f"hf download {self.repo}" + (" --include " + " ".join(f"'{p}'" for p in self.include)
                                             if self.include else "")

    def fetch(self) -> None:
        from huggingface_hub import snapshot_download

        snapshot_download(self.repo, allow_patterns=list(self.include) or None)


@dataclass(frozen=True)
class LocalFile:
    """A file outside the hub, at ``path``; ``how`` is the one-line fetch command, ``run`` fetches it (None:
    by hand, e.g. a Google Drive file without gdown installed)."""
    what: str
    path: str
    how: str
    run: Callable[[], None] | None = field(default=None, compare=False)

    def present(self) -> bool:
        return Path(self.path).exists()

    def command(self) -> str:
        return self.how

    def fetch(self) -> None:
        if self.run is None:
            raise RuntimeError(f"fetch by hand: {self.how}")
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.run()


def download(url: str, to: Path) -> None:
    """``url`` to the file ``to``, through a temporary name (a killed download leaves nothing behind)."""
    import urllib.request

    tmp = to.with_name(to.name + ".part")
    urllib.request.urlretrieve(url, tmp)
    os.replace(tmp, to)


def vbench_files(cfg: DictConfig) -> list[LocalFile]:
    """The files of a VBench dimension in its cache (rewards/external.py VBENCH_CACHE_FILES)."""
    from rewards.external import VBENCH_CACHE_FILES, vbench_cache_dir

    cache = vbench_cache_dir(cfg.get("cache_dir"))
    return [LocalFile(f"VBench {cfg.dimension}", str(cache / f.path), f.fetch_command(cache), _vbench_fetcher(f, cache))
            for f in VBENCH_CACHE_FILES[cfg.dimension]]


def _vbench_fetcher(f, cache: Path) -> Callable[[], None]:
    target = cache / f.path
    if f.kind == "url":
        return lambda: download(f.source, target)
    if f.kind == "hf":
        from huggingface_hub import hf_hub_download

        return lambda: hf_hub_download(f.source, target.name, local_dir=str(target.parent))
    if f.kind == "zip":
        def unzip():
            import zipfile

            archive = cache / Path(f.path).parts[0] / Path(f.source).name
            download(f.source, archive)
            zipfile.ZipFile(archive).extractall(archive.parent)
            archive.unlink()
        return unzip
    if f.kind == "git":
        return lambda: subprocess.run(["git", "clone", f.source, str(target.parent)], check=True)
    if f.kind == "link":
        return lambda: target.symlink_to(cache / f.source)
    raise ValueError(f"unknown cache file kind {f.kind!r}")


def countgd_checkpoint(cfg: DictConfig) -> LocalFile:
    path = Path(cfg.checkpoint) if str(cfg.checkpoint).endswith(".pth") else Path(cfg.checkpoint, cfg.checkpoint_file)

    def gdown():
        import gdown as gd  # optional: pip install gdown

        gd.download(id=COUNTGD_DRIVE_ID, output=str(path))

    return LocalFile("CountGD", str(path), f"gdown {COUNTGD_DRIVE_ID} -O {path}  "
                     f"(https://drive.google.com/file/d/{COUNTGD_DRIVE_ID})", gdown)


def t2icount_files(cfg: DictConfig) -> list:
    """T2I-Count's gradient server: a checkout of cha15yq/T2ICount with SD-1.5 and its own checkpoint inside
    (conf/reward/t2icount.yaml), and CLIP ViT-L/14 in the hub cache of its environment."""
    args = cfg.scorer_args
    out = [HubRepo("T2I-Count CLIP text encoder", "openai/clip-vit-large-patch14")]
    if not args.checkout:
        return out + [LocalFile("T2I-Count checkout", "<scorer_args.checkout unset>",
                                "git clone https://github.com/cha15yq/T2ICount and set reward scorer_args.checkout")]
    sd = Path(args.checkout, args.sd_checkpoint)
    return out + [
        LocalFile("T2I-Count checkout", str(Path(args.checkout, args.config)),
                  f"git clone https://github.com/cha15yq/T2ICount {args.checkout}"),
        LocalFile("SD-1.5 for T2I-Count", str(sd),
                  f"hf download stable-diffusion-v1-5/stable-diffusion-v1-5 {sd.name} --local-dir {sd.parent}"),
        LocalFile("T2I-Count", str(Path(args.checkout, args.count_checkpoint)),
                  "see the T2ICount README (github.com/cha15yq/T2ICount) for best_model_paper.pth"),
    ]


def videoalign_checkpoint(folder: str) -> LocalFile:
    """VideoAlign's inference.py reads the KwaiVGI/VideoReward repo as a folder (``load_from_pretrained``)."""
    def fetch():
        from huggingface_hub import snapshot_download

        snapshot_download("KwaiVGI/VideoReward", local_dir=folder)

    return LocalFile("VideoReward (VideoAlign)", str(Path(folder, "model_config.json")),
                     f"hf download KwaiVGI/VideoReward --local-dir {folder}", fetch)


def _hps_file(cfg) -> str:
    from rewards.hpsv2 import HPS_CHECKPOINTS

    return cfg.checkpoint_file or HPS_CHECKPOINTS[cfg.version]


#: _target_ -> the weights that class loads from its configuration (the loader each one calls, in its module)
MANIFEST: dict[str, Callable[[DictConfig], list]] = {
    # models (ntrk_bench/models/): diffusers pipelines from_pretrained
    "ntrk_bench.models.flux.FluxFlow.from_pretrained": lambda c: [HubRepo("FLUX", c.model_id)] + (
        [HubRepo("fine-tuned FLUX transformer", c.transformer_id)] if c.get("transformer_id") else []),
    "ntrk_bench.models.diffusers_flows.WanFlow.from_pretrained": lambda c: [HubRepo("Wan2.1", c.model_id)],
    "ntrk_bench.models.diffusers_flows.ZImageFlow.from_pretrained": lambda c: [HubRepo("Z-Image", c.model_id)],
    # rewards (rewards/*.py)
    "rewards.clip.PickScore": lambda c: [HubRepo("PickScore", c.clip_id),
                                         HubRepo("PickScore processor", c.processor_id or c.clip_id, TOKENIZER_FILES)],
    "rewards.clip.LaionAesthetic": lambda c: [HubRepo("LAION aesthetic CLIP", c.clip_id),
                                              HubFiles("LAION aesthetic head", c.head, (c.head_file,))],
    "rewards.imagereward.ImageReward": lambda c: [
        HubFiles("ImageReward", c.checkpoint, (c.checkpoint_file,)),
        HubFiles("ImageReward med_config", c.med_config, (c.med_config_file,)),
        HubRepo("ImageReward tokenizer", c.tokenizer_id, TOKENIZER_FILES)],
    "rewards.hpsv2.HPSv2": lambda c: [HubFiles(f"HPS{c.version}", c.checkpoint, (_hps_file(c),)),
                                      HubRepo("HPS tokenizer", c.tokenizer_id, TOKENIZER_FILES)],
    "rewards.vqascore.VQAScore": lambda c: [HubRepo("CLIP-FlanT5", c.model_id),
                                            HubRepo("CLIP-FlanT5 vision tower", c.clip_id),
                                            HubRepo("FlanT5 tokenizer", c.tokenizer_id, TOKENIZER_FILES)],
    "rewards.countgd.CountGD": lambda c: [countgd_checkpoint(c),
                                          HubRepo("CountGD BERT tokenizer", c.text_encoder, TOKENIZER_FILES)],
    "rewards.videoreward.VideoReward": lambda c: [
        HubFiles("VideoReward", c.checkpoint, (c.checkpoint_file, "model_config.json")),
        HubRepo("VideoReward base model", c.base_model)],
    "rewards.vlm_yes.VLMYesProbability": lambda c: [HubRepo("Qwen2.5-VL", c.model_id)],
    "rewards.remote.RemoteReward": t2icount_files,
    "rewards.external.VBenchEval": vbench_files,
    # the official packages' evaluators (their own environments): what each package loads
    "rewards.external.ImageRewardEval": lambda c: [
        HubFiles("ImageReward (image-reward package)", "THUDM/ImageReward", ("ImageReward.pt", "med_config.json"))],
    "rewards.external.VQAScoreEval": lambda c: [HubRepo("CLIP-FlanT5 (t2v_metrics)", "zhiqiulin/clip-flant5-xxl")],
    "rewards.external.VideoRewardEval": lambda c: [videoalign_checkpoint(c.checkpoint)],
}
#: classes whose weights are committed to this repository (or that have none)
NO_WEIGHTS = ("ntrk_bench.mini.", "ntrk_bench.models.gmm.", "rewards.mini.", "rewards.quality.", "rewards.analytic.")


def weights_of(block: DictConfig) -> list:
    """The weights the object a config block builds reads."""
    target = block._target_
    if target.startswith(NO_WEIGHTS):
        return []
    if target not in MANIFEST:
        raise KeyError(f"no weight manifest for {target}: add it to MANIFEST in scripts/prefetch_weights.py")
    return MANIFEST[target](block)


# ---------------------------------------------------------------------------------------------------- selection
def sweep_values(params: dict, key: str) -> list[str]:
    """The options a Hydra sweep gives ``key`` (``a,b,c``), none when it does not sweep it."""
    value = params.get(key)
    return [v.strip() for v in str(value).split(",")] if value is not None else []


def composed(overrides: list[str]) -> list[DictConfig]:
    """Every configuration the overrides' sweep composes (Hydra compose API): the sweep's models and tasks
    expanded, every other swept key (rows, seeds) left at its default, which changes no weight."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        base = compose("config", overrides=overrides, return_hydra_config=True)
        params = base.hydra.sweeper.get("params")
        params = OmegaConf.to_container(params) if params else {}
        axes = {k: sweep_values(params, k) for k in ("model", "task") if sweep_values(params, k)}
        return [compose("config", overrides=overrides + [f"{k}={v}" for k, v in zip(axes, combo)])
                for combo in itertools.product(*axes.values())]


def selected(args) -> tuple[list[DictConfig], list[str]]:
    """(model blocks, reward names) the command line asks for: an experiment's or task's models and its
    target and held-out rewards; ``model=``/``reward=`` options; or every option (``--all``)."""
    if args.all:
        models = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        rewards = sorted(p.stem for p in (CONF_DIR / "reward").glob("*.yaml"))
        return [cfg.model for m in models for cfg in composed([f"model={m}"])], rewards
    rewards = [o.split("=", 1)[1] for o in args.overrides if o.startswith("reward=")]
    overrides = [o for o in args.overrides if not o.startswith("reward=")]
    if not overrides:
        return [], rewards
    configs = composed(overrides)
    for cfg in configs:
        rewards += [cfg.task.target, *cfg.task.get("held_out", [])]
    return [cfg.model for cfg in configs], list(dict.fromkeys(rewards))


def needed(models: Iterable[DictConfig], rewards: Iterable[str]) -> list:
    """The weights of the models and rewards, each once."""
    out = [w for m in models for w in weights_of(m)]
    out += [w for r in rewards for w in weights_of(load_group("reward", r))]
    unique: dict[str, object] = {}
    for w in out:  # one per fetch command (a tokenizer two rewards share is fetched once)
        unique.setdefault(w.command(), w)
    return list(unique.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="experiment=NAME, task=NAME, model=NAME, reward=NAME (Hydra overrides)")
    ap.add_argument("--all", action="store_true", help="every conf/model and conf/reward option")
    ap.add_argument("--check", action="store_true", help="fetch nothing: list what is missing (exit 1 if anything is)")
    args = ap.parse_args(argv)
    if not args.all and not args.overrides:
        ap.error("name an experiment (experiment=table3), a task, models or rewards, or pass --all")
    weights = needed(*selected(args))
    offline = args.check or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    missing = []
    for w in weights:
        if w.present():
            print(f"present  {w.what}: {w.command()}")
            continue
        if not offline:
            try:
                print(f"fetching {w.what}: {w.command()}", flush=True)
                w.fetch()
            except Exception as err:  # network, gated repo, missing tool: reported below with its command
                print(f"  failed: {type(err).__name__}: {err}")
            if w.present():
                continue
        missing.append(w)
    for w in missing:
        print(f"missing  {w.what}: {w.command()}")
    print(f"{len(weights) - len(missing)} of {len(weights)} weights present")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
