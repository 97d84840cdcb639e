"""Tables and plots from finished runs: ``make tables`` (``python -m ntrk_bench.tables``).

Every run directory (``record.json`` + ``eval/*.json``) becomes rows of one long table, one per (run,
sample, metric); a configuration reached by two sweeps (same config hash) counts once. Cells are the mean and standard error over prompts and seeds (per-run metrics such as
FD: over seeds). Paper tables (``paper_results.csv``, ``paper_ablations.csv``) are rebuilt row by row
with the paper's value and our difference beside each cell; rows not run yet show as missing. Runs of
other models or tasks (the mini suite) get tables of their own. Writes CSV, Markdown and LaTeX to
``results/tables/`` and plots (reward vs NFE; target vs held-out) as PNG.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from .rundir import find_runs

#: our metric names -> the paper's (paper_results.csv, column "metric"), only where both are on the same scale:
#: LAION aesthetic 1-10; CountGD accuracy in percent (rewards/countgd.py); VBench dimensions on VBench's 0-1
#: scale (rewards/external.py rescales imaging quality's per-video MUSIQ scores). Names already equal are the
#: same quantity: pickscore and hpsv2 raw cosines, imagereward normalised, vqascore P("Yes"), countgd_mae,
#: videoreward Overall. Not mapped: t2icount, our target, is -sum smooth-L1 (a reward), the paper's t2icount_loss
#: the loss itself (+sum), so the two are not compared.
METRIC_NAMES = {"laion_aesthetic": "aesthetic", "countgd_accuracy": "countgd_acc", "t2icount": "t2icount_loss", **{
    f"vbench_{d}": d for d in ("subject_consistency", "background_consistency", "motion_smoothness",
                               "dynamic_degree", "aesthetic_quality", "imaging_quality")}}
#: metrics whose sign the paper flips: our T2I-Count target is the reward -sum smooth-L1; the paper reports the loss
METRIC_SIGNS = {"t2icount": -1.0}
#: our model family -> the paper's model column
FAMILIES = {"flux": "flux", "zimage": "zimage", "wan": "wan2.1"}
#: our whitening options -> the paper's ablation labels (Figs. 13, 14)
WHITENING_LABELS = {"fig13_components": {"twoos": "whitening=2os", "tiles": "whitening=2os+tile",
                                         "full": "whitening=2os+tile+domains"},
                    "fig14_operators": {"identity": "whitening=identity", "norm": "whitening=norm",
                                        "wgnc": "whitening=wgnc", "full": "whitening=ours"}}
#: Table 2 = the 500-NFE rows of Tables 14 and 15 with NTRK at 25 NFE
TABLE2 = {("base", 25), ("bon", 500), ("dps", 500), ("freedom", 533), ("svdd", 500), ("rbf", 500), ("das", 500),
          ("psi", 500), ("ntrk", 25)}
KEYS = ["model", "method", "augment", "particles", "steps", "nfe"]
CONFIG = KEYS + ["gamma", "whitening", "variant"]  # everything that makes two runs different configurations


def collect(root: Path) -> pd.DataFrame:
    """One row per (run, sample, metric); per-run metrics have sample -1."""
    rows, seen = [], set()
    for run in find_runs([root]):
        rec = run.read_summary()
        if rec.config_hash in seen:  # the same configuration reached by two sweeps
            continue
        seen.add(rec.config_hash)
        cfg = rec.config
        base = {"run": str(run.path), "family": rec.family, "model": rec.model, "task": rec.task,
                "target": METRIC_NAMES.get(rec.target, rec.target), "display": rec.display_name,
                "seed": rec.seed, "experiment": rec.experiment, **rec.ledger, "gamma": cfg["method"].get("gamma"),
                "scale": cfg["method"].get("scale"), "variant": variant(cfg["method"]), "whitening": rec.whitening,
                "option": cfg["method"].get("name", rec.method)}
        metrics = dict(rec.per_sample)
        for ev in run.evals():
            metrics |= ev.scores
        for metric, values in metrics.items():
            name, sign = METRIC_NAMES.get(metric, metric), METRIC_SIGNS.get(metric, 1.0)
            def signed(v):
                return float("nan") if v is None else sign * v  # null: an undefined metric

            if isinstance(values, list):
                rows += [base | {"sample": i, "metric": name, "value": signed(v)} for i, v in enumerate(values)]
            else:
                rows.append(base | {"sample": -1, "metric": name, "value": signed(values)})
    return pd.DataFrame(rows)


def variant(method: dict) -> str:
    """A method's settings other than its budget, as one string: configurations differing in any of them
    (DPS's scale, DAS's alpha, ...) are different rows."""
    budget = {"name", "_target_", "whitening", "particles", "candidates", "iterations", "budget"}
    return ",".join(f"{k}={v}" for k, v in sorted(method.items()) if k not in budget)


def summarise(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, standard error and count per (keys, metric)."""
    g = df.groupby(keys + ["metric"], dropna=False)["value"]
    out = g.agg(mean="mean", sd="std", n="count").reset_index()
    out["se"] = out["sd"] / out["n"].pow(0.5)
    return out.drop(columns="sd")


def fmt(mean, se) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.4g}" if se is None or math.isnan(se) else f"{mean:.4g} ± {se:.2g}"


def label(r) -> str:
    dagger = "†" if r["augment"] == "bon" else " (Psi scaffold)" if r["augment"] == "psi" else ""
    return f"{r['method']}{dagger} {r['particles']}x{r['steps']}"


def write(table: pd.DataFrame, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(table.to_markdown(index=False) + "\n")
    (out / f"{name}.tex").write_text(table.to_latex(index=False, escape=True))


def paper_table(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's rows (in its order) with our mean ± SE, the paper's value and the difference per metric.
    Rows without particles/steps in the paper (Table 11) match on (method, NFE)."""
    paper = paper.copy()
    metrics = list(dict.fromkeys(paper["metric"]))
    rows = []
    for key, prow in paper.groupby(["method", "augment", "particles", "steps", "nfe"], sort=False, dropna=False):
        method, augment, particles, steps, nfe = key
        m = ours[(ours["method"] == method) & (ours["nfe"] == int(nfe))]
        if particles:
            m = m[(m["particles"].astype(str) == particles) & (m["steps"].astype(str) == steps)]
        row = {"method": method + ("†" if augment == "bon" else " (Psi scaffold)" if augment == "psi" else ""),
               "particles": particles, "steps": steps, "nfe": int(nfe)}
        models = sorted(m["model"].unique()) or [None]
        for model in models:
            mm = m[m["model"] == model] if model else m
            r = dict(row, model=model or "—")
            for metric in metrics:
                c = mm[mm["metric"] == metric]
                mean = float(c["mean"].iloc[0]) if len(c) else float("nan")
                se = float(c["se"].iloc[0]) if len(c) else float("nan")
                pv = float(prow[prow["metric"] == metric]["value"].iloc[0])
                r[metric] = fmt(mean, se)
                r[f"{metric} (paper)"] = f"{pv:.4g}"
                r[f"{metric} (diff)"] = "—" if math.isnan(mean) else f"{mean - pv:+.3g}"
            r["n"] = int(mm["n"].max()) if len(mm) else 0
            rows.append(r)
    return pd.DataFrame(rows)


def own_table(ours: pd.DataFrame, target: str) -> pd.DataFrame:
    """A table of every configuration run (no paper values): target first, then the other metrics, and
    wall time per sample."""
    metrics = [target] + sorted(m for m in ours["metric"].unique() if m not in (target, "nfe", "grad_nfe", "wall_s"))
    rows = []
    cols = CONFIG
    for key, g in ours.groupby(cols, dropna=False, sort=True):
        r = dict(zip(cols, key))
        for metric in metrics + ["wall_s"]:
            c = g[g["metric"] == metric]
            r[metric] = fmt(float(c["mean"].iloc[0]), float(c["se"].iloc[0])) if len(c) else "—"
        r["n"] = int(g["n"].max())
        rows.append(r)
    return pd.DataFrame(rows)


def plots(df: pd.DataFrame, out: Path, name: str, target: str, held_out: list[str]) -> None:
    """Target reward vs NFE per method, and target vs each held-out metric (the frontier), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(df, CONFIG)
    t = s[s["metric"] == target]
    wall = t.merge(s[s["metric"] == "wall_s"], on=CONFIG, suffixes=("", "_wall"))
    for x, xlabel, data, suffix in [("nfe", "NFE per sample", t, "nfe"),
                                    ("mean_wall", "wall time per sample (s)", wall, "wall")]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method, g in data.groupby("method"):
            g = g.sort_values(x)
            ax.errorbar(g[x], g["mean"], yerr=g["se"], marker="o", ls="", label=method, capsize=2)
        ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel=target, title=f"{name}: target vs {'NFE' if x == 'nfe' else 'wall time'}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{name}_reward_vs_{suffix}.png", dpi=120)
        plt.close(fig)
    for h in held_out:
        hh = s[s["metric"] == h]
        if hh.empty:
            continue
        both = t.merge(hh, on=CONFIG, suffixes=("_t", "_h"))
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method, g in both.groupby("method"):
            ax.errorbar(g["mean_t"], g["mean_h"], xerr=g["se_t"], yerr=g["se_h"], fmt="o", label=method, capsize=2)
        ax.set(xlabel=f"{target} (target)", ylabel=f"{h} (held out)", title=name)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{name}_frontier_{h}.png", dpi=120)
        plt.close(fig)


def build(root: Path, out: Path, paper_dir: Path | None, suite: str = "all") -> list[str]:
    """Every table and plot the finished runs allow; returns the names written."""
    df = collect(root)
    if df.empty:
        raise SystemExit(f"error: no finished runs under {root}")
    mini = df["family"].isin(["mini", "mini_exact", "gmm"])
    df = df[mini] if suite == "mini" else df[~mini] if suite == "paper" else df
    written = []
    for (family, task), d in df.groupby(["family", "task"]):
        s = summarise(d, CONFIG)
        tgt, name = d["target"].iloc[0], f"{task}_{family}"
        write(own_table(s, tgt), out, name)
        held = [m for m in s["metric"].unique() if m not in (tgt, "nfe", "grad_nfe", "wall_s")]
        plots(d, out, name, tgt, held)
        written.append(name)
        if paper_dir is None or family not in FAMILIES:
            continue
        main = summarise(d[d["gamma"].isna() | (d["whitening"].isin([None, "full", "full_wan"]))], KEYS)
        written += paper_tables(main, s, d, paper_dir, FAMILIES[family], task, out)
    return written


def paper_tables(main: pd.DataFrame, s: pd.DataFrame, d: pd.DataFrame, paper_dir: Path, family: str, task: str,
                 out: Path) -> list[str]:
    written = []
    res = pd.read_csv(paper_dir / "paper_results.csv", dtype=str).fillna("")
    res = res[(res["model"] == family) & (res["task"] == task)]
    for table, p in res.groupby("table"):
        write(paper_table(main, p), out, f"{table}")
        written.append(table)
        if table in ("table14", "table15"):
            part = p[[(m, int(n)) in TABLE2 for m, n in zip(p["method"], p["nfe"])] |
                     ((p["method"] == "ntrk") & (p["nfe"] == "500") & (p["particles"] == "20"))]
            write(paper_table(main, part), out, f"table2_{task}")
            written.append(f"table2_{task}")
    abl = pd.read_csv(paper_dir / "paper_ablations.csv", dtype=str).fillna("")
    abl = abl[(abl["model"] == family) & (abl["task"] == task)]
    base = summarise(d[d["method"] == "base"], ["metric"]).assign(key="whitening=base")
    for table, p in abl.groupby("table"):
        if table == "fig7_lambda":
            ours = summarise(d[(d["method"] == "ntrk") & (d["nfe"] == 25) & (d["whitening"] == "full")], ["gamma"])
            ours["key"] = "lambda=" + ours["gamma"].map(lambda g: f"{g:g}")
        else:
            labels = WHITENING_LABELS[table]
            ours = summarise(d[(d["method"] == "ntrk") & (d["nfe"] == 25) & (d["gamma"] == 0.3)], ["whitening"])
            ours["key"] = ours["whitening"].map(labels)
            ours = pd.concat([ours, base])
        rows = []
        for key, q in p.groupby("augment", sort=False):
            r = {"setting": key}
            for _, pr in q.iterrows():
                c = ours[(ours["key"] == key) & (ours["metric"] == pr["metric"])]
                r[pr["metric"]] = fmt(float(c["mean"].iloc[0]), float(c["se"].iloc[0])) if len(c) else "—"
                r[f"{pr['metric']} (paper)"] = f"{float(pr['value']):.4g}"
            rows.append(r)
        write(pd.DataFrame(rows), out, table)
        written.append(table)
    return written


#: the paper's reported numbers, shipped with the package
PAPER_DIR = Path(__file__).resolve().parent / "data" / "paper"


def paper_rows(csv_path: Path = PAPER_DIR / "paper_results.csv") -> list:
    """The distinct ledger rows of the paper's results table (blank particles/steps: 40 x 25, the counting
    configs of the reference code)."""
    from .method import Row

    df = pd.read_csv(csv_path, dtype=str).fillna("")
    rows = set()
    for r in df[["method", "augment", "particles", "steps", "nfe"]].drop_duplicates().itertuples(index=False):
        particles = int(r.particles) if r.particles else 40
        steps = r.steps if r.steps else "25"
        rows.add((r.method, r.augment, particles, steps, int(r.nfe)))
    return [Row(m, a, p, s if "+" in s else int(s), n) for m, a, p, s, n in sorted(rows)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ntrk_bench.tables", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="results/runs")
    ap.add_argument("--out", default="results/tables")
    ap.add_argument("--suite", choices=["all", "paper", "mini"], default="all")
    ap.add_argument("--paper", default=str(PAPER_DIR), help="directory of paper_results.csv and paper_ablations.csv")
    args = ap.parse_args(argv)
    paper = Path(args.paper) if (Path(args.paper) / "paper_results.csv").exists() else None
    if paper is None:
        print(f"note: no paper tables at {args.paper}; writing our tables only")
    names = build(Path(args.root), Path(args.out), paper, args.suite)
    print(f"wrote {len(names)} tables to {args.out}: {', '.join(names)}")


if __name__ == "__main__":
    main()
