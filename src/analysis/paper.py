"""The paper's published numbers (paper_values.csv), where the paper disagrees with itself, and
our numbers beside the paper's.

paper_values.csv is the only file of typed numbers in the analysis: Gan, Li, Luo, "To Intervene or
Not: Guiding Inference-time Alignment with Probabilistic Model Blending", ACL 2026, one published
number per row (artefact, pair, benchmark, method, tau, alpha, subset, metric, value, note). It is
shown beside our results, labelled as the paper's; nothing of ours is computed from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PAPER_VALUES = Path(__file__).with_name("paper_values.csv")
KEY = ["pair", "benchmark", "method", "tau", "alpha", "subset", "metric"]


def load_paper_values(path: Path = PAPER_VALUES) -> pd.DataFrame:
    """The paper's numbers; `value` as float, `decimals` = how many digits the paper printed."""
    values = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False)
    values["decimals"] = values["value"].map(lambda v: len(v.split(".")[1]) if "." in v else 0)
    values["value"] = values["value"].astype(float)
    return values


def _tolerance(decimals_a: int, decimals_b: int) -> float:
    """Half a unit of the coarser printed rounding: two roundings of one number differ by at most this."""
    return 0.5 * 10.0 ** -min(decimals_a, decimals_b) + 1e-9


def disagreements(values: pd.DataFrame) -> pd.DataFrame:
    """Places where the paper prints different numbers for the same setting.

    - the same (pair, benchmark, method, tau, alpha, subset, metric) in two artefacts (or twice in
      one) with values further apart than their rounding allows;
    - Figure 2's delta against Table 1's NUDGING minus base score (both on the 100-sample subsets);
    - the same setting on the 100-sample subset and on the full set differing by more than 0.25
      (not a contradiction by itself: different samples; docs/protocols.md says the XSTest scorer
      changed between them)."""
    rows = []
    # Table 5 prints its (tau 0.4, alpha auto) row twice; one copy of each printed number is enough
    values = values.drop_duplicates(["artefact", *KEY, "value"])
    for key, group in values.groupby(KEY, sort=False):
        records = group.to_dict("records")
        for i, a in enumerate(records):
            for b in records[i + 1 :]:
                if abs(a["value"] - b["value"]) > _tolerance(a["decimals"], b["decimals"]):
                    rows.append(_row("the same setting printed with different numbers", a, b))
    t1 = values[(values["artefact"] == "table1") & (values["metric"] == "score")]
    for _, d in values[values["artefact"] == "figure2"].iterrows():
        nudging = t1[(t1["pair"] == d["pair"]) & (t1["benchmark"] == d["benchmark"]) & (t1["method"] == "nudging")]
        base = t1[(t1["pair"] == d["pair"]) & (t1["benchmark"] == d["benchmark"]) & (t1["method"] == "base")]
        if len(nudging) and len(base):
            implied = nudging["value"].iloc[0] - base["value"].iloc[0]
            if abs(implied - d["value"]) > 0.01 + 1e-9:  # each of the three numbers is rounded to 0.01
                rows.append(
                    {
                        "kind": "Figure 2 delta vs Table 1 (NUDG. - Base)",
                        "pair": d["pair"],
                        "benchmark": d["benchmark"],
                        "method": "nudging",
                        "setting": "subset 100",
                        "first": f"figure2 delta {d['value']:.2f}",
                        "second": f"table1 {implied:.2f}",
                    }
                )
    scores = values[values["metric"] == "score"]
    for key, group in scores.groupby(["pair", "benchmark", "method", "tau", "alpha"], sort=False):
        sub, full = group[group["subset"] == "100"], group[group["subset"] == "full"]
        if len(sub) and len(full) and abs(sub["value"].iloc[0] - full["value"].iloc[0]) > 0.25:
            rows.append(
                {
                    "kind": "100-sample subset vs full set differ by more than 0.25",
                    "pair": key[0],
                    "benchmark": key[1],
                    "method": key[2],
                    "setting": _setting(sub.iloc[0], subset=False),
                    "first": f"{sub['artefact'].iloc[0]} (n=100) {_printed(sub.iloc[0])}",
                    "second": f"{full['artefact'].iloc[0]} (full) {_printed(full.iloc[0])}",
                }
            )
    return pd.DataFrame(rows, columns=["kind", "pair", "benchmark", "method", "setting", "first", "second"])


def _setting(r, subset=True) -> str:
    parts = [
        f"tau {r['tau']}" if r["tau"] else "",
        f"alpha {r['alpha']}" if r["alpha"] else "",
        f"subset {r['subset']}" if subset and r["subset"] else "",
    ]
    return ", ".join(p for p in parts if p)


def _printed(r) -> str:
    """A value as the paper printed it (its number of decimals)."""
    return f"{r['value']:.{r['decimals']}f}"


def _row(kind, a, b) -> dict:
    return {
        "kind": kind,
        "pair": a["pair"],
        "benchmark": a["benchmark"],
        "method": a["method"],
        "setting": _setting(a) + f", {a['metric']}",
        "first": f"{a['artefact']} {_printed(a)}",
        "second": f"{b['artefact']} {_printed(b)}",
    }


def beside(ours: pd.DataFrame, values: pd.DataFrame, artefact: str) -> pd.DataFrame:
    """Our numbers next to the paper's for one artefact, on the keys both have.

    `ours` has columns pair, benchmark, method, metric, ours (and optionally tau, alpha, ours_n,
    ours_setting). Columns of the result: pair, benchmark, method, metric, ours, paper, paper_note."""
    paper = values[values["artefact"] == artefact].copy()
    on = ["pair", "benchmark", "method", "metric"]
    if {"tau", "alpha"} <= set(ours.columns) and artefact == "table5":
        on += ["tau", "alpha"]
        ours = ours.assign(tau=ours["tau"].map(lambda t: f"{t:g}" if isinstance(t, float) and np.isfinite(t) else ""))
    merged = ours.merge(paper.rename(columns={"value": "paper", "note": "paper_note"}), on=on, how="inner")
    keep = [
        c
        for c in [
            "pair",
            "benchmark",
            "method",
            "tau",
            "alpha",
            "metric",
            "ours",
            "ours_n",
            "paper",
            "subset",
            "paper_note",
        ]
        if c in merged.columns
    ]
    return merged[keep].rename(columns={"subset": "paper_subset"})
