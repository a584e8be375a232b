"""Figure 2: NUDGING minus base score, one cell per (pair, benchmark).

    python -m analysis.heatmap [--results results] [--out results/analysis] [--n 100] [--protocol ours]

For each benchmark, the base and NUDGING runs of its chosen setting (the one with the most runs,
subsets before full sets; or the one named by --n/--protocol); NUDGING at tau 0.4 when several taus
are stored. A cell without both runs is missing: empty in the CSV, grey hatched "n/a" in the figure,
never 0; the figure says why ("not run", "no judge": a JustEval-Safe run without an LLM judge stored a
refusal rate, not a safety score; "no base run", "no NUDGING run"). The colour scale is fixed and
symmetric (±1 for fractions, ±4 on JustEval-Safe's 1-5 judge scale), so one item of twelve is never
drawn as a large effect; each cell prints the difference, its 95% paired bootstrap interval over the
items both runs scored, and that number of items.

Writes figure2.csv (pair, benchmark, base_score, guided_score, delta), figure2_cells.csv (the same
cells with n, delta_ci_low, delta_ci_high, paired_p, missing, base_run, guided_run),
figure2.png/.pdf and figure2_notes.md (settings and what was left out).
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle

from . import cli, labels, select, stats, write
from .load import NO_JUDGE_NOTE, sample_scores

COLUMNS = ["pair", "benchmark", "base_score", "guided_score", "delta"]
CELL_COLUMNS = COLUMNS + ["n", "delta_ci_low", "delta_ci_high", "paired_p", "missing", "base_run", "guided_run"]
DEFAULT_TAU = 0.4
LIMITS = {"fraction": 1.0, "judge": 4.0}  # the largest possible |delta| of each scale: a fixed colour range


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


def _missing(cell_runs: pd.DataFrame, method: str) -> str:
    """Why a cell has no delta: 'not run', 'no judge', 'no base run' or 'no NUDGING run'."""
    if cell_runs.empty:
        return "not run"
    if (cell_runs["score_excluded"] == NO_JUDGE_NOTE).any():
        return "no judge"
    return "no base run" if not (cell_runs["method"] == "base").any() else f"no {labels.method_label(method)} run"


def _paired(base, guided) -> dict:
    """The guided-minus-base difference on the items both runs scored: n, 95% paired bootstrap interval, p."""
    both = pd.concat([sample_scores(base).rename("a"), sample_scores(guided).rename("b")], axis=1, join="inner")
    both = both.dropna()
    if both.empty:
        return dict(n=min(base["n_samples"], guided["n_samples"]), lo=math.nan, hi=math.nan, p=math.nan)
    diff = stats.paired_bootstrap(both["a"].to_numpy(), both["b"].to_numpy())
    p = stats.paired_test(both["a"].to_numpy(), both["b"].to_numpy())["p"]
    return dict(n=len(both), lo=diff["ci_low"], hi=diff["ci_high"], p=p)


def compute_cells(
    frame: pd.DataFrame,
    n: str | None = None,
    protocol: str | None = None,
    method: str = "nudging",
    notes: list | None = None,
    settings: list | None = None,
) -> pd.DataFrame:
    """figure2_cells.csv: every stored pair x the six benchmarks (and any other stored), missing as NaN,
    with each cell's n, paired interval, and why it is missing.

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
            base = base.iloc[-1] if len(base) else None
            guided = pick_guided(cell[cell["method"] == method], notes, f"{pair}/{benchmark}")
            row = dict.fromkeys(CELL_COLUMNS, math.nan) | {"pair": pair, "benchmark": benchmark, "missing": ""}
            if base is not None:
                row.update(base_score=base["score"], base_run=base["run_dir"])
            if guided is not None:
                row.update(guided_score=guided["score"], guided_run=guided["run_dir"])
            if base is not None and guided is not None:
                paired = _paired(base, guided)
                row.update(
                    delta=guided["score"] - base["score"],
                    n=paired["n"],
                    delta_ci_low=paired["lo"],
                    delta_ci_high=paired["hi"],
                    paired_p=paired["p"],
                )
            else:
                mine = runs[(runs["pair"] == pair) & (runs["benchmark"] == benchmark)]
                row["missing"] = _missing(mine, method)
            rows.append(row)
    table = pd.DataFrame(rows, columns=CELL_COLUMNS)
    missing = table[table["delta"].isna()]
    if len(missing):
        why = ", ".join(f"{c} {r}" for r, c in missing["missing"].value_counts().items())
        notes.append(f"{len(missing)} of {len(table)} cells missing ({why}): shown as such, never filled with 0")
    return table


def compute(
    frame: pd.DataFrame,
    n: str | None = None,
    protocol: str | None = None,
    method: str = "nudging",
    notes: list | None = None,
    settings: list | None = None,
) -> pd.DataFrame:
    """figure2.csv: the cells of `compute_cells` with the columns of the paper's figure only."""
    return compute_cells(frame, n, protocol, method, notes, settings)[COLUMNS]


MISSING_STYLE = {  # why a cell is empty -> (face colour, hatch, text)
    "not run": ("0.88", "///", "not run"),
    "no judge": ("white", "", "ran,\nno judge"),
}


def _draw(ax, cells: pd.DataFrame, pairs: list, cols: list, limit: float, cmap):
    """One block of cells: coloured deltas with the value, interval and n; missing cells say why."""
    norm = TwoSlopeNorm(0, -limit, limit)
    values = np.full((len(pairs), len(cols)), np.nan)
    for _, c in cells.iterrows():
        if c["benchmark"] in cols:
            values[pairs.index(c["pair"]), cols.index(c["benchmark"])] = c["delta"]
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(np.arange(len(cols) + 1) - 0.5, minor=True)  # thin lines between cells: pale cells stay apart
    ax.set_yticks(np.arange(len(pairs) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.75", lw=0.8)
    ax.tick_params(which="minor", length=0)
    for _, c in cells[cells["benchmark"].isin(cols)].iterrows():
        i, j = pairs.index(c["pair"]), cols.index(c["benchmark"])
        if np.isfinite(c["delta"]):
            dark = abs(norm(c["delta"]) - 0.5) > 0.32
            colour = "white" if dark else "black"
            ax.text(j, i - 0.12, f"{c['delta']:+.2f}", ha="center", va="center", fontsize=10, color=colour)
            low, high = c["delta_ci_low"], c["delta_ci_high"]
            interval = ""
            if np.isfinite(low) and low < high:
                interval = f"[{low:+.2f}, {high:+.2f}]\n"
            elif np.isfinite(low):  # every item moved alike: a resampled interval collapses to a point
                interval = "no item differs\n" if low == 0 else "alike on every item\n"
            ax.text(j, i + 0.22, f"{interval}n = {int(c['n'])}", ha="center", va="center", fontsize=7, color=colour)
        else:
            face, hatch, text = MISSING_STYLE.get(c["missing"], ("0.88", "///", c["missing"].replace(" run", "\nrun")))
            ax.add_patch(
                Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=face, edgecolor="0.55", hatch=hatch, lw=0.8, ls=":")
            )
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="0.3", bbox=dict(fc=face, ec="none", pad=1))
    return image


def plot(table: pd.DataFrame, pair_labels: dict | None = None):
    """Pairs x benchmarks (`table`: figure2_cells.csv); a fixed diverging scale centred at 0 for the 0-1 scores
    (±1), a second for JustEval-Safe's 1-5 judge scale (±4)."""
    pair_labels = pair_labels or {}
    pairs = list(dict.fromkeys(table["pair"]))
    frac = [b for b in dict.fromkeys(table["benchmark"]) if b not in labels.JUDGE_SCALE_BENCHMARKS]
    judged = [b for b in dict.fromkeys(table["benchmark"]) if b in labels.JUDGE_SCALE_BENCHMARKS]
    fig, axes = plt.subplots(
        1,
        2 if judged else 1,
        figsize=(1.35 * len(frac) + (2.9 if judged else 0) + 3.4, 0.8 * len(pairs) + 2.6),
        gridspec_kw={"width_ratios": [len(frac), 1.0 * len(judged)] if judged else [1]},
        squeeze=False,
        layout="constrained",
    )
    cmap = plt.get_cmap("RdBu").copy()
    blocks = [(axes[0, 0], frac, LIMITS["fraction"], "NUDGING − base (fraction; fixed scale)")] + (
        [(axes[0, 1], judged, LIMITS["judge"], "NUDGING − base (1-5 judge scale)")] if judged else []
    )
    for ax, cols, limit, label in blocks:
        image = _draw(ax, table, pairs, cols, limit, cmap)
        ax.set_xticks(range(len(cols)), [labels.benchmark_label(c) for c in cols], rotation=30, ha="right")
        ax.set_yticks(range(len(pairs)), [pair_labels.get(p, p) for p in pairs] if ax is axes[0, 0] else [])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02, ticks=np.linspace(-limit, limit, 5)).set_label(label)
    axes[0, 0].set_ylabel("pair (guidance → base)")
    fig.suptitle(
        "Figure 2: NUDGING minus base score (blue: NUDGING better, red: worse)\n"
        "in each cell: the difference, its 95% paired bootstrap interval, and the items both runs scored",
        fontsize=12,
    )
    return fig


@cli.command("heatmap")
def main(argv=None) -> int:
    args = cli.parser("heatmap", __doc__).parse_args(argv)
    frame = cli.load(args)
    notes: list[str] = []
    settings: list[str] = []
    cells = compute_cells(frame, args.n, args.protocol, notes=notes, settings=settings)
    cli.require(
        cells[cells["delta"].notna()],
        "pair and benchmark with both a base and a NUDGING run with a usable score in one setting",
        frame,
        args,
        "Run e.g. python -m blendin.run -m experiment=paper_fig2",
    )
    fig = plot(cells, dict(zip(frame["pair"], frame["pair_label"])))
    fig.text(
        0.01,
        -0.01,
        textwrap.fill(
            "Settings: " + select.short_settings(settings, frame) + ". Full settings: figure2_notes.md.", 150
        ),
        fontsize=8,
        color="0.3",
        va="top",
    )
    write.write_csv(cells[COLUMNS], args.out / "figure2.csv")
    write.write_csv(cells, args.out / "figure2_cells.csv")
    write.save_figure(fig, args.out, "figure2")
    write.write_notes(args.out, "figure2", "Figure 2 (heatmap)", settings, notes)
    write.report_notes("heatmap", settings, notes)
    print(f"[heatmap] wrote {args.out / 'figure2.csv'} ({cells['delta'].notna().sum()} of {len(cells)} cells)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
