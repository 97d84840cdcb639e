"""docs/RESULTS.md for the mini suite: each claim with the table, paired statistics and images that decide it.

Every number is computed here from the run records (``tables.collect``) and from the mini data; nothing is
typed by hand. Configuration values are means over seeds of per-seed means, ± the standard error over
seeds. Comparisons are paired: the two configurations' samples share prompt, seed and sample index, each
seed's mean difference is one observation, and a claim is *supported* when the mean difference exceeds
twice its standard error in the claimed direction, *contradicted* when it does so the other way, *not
resolved* otherwise.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from .tables import collect

TASKS = {"mini_aesthetic": ("mini_bold", ["mini_bold_heldout", "mini_align_heldout_accuracy"]),
         "mini_text": ("mini_exemplar", ["mini_exemplar_heldout", "mini_exemplar_heldout_pca_distance",
                                         "mini_align_heldout_accuracy"])}
#: the task's own attribute behind the hack detector
ATTRIBUTE = {"mini_aesthetic": "boldness", "mini_text": "exemplar_likeness"}
#: quality measures (+1: higher is better)
QUALITY = {"hf_share": -1, "log_density_percentile": +1, "diversity": +1}
#: the configurations of the evidence, in table order: label -> (conf/method option, NFE, decorrelate)
ROWS = {"base (25)": ("base", 25, None), "BoN (100)": ("bon", 100, None), "DPS (25)": ("dps", 25, None),
        "SVDD (100)": ("svdd", 100, None), "DAS (100)": ("das", 100, None), "NTRK (25)": ("ntrk", 25, False),
        "NTRK decorrelated (25)": ("ntrk", 25, True), "raw-gradient control (25)": ("rawgrad", 25, None),
        "mean-shift control (25)": ("meanshift", 25, None)}
#: paired comparisons: (a, b, the claim that a is better than b on these measures)
PAIRS = [("NTRK (25)", "base (25)", "NTRK at 25 NFE raises the target over the base sampler"),
         ("NTRK (25)", "DPS (25)", "NTRK beats DPS at the same 25 NFE"),
         ("NTRK (25)", "DAS (100)", "NTRK at 25 NFE beats DAS at 100 NFE"),
         ("NTRK (25)", "BoN (100)", "NTRK at 25 NFE beats Best-of-4 at 100 NFE"),
         ("NTRK (25)", "raw-gradient control (25)", "whitening beats injecting the raw gradient"),
         ("NTRK (25)", "mean-shift control (25)", "tilting the noise beats moving the mean by the same amount"),
         ("NTRK decorrelated (25)", "NTRK (25)", "the decorrelated variant improves on NTRK")]
TRACE = ["w_step_cos", "injected_sum_norm", "injected_independent_norm", "fresh_sum_norm"]
#: experiments that vary a method's settings (strength frontiers, ablations): kept out of the main tables,
#: whose configurations run at the methods' defaults
SIDE = ("mini_frontier", "mini_ablation", "mini_gamma_auto")
#: strength frontiers (experiments mini_frontier*): label -> (conf/method option, the knob swept, what it
#: means); mini_paper's default configuration of the same method is one more point on its curve
FRONTIERS = {"NTRK (25)": ("ntrk", "gamma", "γ"), "DPS (25)": ("dps", "scale", "scale"),
             "FreeDoM (25)": ("freedom", "rho", "ρ"), "DAS (100)": ("das", "alpha", "α (temperature)"),
             "BoN": ("bon", "particles", "N")}


def row_label(option: str, nfe: int, variant: str) -> str | None:
    for name, (o, n, dec) in ROWS.items():
        if o == option and n == nfe and (dec is None or (f"decorrelate={dec}" in variant)):
            return name
    return None


def load(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The main tables' samples (every experiment but ``SIDE``) and the frontiers' (``frontier``, ``strength``)."""
    df = collect(root)
    df = df[df["family"].isin(["mini", "mini_exact"])].copy()
    df["row"] = [row_label(o, int(n), v) for o, n, v in zip(df["option"], df["nfe"], df["variant"])]
    main = df[df["row"].notna() & ~df["experiment"].str.startswith(SIDE)]
    return main, frontier_points(df)


def frontier_points(df: pd.DataFrame) -> pd.DataFrame:
    """The learned tier's frontier samples: each labelled with its method and the value of its strength knob."""
    is_frontier = df["experiment"].str.startswith("mini_frontier")
    default = df["experiment"].eq("mini_paper") & ~df["variant"].str.contains("decorrelate=True")
    parts = []
    for label, (option, knob, _) in FRONTIERS.items():
        sel = df[(is_frontier | default) & (df["option"] == option) & (df["model"] == "mini")].copy()
        if sel.empty:
            continue
        settings = sel["variant"].map(lambda v: dict(kv.split("=", 1) for kv in v.split(",") if "=" in kv))
        sel["strength"] = (sel["particles"].map(lambda n: str(int(n))) if knob == "particles"
                           else settings.map(lambda d: d.get(knob)))
        sel["frontier"] = label
        parts.append(sel)
    return pd.concat(parts) if parts else pd.DataFrame(columns=[*df.columns, "strength", "frontier"])


def per_seed_means(df: pd.DataFrame) -> pd.DataFrame:
    return df.groupby(["model", "task", "row", "metric", "seed"])["value"].mean().reset_index()


def cell(ps: pd.DataFrame, model, task, row, metric) -> tuple[float, float, int]:
    v = ps[(ps["model"] == model) & (ps["task"] == task) & (ps["row"] == row) & (ps["metric"] == metric)]["value"]
    v = v.dropna()
    if v.empty:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan, len(v)


def fmt(m: float, se: float = math.nan, digits: int = 3) -> str:
    if math.isnan(m):
        return "—"
    return f"{m:.{digits}g}" + ("" if math.isnan(se) else f" ± {se:.2g}")


def paired(df: pd.DataFrame, model, task, a, b, metric) -> tuple[float, float, int]:
    """Mean over seeds of the per-seed mean difference a - b over samples paired by (seed, sample)."""
    sel = df[(df["model"] == model) & (df["task"] == task) & (df["metric"] == metric)]
    x = sel[sel["row"] == a].set_index(["seed", "sample"])["value"]
    y = sel[sel["row"] == b].set_index(["seed", "sample"])["value"]
    d = (x - y).dropna()
    if d.empty:
        return math.nan, math.nan, 0
    per_seed = d.groupby(level="seed").mean()
    se = float(per_seed.std(ddof=1) / math.sqrt(len(per_seed))) if len(per_seed) > 1 else math.nan
    return float(per_seed.mean()), se, len(per_seed)


def verdict(d: float, se: float, sign: int = +1) -> str:
    if math.isnan(d) or math.isnan(se):
        return "not resolved"
    return "supported" if sign * d > 2 * se else "contradicted" if sign * d < -2 * se else "not resolved"


# ----------------------------------------------------------------------------- the tasks themselves
def task_checks() -> list[str]:
    """What each target and held-out evaluator measures on real digits, and what clamped noise does to them."""
    import torch

    from .config import build_reward
    from .mini import data
    from .mini.quality import fd_floor, hf_share

    bold_target, exemplar_target = build_reward("mini_bold"), build_reward("mini_exemplar")

    images, labels = data.subset("C")
    prompts = [data.prompt_for(int(y)) for y in labels]
    corr = lambda a, b: float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])  # noqa: E731
    with torch.no_grad():
        bold, width = data.boldness(images), build_reward("mini_bold_heldout")(images, prompts)
        like = exemplar_target(images, prompts)
        held = build_reward("mini_exemplar_heldout").evaluate(images, prompts)
        rows = [{"task": "mini_aesthetic", "target": "mini_bold (boldness)", "held-out": "mini_bold_heldout (stroke width)",
                 "correlation on real split C": f"{corr(bold, width):.2f}"},
                {"task": "mini_text", "target": "mini_exemplar", "held-out": "mini_exemplar_heldout (cosine)",
                 "correlation on real split C": f"{corr(like, held['mini_exemplar_heldout']):.2f}"},
                {"task": "mini_text", "target": "mini_exemplar", "held-out": "− pixel-PCA distance to the exemplar",
                 "correlation on real split C": f"{corr(like, -np.asarray(held['mini_exemplar_heldout_pca_distance'])):.2f}"}]
        noise = []
        gen = torch.Generator().manual_seed(0)
        for sigma in (0.1, 0.2, 0.4):
            noisy = (images + sigma * torch.randn(images.shape, generator=gen)).clamp(0, 1)
            noise.append({"pixel noise σ (clamped)": sigma,
                          "mean ink added": f"{float((noisy - images).mean()):+.3f}",
                          "Δ mini_bold": f"{float((bold_target(noisy, prompts) - bold_target(images, prompts)).mean()):+.3f}",
                          "Δ mini_exemplar": f"{float((exemplar_target(noisy, prompts) - like).mean()):+.3f}",
                          "Δ HF share": f"{float((hf_share(noisy) - hf_share(images)).mean()):+.3f}"})
        real_hf = float(hf_share(images).mean())
        bold_spread = float(bold_target(images, prompts).std())
    floor = fd_floor(100)
    lines = ["## The tasks", "",
             "**mini_aesthetic** (the aesthetic analogue) asks for bolder digits: its target `mini_bold` is "
             "−((b − c_d)/s_d)², with b the share of the low-passed (σ = 2 px) image above mid-grey, c_d the "
             "97.5th percentile of b among real digits d and s_d their spread. It peaks at 0 where bold real "
             "digits sit and falls on both sides, so it cannot be pushed beyond real digits. **mini_text** (the "
             "alignment analogue) asks the conditioned model for one particular hand: its target "
             "`mini_exemplar` is the cosine to a held-out real exemplar of the prompted digit in the target "
             "classifier's features of a 1-px low-passed image - graded (real digits of the class span "
             "~0.2-0.9), and only the exemplar itself scores 1.",
             "",
             "Held-out evaluators read the same intent with other data (split B), another architecture (an MLP "
             "on 16 × 16 pooled pixels) and another definition; they correlate with their target on real data, "
             "but are not its twin:", "", pd.DataFrame(rows).to_markdown(index=False), "",
             "Clamped zero-mean pixel noise on the real digits of split C - the hack the previous ink target "
             "rewarded (it rose with the added ink) - adds ink and speckle but moves neither target by more than a "
             f"few hundredths: the bold target's spread over real digits is {bold_spread:.2f} "
             "(`tests/test_mini.py` bounds the mean change by 0.01 and the boldness gain per digit by one spread):",
             "",
             pd.DataFrame(noise).to_markdown(index=False), "",
             f"Reference values: HF share (the share of an image's power above 0.25 cycles/pixel, i.e. speckle) "
             f"of real digits {real_hf:.4f}; Fréchet distance (PCA of 4 × 4-pooled pixels, so it does not see "
             f"speckle) between 100 real digits and split C: {floor:.3f} - the floor at n = 100. The log-density "
             "percentile places a sample's exact log-density (under the exact tier's mixture) among the real "
             "held-out digits of split C (50 = a typical real digit). *Beyond real* is the share of samples whose "
             "target attribute exceeds every real digit of the prompted class - for mini_text, samples closer to "
             "the exemplar than any other real digit, i.e. copies of it.", ""]
    return lines


# ----------------------------------------------------------------------------- tables
def main_table(df: pd.DataFrame, ps: pd.DataFrame, model: str, task: str) -> list[str]:
    target, held = TASKS[task]
    runs = df[(df["model"] == model) & (df["task"] == task)]
    if runs.empty:
        return [f"*{model} / {task}: no runs.*", ""]
    rows = []
    for name in ROWS:
        if runs[runs["row"] == name].empty:
            continue
        r = {"method (NFE)": name, "seeds": cell(ps, model, task, name, target)[2],
             f"target {target}": fmt(*cell(ps, model, task, name, target)[:2])}
        for h in held:
            r[h.replace("mini_", "")] = fmt(*cell(ps, model, task, name, h)[:2])
        for q in QUALITY:
            r[q] = fmt(*cell(ps, model, task, name, q)[:2])
        r["beyond real"] = fmt(*cell(ps, model, task, name, f"{ATTRIBUTE[task]}_beyond_real")[:2], digits=2)
        if model == "mini":
            fd = pooled_fd(df, model, task, name)
            r["FD (n)"] = fd
        r["wall s / sample*"] = fmt(*cell(ps, model, task, name, "wall_s")[:2], digits=2)
        rows.append(r)
    return [pd.DataFrame(rows).to_markdown(index=False), "",
            "\\* wall time on a shared 2-core machine with two sweeps running side by side, one thread each: "
            "read it as relative cost. FD (n): samples pooled over seeds, with the real-vs-real floor at that n.",
            ""]


def pooled_fd(df: pd.DataFrame, model: str, task: str, row: str) -> str:
    """FD to real split C of all samples of a configuration pooled over seeds (>= 100), with the floor."""
    import torch

    from .io import load_image
    from .mini.quality import FD_MIN_SAMPLES, fd_floor, fd_to_real
    from .rundir import RunDir

    paths = sorted(df[(df["model"] == model) & (df["task"] == task) & (df["row"] == row)]["run"].unique())
    images = []
    for p in paths:
        run = RunDir(p)
        images += [load_image(run.item_dir(n) / it.output) for n, it in run.items()]
    if len(images) < FD_MIN_SAMPLES:
        return f"— ({len(images)})"
    return f"{fd_to_real(torch.stack(images)):.3f} ({len(images)}; floor {fd_floor(len(images)):.3f})"


def pair_table(df: pd.DataFrame, model: str, task: str) -> list[str]:
    target, held = TASKS[task]
    measures = [(target, +1), (held[0], +1), ("hf_share", -1), ("log_density_percentile", +1)]
    rows = []
    for a, b, _claim in PAIRS:
        if df[(df["model"] == model) & (df["task"] == task) & df["row"].isin([a, b])]["row"].nunique() < 2:
            continue
        r = {"a − b": f"{a} − {b}"}
        for metric, sign in measures:
            d, se, n = paired(df, model, task, a, b, metric)
            r[f"Δ {metric.replace('mini_', '')}"] = f"{fmt(d, se)} ({verdict(d, se, sign)})" if n else "—"
        rows.append(r)
    if not rows:
        return []
    return ["Paired differences a − b (per-seed means over samples paired by seed and index, ± SE over seeds). "
            "Each verdict answers \"is a better than b on this measure?\" (better: lower HF share, higher "
            "everything else) - the paper's claims that NTRK at 25 NFE raises the target and beats the "
            "baselines, that whitening and noise tilt matter, and that the decorrelated variant helps:", "",
            pd.DataFrame(rows).to_markdown(index=False), ""]


def trace_table(ps: pd.DataFrame) -> list[str]:
    rows = []
    for model in ("mini", "mini_exact"):
        for task in TASKS:
            for name in ("NTRK (25)", "NTRK decorrelated (25)"):
                cos, inj, ind, fresh = (cell(ps, model, task, name, m) for m in TRACE)
                if math.isnan(cos[0]):
                    continue
                rows.append({"tier": model, "task": task, "variant": name,
                             "mean cos(W_k, W_k+1)": fmt(*cos[:2]),
                             "‖Σ injected‖": fmt(*inj[:2]), "‖Σ injected‖ if independent": fmt(*ind[:2]),
                             "ratio": f"{inj[0] / ind[0]:.2f}", "‖Σ fresh‖": fmt(*fresh[:2])})
    if not rows:
        return []
    return ["## NTRK's injection across steps", "",
            "Per sample: the mean cosine between consecutive whitened gradients, and the norm of the summed "
            "injected part Σ std_k γ_k W_k against the norm it would have if the steps were independent "
            "(ratio 1) and against the summed fresh part Σ std_k √(1 − γ_k²) ε_k. A ratio above 1 is the "
            "repetition that piles up into a fixed texture; the decorrelated variant whitens a randomly shifted "
            "gradient each step and shifts the result back (`method.decorrelate=true`).", "",
            pd.DataFrame(rows).to_markdown(index=False), ""]


def grids(df: pd.DataFrame, docs: Path, model: str = "mini") -> list[str]:
    """Seed 0's image grid of each configuration, copied under docs/images/mini/ (same prompts and seeds)."""
    from .rundir import RunDir

    out = docs / "images" / "mini"
    out.mkdir(parents=True, exist_ok=True)
    lines = ["## Images", "",
             "Seed 0 of every configuration on the learned tier, with the same prompts and seeds, so "
             "configurations compare by eye: each prompt's two samples stand side by side, digits 0-4 on the top "
             "row and 5-9 on the bottom one.", ""]
    for task in TASKS:
        cells = []
        for name in ROWS:
            runs = sorted(df[(df["model"] == model) & (df["task"] == task) & (df["row"] == name)
                             & (df["seed"] == 0)]["run"].unique())
            if not runs or not RunDir(runs[0]).grid_path.exists():
                continue
            slug = name.split(" (")[0].replace(" ", "_").replace("-", "_").lower()
            dest = out / f"{task}_{slug}.png"
            shutil.copyfile(RunDir(runs[0]).grid_path, dest)
            cells.append((name, dest.relative_to(docs)))
        lines += [f"### {task}", "", "| method | samples (seed 0) |", "|---|---|"]
        lines += [f"| {name} | ![{name}]({path}) |" for name, path in cells]
        lines += [""]
    return lines


def quality_plot(ps: pd.DataFrame, docs: Path) -> list[str]:
    """Target against log-density percentile and HF share, one labelled point per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    for i, task in enumerate(TASKS):
        target = TASKS[task][0]
        for ax, (metric, label) in zip(axes[i], [("log_density_percentile", "log-density percentile among real digits"),
                                                  ("hf_share", "HF share (speckle; log scale)")]):
            for name in ROWS:
                t, q = cell(ps, "mini", task, name, target), cell(ps, "mini", task, name, metric)
                if math.isnan(t[0]) or math.isnan(q[0]):
                    continue
                ax.errorbar(q[0], t[0], xerr=q[1], yerr=t[1], marker="o", capsize=2, label=name)
            ax.set(xlabel=label, ylabel=f"target {target}", title=task)
            if metric == "hf_share":
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = docs / "images" / "mini" / "target_vs_quality.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [f"![target against quality]({path.relative_to(docs)})", ""]


def anomalies() -> list[str]:
    return ["## Two baseline anomalies on an exact Gaussian mixture", "",
            "*RBF.* RBF accepts a step's first proposal whenever its Tweedie reward beats the best seen so far. "
            "Along the lineage it starts from (the best of 20 noises at τ = 1) that reward keeps rising, so 75-92% "
            "of intermediate steps are taken unselected and ~90% of a 500-NFE budget is spent at the last "
            "intermediate time, after the sample's mixture component is fixed. On a two-component mixture with a "
            "linear reward (64 dims, 40 runs) its answers fall in the lower-reward component 0.65 ± 0.08 of the "
            "time against 0.23 under the exact tilted target (SVDD 0.05). This is the reference algorithm's "
            "rollover against the running best, not a porting error: `baselines/rbf.py` follows the reference "
            "code step by step.", "",
            "*Psi-Sampler with NTRK as its proposal (`ntrk_psi_500`).* Each SMC weight carries the proposal "
            "log-ratio, whose spread over particles is √(D(γ²(1 − γ²) + γ⁴/2)) ≈ 19 nats at D = 4,096 and "
            "γ = 0.3 whatever the reward (measured 19.4 on the analytic model; `scripts/diagnose_psi_proposal.py`). "
            "The SMC therefore resamples at 24 of 25 steps with an ESS of ~1.4 of 10, and 97% of resamplings go to "
            "the particle with the largest log-ratio - a reward-blind choice. The row measures one NTRK "
            "trajectory re-drawn each step by that selection, with a final best-of-10, not SMC reweighting "
            "towards the tilted target.", "",
            "`tests/test_tilted_mixture.py` checks that DAS's and Psi-Sampler's weighted particles converge to "
            "the exact tilted mixture as particles grow (component share and mean reward within 4 SE at 128 "
            "particles; an α off by 2x fails by > 10 SE).", ""]


# ----------------------------------------------------------------------------- strength frontiers
#: the target's best value (the gap to it is what the frontier plots put on a log axis)
TARGET_MAX = {"mini_aesthetic": 0.0, "mini_text": 1.0}
FRONTIER_MEASURES = {"mini_aesthetic": ["mini_bold_heldout", "log_density_percentile", "hf_share"],
                     "mini_text": ["mini_exemplar_heldout", "log_density_percentile", "hf_share"]}


def frontier_curves(fr: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per (method, strength): mean ± SE over seeds of every measure (of per-seed means), and NFE."""
    sel = fr[fr["task"] == task]
    seeds = sel.groupby(["frontier", "strength", "nfe", "metric", "seed"])["value"].mean().reset_index()
    g = seeds.groupby(["frontier", "strength", "nfe", "metric"])["value"]
    out = g.agg(mean="mean", sd="std", n="count").reset_index()
    out["se"] = out["sd"] / np.sqrt(out["n"])
    return out


def curve(cv: pd.DataFrame, method: str, target: str, metric: str) -> pd.DataFrame:
    """One method's points as columns t, t_se, y, y_se, strength, sorted by target."""
    a = cv[(cv["frontier"] == method) & (cv["metric"] == target)].set_index("strength")
    b = cv[(cv["frontier"] == method) & (cv["metric"] == metric)].set_index("strength")
    both = pd.DataFrame({"t": a["mean"], "t_se": a["se"], "y": b["mean"], "y_se": b["se"], "n": a["n"]}).dropna(subset=["t", "y"])
    return both.reset_index().sort_values("t")


def at_target(c: pd.DataFrame, level: float) -> tuple[float, float]:
    """A measure at a given target, linearly interpolated between the two points of a curve that bracket it
    (its SE interpolated the same way, as independent points); NaN outside the curve's range."""
    t, y, se = c["t"].to_numpy(), c["y"].to_numpy(), c["y_se"].to_numpy()
    if len(t) < 2 or not (t.min() <= level <= t.max()):
        return math.nan, math.nan
    i = min(int(np.searchsorted(t, level, side="right")), len(t) - 1)
    i = max(i, 1)
    w = 0.0 if t[i] == t[i - 1] else (level - t[i - 1]) / (t[i] - t[i - 1])
    return float((1 - w) * y[i - 1] + w * y[i]), float(math.sqrt(((1 - w) * se[i - 1]) ** 2 + (w * se[i]) ** 2))


def frontier_section(fr: pd.DataFrame, docs: Path) -> list[str]:
    if fr.empty:
        return []
    lines = ["## Strength frontiers (learned tier)", "",
             "Each method with its own strength swept (`experiment=mini_frontier*`, 3 seeds x 10 prompts; the "
             "default point comes from the main table's runs, 5 seeds x 20 samples): NTRK's γ (fixed values, and "
             "auto), DPS's scale, FreeDoM's ρ, DAS's temperature α (smaller = stronger tilt) and Best-of-N's N. A "
             "method is better than another when it reaches the same target with better held-out and quality "
             "measures, so the tables below compare them at matched target: each measure is interpolated along "
             "a method's curve (sorted by target) at a few target levels that most methods reach. The "
             "comparison is unpaired (different runs), with the interpolated SEs added in quadrature; the "
             "target's own SE is left out.", ""]
    curves = {task: frontier_curves(fr, task) for task in TASKS}
    lines += frontier_plot(curves, docs)
    for task, cv in curves.items():
        target = TASKS[task][0]
        if cv.empty:
            continue
        measures = FRONTIER_MEASURES[task]
        rows = []
        for method, (_, _, knob) in FRONTIERS.items():
            for _, r in curve(cv, method, target, measures[0]).iterrows():
                row = {"method": method, "strength": f"{knob} = {r['strength']}", "seeds": int(r["n"]),
                       "NFE": int(cv[(cv["frontier"] == method) & (cv["strength"] == r["strength"])]["nfe"].iloc[0]),
                       f"target {target}": fmt(r["t"], r["t_se"])}
                for m in measures + [f"{ATTRIBUTE[task]}_beyond_real"]:
                    c = cv[(cv["frontier"] == method) & (cv["strength"] == r["strength"]) & (cv["metric"] == m)]
                    row[m.replace("mini_", "").replace(f"{ATTRIBUTE[task]}_", "")] = (
                        fmt(float(c["mean"].iloc[0]), float(c["se"].iloc[0])) if len(c) else "—")
                rows.append(row)
        lines += [f"### {task}", "", pd.DataFrame(rows).to_markdown(index=False), ""]
        lines += matched_target_table(cv, task)
    lines += gamma_default(curves)
    return lines


def gamma_default(curves: dict[str, pd.DataFrame]) -> list[str]:
    """NTRK's default strength, decided by measurement: gamma = auto (mini_paper) against the paper's 0.3
    (mini_frontier), unpaired, on every measure of the frontier tables."""
    rows = []
    for task, cv in curves.items():
        for m in [TASKS[task][0]] + FRONTIER_MEASURES[task]:
            pick = lambda g: cv[(cv["frontier"] == "NTRK (25)") & (cv["strength"] == g) & (cv["metric"] == m)]  # noqa: E731
            a, b = pick("auto"), pick("0.3")
            if a.empty or b.empty:
                continue
            d = float(a["mean"].iloc[0] - b["mean"].iloc[0])
            se = math.hypot(float(a["se"].iloc[0]), float(b["se"].iloc[0]))
            sign = -1 if m == "hf_share" else +1
            rows.append({"task": task, "measure": m.replace("mini_", ""), "γ = auto": fmt(a["mean"].iloc[0], a["se"].iloc[0]),
                         "γ = 0.3": fmt(b["mean"].iloc[0], b["se"].iloc[0]),
                         "auto − 0.3": f"{fmt(d, se)} ({verdict(d, se, sign)})"})
    if not rows:
        return []
    return ["### NTRK's default strength: γ = auto or the paper's 0.3", "",
            "Unpaired (auto: the main table's 5 seeds x 20 samples; 0.3: the frontier's 3 seeds x 10), verdict: "
            "is auto better on this measure?", "", pd.DataFrame(rows).to_markdown(index=False), ""]


def matched_levels(cv: pd.DataFrame, task: str) -> list[float]:
    """Three target levels inside the range most methods span (between the medians of their minima and maxima)."""
    target = TASKS[task][0]
    t = cv[cv["metric"] == target].groupby("frontier")["mean"]
    lo, hi = float(t.min().median()), float(t.max().median())
    if not lo < hi:
        return []
    return [float(v) for v in np.linspace(lo, hi, 5)[1:4]]


def matched_target_table(cv: pd.DataFrame, task: str) -> list[str]:
    target, measures = TASKS[task][0], FRONTIER_MEASURES[task]
    signs = {measures[0]: +1, "log_density_percentile": +1, "hf_share": -1}
    rows, verdicts = [], []
    for level in matched_levels(cv, task):
        ntrk = {m: at_target(curve(cv, "NTRK (25)", target, m), level) for m in measures}
        for method in FRONTIERS:
            vals = {m: at_target(curve(cv, method, target, m), level) for m in measures}
            if all(math.isnan(v[0]) for v in vals.values()):
                continue
            rows.append({f"at {target} =": f"{level:.3g}", "method": method,
                         **{m.replace("mini_", ""): fmt(*vals[m]) for m in measures}})
            if method == "NTRK (25)":
                continue
            r = {f"at {target} =": f"{level:.3g}", "NTRK −": method}
            for m in measures:
                d, se = ntrk[m][0] - vals[m][0], math.hypot(ntrk[m][1], vals[m][1])
                r[f"Δ {m.replace('mini_', '')}"] = "—" if math.isnan(d) else f"{fmt(d, se)} ({verdict(d, se, signs[m])})"
            verdicts.append(r)
    if not rows:
        return ["*No target level is reached by two methods.*", ""]
    return [f"At matched {target} (interpolated; — = the method's curve does not reach that level):", "",
            pd.DataFrame(rows).to_markdown(index=False), "",
            "NTRK against each method at the same target (verdict: is NTRK better on this measure?):", "",
            pd.DataFrame(verdicts).to_markdown(index=False), ""]


def frontier_plot(curves: dict[str, pd.DataFrame], docs: Path) -> list[str]:
    """Held-out and quality measures against the target gap (log axis), one labelled curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    labels = {"log_density_percentile": "log-density percentile among real digits", "hf_share": "HF share (speckle)",
              "mini_bold_heldout": "held-out stroke width", "mini_exemplar_heldout": "held-out exemplar cosine"}
    for i, (task, cv) in enumerate(curves.items()):
        target = TASKS[task][0]
        for ax, metric in zip(axes[i], FRONTIER_MEASURES[task]):
            for method, (_, _, knob) in FRONTIERS.items():
                c = curve(cv, method, target, metric)
                if c.empty:
                    continue
                gap = (TARGET_MAX[task] - c["t"]).clip(lower=1e-5)
                line = ax.errorbar(gap, c["y"], yerr=c["y_se"], marker="o", ms=4, capsize=2, label=method)
                for g, y, s in zip(gap, c["y"], c["strength"]):
                    ax.annotate(str(s), (g, y), textcoords="offset points", xytext=(3, 3), fontsize=6,
                                color=line[0].get_color())
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.set(xlabel=f"{TARGET_MAX[task]:g} − {target} (log; right = higher target)", ylabel=labels[metric],
                   title=task)
            ax.grid(alpha=0.3, which="both")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(FRONTIERS), fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = docs / "images" / "mini" / "frontiers.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [f"![strength frontiers]({path.relative_to(docs)})", "",
            "Points are labelled with their strength (γ, scale, ρ, α, N); error bars are ± SE over seeds.", ""]


def build(root: Path, tables_dir: Path, out: Path) -> str:
    df, fr = load(root)
    ps = per_seed_means(df)
    docs = out.parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["# Results on the mini suite", "",
             f"Generated by `make tables SUITE=mini` (scripts/mini_paper.py) from the run records under `{root}` "
             f"(code at commit {commit or 'unknown'}); per-configuration tables and plots are in `{tables_dir}`. "
             "Do not edit by hand.", "",
             "The mini suite is the paper in miniature: a learned flow (the FLUX analogue, `model=mini`) and an "
             "exact Gaussian-mixture flow (`model=mini_exact`) on 4 × 32 × 32 digit latents (4,096 dims), targets "
             "read from a low-passed image, held-out evaluators trained on another split with another "
             "architecture, and quality measures no target sees. Values: mean over seeds of per-seed means, ± SE "
             "over seeds.", ""]
    lines += task_checks()
    lines += ["The methods run at their defaults; NTRK and its controls use γ = auto, which holds the "
              "reward-aligned push γ cos(W(g), g) √D at the paper's value, so the raw-gradient control (cos = 1) "
              "runs at γ = 7.68 / 64 ≈ 0.12 while NTRK's whitened direction (cos ≈ 0.1-0.3 here) gets γ ≈ 0.4-0.95: "
              "the same push along g, far more noise-like structure beside it. The mean-shift control moves NTRK's "
              "expected injection std γ W(g) into the kernel mean.", ""]
    for model, title in (("mini", "Learned tier"), ("mini_exact", "Exact tier (with the baselines)")):
        for task in TASKS:
            lines += [f"## {title}: {task}", ""] + main_table(df, ps, model, task) + pair_table(df, model, task)
    lines += quality_plot(ps, docs)
    lines += frontier_section(fr, docs)
    lines += trace_table(ps)
    lines += grids(df, docs)
    lines += anomalies()
    lines += ["## Not in this run", "",
              "Psi-Sampler's temperature frontier (500 NFE per sample with a gradient at every MCMC step: ~20x an "
              "NTRK run here), the 500-NFE rows and the whitening-operator ablation are configured "
              "(`experiment=mini_ablation`, `mini_gamma_auto`; `python scripts/mini_paper.py --only ...`) but were "
              "not part of this run.", ""]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ntrk_bench.report")
    ap.add_argument("--root", default="results/runs")
    ap.add_argument("--tables", default="results/mini")
    ap.add_argument("--out", default="docs/RESULTS.md")
    a = ap.parse_args(argv)
    build(Path(a.root), Path(a.tables), Path(a.out))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
