"""NFE budgets: a method's particle count for a total budget, and the paper's ledger of table rows.

``budget_params(method, nfe, steps, params)`` is the one place where a budget (``nfe=500`` on the command
line) becomes method parameters: particles (or SVDD's candidates, DNO's updates) = what the budget buys
after the method's fixed costs, per what one particle costs. The paper's table rows are the Hydra group
``conf/row/`` (method, ``nfe``, steps and any reference setting the row implies); tests compose every
row, *measure* its NFE, and check that every row of ``paper_results.csv`` has one. ``ledger_row`` keys a
run as the paper's tables do. Rows with no particles/steps (Table 11, counting) follow the counting
configs of the reference code: 40 particles x 25 steps; Psi-Sampler 20 particles, 5 chains x (50 + 50).
"""
from __future__ import annotations

from dataclasses import dataclass

#: the parameter a budget sets, per method (every other method: ``particles``)
BUDGET_KEY = {"svdd": "candidates", "dno": "iterations"}


def freedom_nfe_per_particle(steps: int, travel=(0.4, 0.7), repeats: int = 3) -> int:
    """One FreeDoM trajectory: every step once, travel steps ``repeats`` times (baselines/freedom.py)."""
    return steps + (repeats - 1) * sum(travel[0] <= k / steps < travel[1] for k in range(steps))


def budget_params(method: str, nfe: int, steps: int, params: dict | None = None) -> dict:
    """Method parameters that spend exactly ``nfe`` at ``steps`` kernel steps; ValueError if none do."""
    p = dict(params or {})
    fixed, per = 0, steps
    if method == "freedom":
        per = freedom_nfe_per_particle(steps, p.get("travel", (0.4, 0.7)), p.get("repeats", 3))
    elif method == "psi":  # pCNL chains cost chains x (burn-in + MCMC steps) before SMC (baselines/psi.py)
        fixed = p.get("chains", 5) * (p.get("burn_in", 25) + p.get("mcmc_steps", 25))
    n, rest = divmod(nfe - fixed, per)
    if n < 1 or rest:
        raise ValueError(f"nfe={nfe} cannot be spent exactly by {method} at {steps} steps "
                         f"({fixed} fixed + a multiple of {per} NFE per particle)")
    key = BUDGET_KEY.get(method, "particles")
    out = {key: n}
    if method == "rbf":
        out["budget"] = nfe
    if method == "base" and n > 1:
        raise ValueError(f"nfe={nfe} at {steps} steps is Best-of-{n}: use method=bon")
    return out


@dataclass(frozen=True)
class Row:
    method: str
    augment: str = ""
    particles: int = 1
    steps: int | str = 25
    nfe: int = 25


def ledger_row(method: str, params: dict, steps: int, nfe: int) -> Row:
    """A run's row in the paper's ledger, keyed as ``paper_results.csv`` is (dagger = ``bon`` augment)."""
    if method == "psi":  # steps "MCMC+SMC"; NTRK's kernel in the scaffold is the paper's "NTRK, 25+25"
        label = f"{params.get('mcmc_steps', 25)}+{steps}"
        if params.get("proposal") == "ntrk":
            return Row("ntrk", "psi", params.get("particles", 10), label, nfe)
        return Row("psi", "", params.get("particles", 10), label, nfe)
    particles = params.get(BUDGET_KEY.get(method, "particles"), 1) if method != "dno" else 1
    dagger = method in ("dps", "freedom", "ntrk") and particles > 1
    return Row(method, "bon" if dagger else "", particles, steps, nfe)


def paper_rows(csv_path) -> list[Row]:
    """The distinct ledger rows of the paper's results table (blank particles/steps: 40 x 25)."""
    import pandas as pd

    df = pd.read_csv(csv_path, dtype=str).fillna("")
    rows = set()
    for r in df[["method", "augment", "particles", "steps", "nfe"]].drop_duplicates().itertuples(index=False):
        particles = int(r.particles) if r.particles else 40
        steps = r.steps if r.steps else "25"
        rows.add((r.method, r.augment, particles, steps, int(r.nfe)))
    return [Row(m, a, p, s if "+" in s else int(s), n) for m, a, p, s, n in sorted(rows)]
