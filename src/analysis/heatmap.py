"""Figure 2: NUDGING minus base score, one cell per (pair, benchmark).

    python -m analysis.heatmap [--results results] [--out results/analysis] [--n 100] [--protocol ours]

For each benchmark, the base and NUDGING runs of its chosen setting (the one with the most runs,
subsets before full sets; or the one named by --n/--protocol); NUDGING at tau 0.4 when several taus
are stored. A cell without both runs is missing: empty in the CSV, grey hatched "n/a" in the figure,
never 0. JustEval-Safe's delta is on the judge's 1-5 scale and gets its own colour scale; a
JustEval-Safe run without a judge is left out (it stored a refusal rate, not a safety score).

Writes figure2.csv (pair, benchmark, base_score, guided_score, delta), figure2.png/.pdf and
figure2_notes.md (settings and what was left out).
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle

from . import cli, labels, select, write
from .load import load_runs

COLUMNS = ["pair", "benchmark", "base_score", "guided_score", "delta"]
DEFAULT_TAU = 0.4


def pick_guided(runs: pd.DataFrame, notes: list, what: str) -> pd.Series | None:
    """The NUDGING run of one cell: tau 0.4 if stored, else the newest; notes the others."""
    if runs.empty:
        return None
    at_default = runs[np.isclose(runs["tau"].astype(float), DEFAULT_TAU)]
    chosen = (at_default if len(at_default) else runs).sort_values("created_at").iloc[-1]
    if len(runs) > 1:
        notes.append(
            f"{what}: {len(runs)} NUDGING runs (tau {', '.join(f'{t:g}' for t in sorted(runs['tau']))}); "
            f"used tau {chosen['tau']:g}"
        )
    return chosen


def compute(
    frame: pd.DataFrame,
    n: str | None = None,
    protocol: str | None = None,
    method: str = "nudging",
    notes: list | None = None,
    settings: list | None = None,
) -> pd.DataFrame:
    """figure2.csv: every stored pair x the six benchmarks (and any other stored), missing as NaN.

    `notes` and `settings`, when given, receive what was left out and the setting of each benchmark."""
    notes = [] if notes is None else notes
    frame = select.filter_runs(frame, n, protocol)
    runs = frame[frame["method"].isin(["base", method])]
    notes += select.excluded_notes(runs)
    usable = runs[runs["score"].notna()]
    chosen = select.choose_settings(usable, prefer_full=False)
    if settings is not None:
        settings += select.describe_chosen(usable, chosen)
    usable = select.in_chosen_settings(usable, chosen, notes=notes, what="figure 2 ")
    pairs = labels.order_pairs(runs["pair"])
    benchmarks = labels.order_benchmarks(list(labels.BENCHMARKS) + list(runs["benchmark"]))
    rows = []
    for pair in pairs:
        for benchmark in benchmarks:
            cell = usable[(usable["pair"] == pair) & (usable["benchmark"] == benchmark)]
            base = cell[cell["method"] == "base"].sort_values("created_at")
            guided = pick_guided(cell[cell["method"] == method], notes, f"{pair}/{benchmark}")
            base_score = base["score"].iloc[-1] if len(base) else math.nan
            guided_score = guided["score"] if guided is not None else math.nan
            rows.append(
                {
                    "pair": pair,
                    "benchmark": benchmark,
                    "base_score": base_score,
                    "guided_score": guided_score,
                    "delta": guided_score - base_score,
                }
            )
    table = pd.DataFrame(rows, columns=COLUMNS)
    missing = table[table["delta"].isna()]
    if len(missing):
        notes.append(
            f"{len(missing)} of {len(table)} cells missing (no base or no NUDGING run with a usable "
            "score in the chosen setting): shown as n/a, not filled"
        )
    return table


def _draw(ax, values: np.ndarray, norm, cmap):
    """One block of cells: coloured deltas with printed values; NaN cells grey, hatched, 'n/a'."""
    masked = np.ma.masked_invalid(values)
    image = ax.imshow(masked, cmap=cmap, norm=norm, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            dark = abs(norm(v) - 0.5) > 0.32
            ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=9, color="white" if dark else "black")
        else:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.88", edgecolor="0.6", hatch="///", lw=0))
            ax.text(
                j,
                i,
                "n/a",
                ha="center",
                va="center",
                fontsize=8,
                color="0.35",
                bbox=dict(fc="0.88", ec="none", pad=0.5),
            )
    return image


def plot(table: pd.DataFrame, pair_labels: dict | None = None):
    """Pairs x benchmarks; a diverging scale centred at 0 for the 0-1 scores, a second for JustEval-Safe."""
    pair_labels = pair_labels or {}
    pairs = list(dict.fromkeys(table["pair"]))
    if not pairs:
        fig, ax = plt.subplots(figsize=(8, 2.5))
        ax.text(0.5, 0.5, "no base or NUDGING runs stored: every cell is missing", ha="center", va="center")
        ax.set_axis_off()
        fig.suptitle("Figure 2: NUDGING minus base score", fontsize=13)
        return fig
    frac = [b for b in dict.fromkeys(table["benchmark"]) if b not in labels.JUDGE_SCALE_BENCHMARKS]
    judged = [b for b in dict.fromkeys(table["benchmark"]) if b in labels.JUDGE_SCALE_BENCHMARKS]
    wide = table.pivot(index="pair", columns="benchmark", values="delta").reindex(index=pairs)
    height = 0.42 * max(len(pairs), 1) + 2.4
    fig, axes = plt.subplots(
        1,
        2 if judged else 1,
        figsize=(1.25 * len(frac) + (2.9 if judged else 0) + 3.2, height),
        gridspec_kw={"width_ratios": [len(frac), 1.0 * len(judged)] if judged else [1]},
        squeeze=False,
        layout="constrained",
    )
    cmap = plt.get_cmap("RdBu").copy()
    blocks = [(axes[0, 0], frac, "score delta (fraction)")] + (
        [(axes[0, 1], judged, "delta (1-5 judge scale)")] if judged else []
    )
    for ax, cols, label in blocks:
        values = wide.reindex(columns=cols).to_numpy(float) if pairs else np.zeros((0, len(cols)))
        limit = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
        limit = max(limit, 0.05)
        image = _draw(ax, values, TwoSlopeNorm(0, -limit, limit), cmap)
        ax.set_xticks(range(len(cols)), [labels.benchmark_label(c) for c in cols], rotation=30, ha="right")
        ax.set_yticks(range(len(pairs)), [pair_labels.get(p, p) for p in pairs] if ax is axes[0, 0] else [])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02).set_label(label)
    axes[0, 0].set_ylabel("pair (guidance → base)")
    fig.suptitle("Figure 2: NUDGING minus base score (blue: better, red: worse; n/a: not run)", fontsize=13)
    return fig


def main(argv=None) -> int:
    args = cli.parser("heatmap", __doc__).parse_args(argv)
    notes: list[str] = []
    frame = load_runs(args.results)
    settings: list[str] = []
    table = compute(frame, args.n, args.protocol, notes=notes, settings=settings)
    write.write_csv(table, args.out / "figure2.csv")
    fig = plot(table, dict(zip(frame["pair"], frame["pair_label"])))
    fig.text(
        0.01,
        -0.01,
        textwrap.fill(
            "Settings: " + select.short_settings(settings) + ". Stop strings per benchmark: see figure2_notes.md.", 150
        ),
        fontsize=8,
        color="0.3",
        va="top",
    )
    write.save_figure(fig, args.out, "figure2")
    if frame.empty:
        notes.append(
            f"no runs under {args.results}/runs: every cell is missing "
            "(run e.g. python -m blendin.run -m experiment=paper_fig2)"
        )
    write.write_notes(args.out, "figure2", "Figure 2 (heatmap)", settings, notes)
    write.report_notes("heatmap", settings, notes)
    print(f"[heatmap] wrote {args.out / 'figure2.csv'} ({table['delta'].notna().sum()} of {len(table)} cells)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
