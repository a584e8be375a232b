"""Figure 4 and Table 4: does vocabulary overlap between the two models predict NUDGING's score?

    python -m analysis.overlap [--results results] [--out results/analysis] [--n 100] [--protocol ours]

From the per-token traces (tokens.parquet) at consulted steps (base top-1 probability < tau):
- top50_overlap: share of consulted steps whose guidance top token ranks 1..50 in the base
  distribution (ranks are stored 1-based; a guidance token the base tokenizer cannot encode,
  rank -1, counts as not overlapping), i.e. the paper's "rank < 50" on 0-based ranks;
- top_p90_overlap: share inside the base's smallest top-p 0.9 set;
- avg_rank: mean 1-based rank over the encodable suggestions (the paper's ranks are 0-based, so
  its average is ours minus 1); n_unencodable says how many were left out of it.
Pooled per pair over every benchmark's consulted steps. Runs of method `probe` are preferred: like
the paper's code they follow the base-only path (guidance consulted, never applied). Without probe
runs, NUDGING runs are used; `source_method` says which. Table 4 is Pearson r and p of each overlap
metric against each benchmark's NUDGING score over pairs (the scores of Figure 2's cells).

Writes overlap.csv (pair, n_consulted, top50_overlap, top_p90_overlap, avg_rank, then
benchmarks), overlap_by_benchmark.csv (the same metrics per pair and benchmark, with the run),
table4.csv (benchmark, metric, pearson_r, pearson_p, n_pairs), figure4.png/.pdf and overlap_notes.md.
Figure 4's right half correlates overlap with the score over pairs; with fewer than 3 pairs there is
nothing to correlate, so it shows each benchmark's overlap and NUDGING score instead, labelled.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import cli, heatmap, labels, select, stats, write
from .load import load_tokens

COLUMNS = [
    "pair",
    "n_consulted",
    "top50_overlap",
    "top_p90_overlap",
    "avg_rank",
    "n_unencodable",
    "spelled_share",
    "mean_top_p_size",
    "mean_top100_overlap",
    "source_method",
    "n_runs",
    "benchmarks",
]
TABLE4_COLUMNS = ["benchmark", "metric", "pearson_r", "pearson_p", "n_pairs"]
METRICS = ["top50_overlap", "top_p90_overlap", "avg_rank"]
TRACE_COLUMNS = [
    "sample_id",
    "consulted",
    "guide_top_rank",
    "guide_top_in_base_top_p",
    "guide_top_spelled",
    "base_top_p_size",
    "top100_overlap",
]
SOURCES = ("probe", "nudging")
MIN_PAIRS = 3  # a correlation over pairs needs at least this many


def trace_metrics(trace: pd.DataFrame) -> dict:
    """Overlap metrics of the consulted steps of one or more traces (see the module docstring)."""
    steps = trace[trace["consulted"].astype(bool)]
    n = len(steps)
    rank = steps["guide_top_rank"].astype(int)
    encodable = rank >= 1
    spelled = steps["guide_top_spelled"] if "guide_top_spelled" in steps else pd.Series(pd.NA, index=steps.index)
    spelled = spelled.dropna()
    size = steps["base_top_p_size"] if "base_top_p_size" in steps else pd.Series(-1, index=steps.index)
    size = size[size >= 1]
    top100 = steps["top100_overlap"] if "top100_overlap" in steps else pd.Series(np.nan, index=steps.index)
    return {
        "n_consulted": n,
        "top50_overlap": float(((rank >= 1) & (rank <= 50)).mean()) if n else math.nan,
        "top_p90_overlap": float((steps["guide_top_in_base_top_p"].astype(bool) & encodable).mean()) if n else math.nan,
        "avg_rank": float(rank[encodable].mean()) if encodable.any() else math.nan,
        "n_unencodable": int((~encodable).sum()),
        "spelled_share": float(spelled.astype(bool).mean()) if len(spelled) else math.nan,
        "mean_top_p_size": float(size.mean()) if len(size) else math.nan,
        "mean_top100_overlap": float(top100.mean()) if top100.notna().any() else math.nan,
    }


def choose_traces(
    frame: pd.DataFrame, n=None, protocol=None, notes: list | None = None, settings: list | None = None
) -> pd.DataFrame:
    """The runs whose traces are pooled: per pair probe runs if any, else NUDGING; one per benchmark."""
    notes = [] if notes is None else notes
    frame = select.filter_runs(frame, n, protocol)
    chosen_runs: list = []
    for source in SOURCES:
        runs = frame[frame["method"] == source]
        pairs_done = {r["pair"] for r in chosen_runs}
        runs = runs[~runs["pair"].isin(pairs_done)]
        if runs.empty:
            continue
        chosen = select.choose_settings(runs, prefer_full=False)
        if settings is not None:
            settings += [f"{line} (method {source})" for line in select.describe_chosen(runs, chosen)]
        runs = select.in_chosen_settings(runs, chosen, notes=notes, what=f"overlap ({source}) ")
        for (pair, benchmark), group in runs.groupby(["pair", "benchmark"], sort=True):
            at_default = group[np.isclose(group["tau"].astype(float), heatmap.DEFAULT_TAU)]
            chosen_runs.append((at_default if len(at_default) else group).sort_values("created_at").iloc[-1])
        if source != SOURCES[0] and len(runs):
            notes.append(
                f"no probe runs for {', '.join(sorted(runs['pair'].unique()))}: their overlap comes from "
                "NUDGING traces, whose path already follows the guidance (the paper's code used the "
                "base-only path; run method=probe for that)"
            )
    return pd.DataFrame(chosen_runs)


def compute(
    frame: pd.DataFrame,
    n=None,
    protocol=None,
    notes: list | None = None,
    settings: list | None = None,
    by_benchmark: list | None = None,
) -> pd.DataFrame:
    """overlap.csv: one row per pair, pooled over its benchmarks' consulted steps.

    `by_benchmark`, when given, receives one row per (pair, benchmark) with the same metrics."""
    runs = choose_traces(frame, n, protocol, notes, settings)
    rows = []
    for pair in labels.order_pairs(runs["pair"]) if len(runs) else []:
        mine = runs[runs["pair"] == pair]
        traces = {r["benchmark"]: load_tokens(r, TRACE_COLUMNS) for _, r in mine.iterrows()}
        if by_benchmark is not None:
            for _, run in mine.iterrows():
                by_benchmark.append(
                    {
                        "pair": pair,
                        "benchmark": run["benchmark"],
                        **trace_metrics(traces[run["benchmark"]]),
                        "source_method": run["method"],
                        "run_dir": run["run_dir"],
                    }
                )
        rows.append(
            {
                "pair": pair,
                **trace_metrics(pd.concat(list(traces.values()), ignore_index=True)),
                "source_method": mine["method"].iloc[0],
                "n_runs": len(mine),
                "benchmarks": " ".join(labels.order_benchmarks(mine["benchmark"])),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def table4(overlap: pd.DataFrame, scores: pd.DataFrame, notes: list | None = None) -> pd.DataFrame:
    """Pearson r and p of each overlap metric against each benchmark's NUDGING score, over pairs.

    `scores` is figure 2's table (pair, benchmark, guided_score, ...)."""
    notes = [] if notes is None else notes
    rows = []
    merged = scores.merge(overlap, on="pair", how="inner")
    for benchmark in labels.order_benchmarks(scores["benchmark"]):
        cell = merged[(merged["benchmark"] == benchmark) & merged["guided_score"].notna()]
        for metric in METRICS:
            both = cell[cell[metric].notna()]
            result = stats.correlation(both[metric], both["guided_score"])
            rows.append(
                {
                    "benchmark": benchmark,
                    "metric": metric,
                    "pearson_r": result["pearson_r"],
                    "pearson_p": result["pearson_p"],
                    "n_pairs": len(both),
                }
            )
        if len(cell) < MIN_PAIRS:
            notes.append(
                f"table 4, {benchmark}: {len(cell)} pair(s) with both overlap and a NUDGING score, fewer "
                "than 3: no correlation"
            )
    return pd.DataFrame(rows, columns=TABLE4_COLUMNS)


def _label_bars(ax, bars, values) -> None:
    """Print each bar's value (a %) just right of its end."""
    for bar, v in zip(bars, values):
        if np.isfinite(v):
            ax.text(bar.get_width() + 1.5, bar.get_y() + bar.get_height() / 2, f"{v:.1f}%", va="center", fontsize=8.5)


def _overlap_bars(ax, rows: pd.DataFrame, names: list[str]) -> None:
    """Top-50 and top-p 0.9 overlap (%) of each row as two labelled horizontal bars, top to bottom."""
    y = np.arange(len(rows))
    for offset, metric, label, colour in (
        (-0.2, "top50_overlap", "top-50", write.OKABE_ITO[0]),
        (0.2, "top_p90_overlap", "top-p 0.9", write.OKABE_ITO[1]),
    ):
        values = 100 * rows[metric].to_numpy(float)
        _label_bars(ax, ax.barh(y + offset, values, height=0.38, label=label, color=colour), values)
    ax.set_yticks(y, names)
    ax.set_ylim(max(len(rows), 3) - 0.5, -0.5)  # top to bottom; a few rows do not get giant bars
    ax.set_xlim(0, 135)
    ax.set_xticks([0, 20, 40, 60, 80, 100])
    ax.set_xlabel("% of consulted steps with the guidance token in the base's set")
    ax.grid(axis="x", alpha=0.25)


def _per_benchmark(right, overlap, per_bench: pd.DataFrame, scores: pd.DataFrame, pair_labels: dict) -> None:
    """Fewer than MIN_PAIRS pairs: per pair, each benchmark's overlap (bars) and NUDGING score, labelled."""
    axes = right.subplots(len(overlap), 1, squeeze=False)[:, 0]
    for ax, pair in zip(axes, overlap["pair"]):
        rows = per_bench[per_bench["pair"] == pair]
        order = {b: i for i, b in enumerate(labels.order_benchmarks(rows["benchmark"]))}
        rows = rows.sort_values("benchmark", key=lambda c: c.map(order)).reset_index(drop=True)
        names = [f"{labels.benchmark_label(b)}\n({n} steps)" for b, n in zip(rows["benchmark"], rows["n_consulted"])]
        _overlap_bars(ax, rows, names)
        for i, benchmark in enumerate(rows["benchmark"]):
            cell = scores[(scores["pair"] == pair) & (scores["benchmark"] == benchmark)]
            score = cell["guided_score"].iloc[0] if len(cell) else math.nan
            scale = " (1-5)" if benchmark in labels.JUDGE_SCALE_BENCHMARKS else ""
            items = (
                f", {int(cell['n'].iloc[0])} items"
                if "n" in cell and len(cell) and np.isfinite(cell["n"].iloc[0])
                else ""
            )
            text = f"NUDGING score\n{write.fmt(score)}{scale}{items}" if np.isfinite(score) else "NUDGING score n/a"
            ax.text(137, i, text, va="center", fontsize=8.5, color="0.25")
        ax.set_title(
            f"{pair_labels.get(pair, pair)}: each benchmark's overlap ({int(rows['n_consulted'].sum())} consulted "
            "steps)",
            fontsize=11,
        )
        ax.legend(loc="lower right", fontsize=8.5, frameon=True)
    right.suptitle(
        f"Per benchmark: a correlation over pairs (Table 4) needs {MIN_PAIRS} or more pairs; {len(overlap)} stored",
        fontsize=11,
    )


def _scatter_panels(right, merged: pd.DataFrame, t4: pd.DataFrame) -> None:
    """Top-50 overlap vs NUDGING score over pairs, one panel per benchmark with a score."""
    benchmarks = labels.order_benchmarks(merged[merged["guided_score"].notna()]["benchmark"])
    ncols = min(3, max(1, len(benchmarks)))
    axes = right.subplots(max(1, math.ceil(len(benchmarks) / ncols)), ncols, squeeze=False)
    for a, benchmark in zip(axes.flat, benchmarks):
        cell = merged[(merged["benchmark"] == benchmark) & merged["guided_score"].notna()]
        a.scatter(
            100 * cell["top50_overlap"], cell["guided_score"], s=40, color=write.OKABE_ITO[0], edgecolor="0.2", lw=0.5
        )
        row = t4[(t4["benchmark"] == benchmark) & (t4["metric"] == "top50_overlap")]
        r = row["pearson_r"].iloc[0] if len(row) else math.nan
        text = (
            f"r = {r:.2f}, p = {write.fmt_p(row['pearson_p'].iloc[0])}\nn = {len(cell)}"
            if np.isfinite(r)
            else f"n = {len(cell)}: no fit"
        )
        a.text(
            0.03,
            0.97,
            text,
            transform=a.transAxes,
            va="top",
            fontsize=8.5,
            bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.7", alpha=0.9),
        )
        a.set_title(labels.benchmark_label(benchmark), fontsize=11)
        a.set_xlabel("top-50 overlap (%)", fontsize=9)
        judged = benchmark in labels.JUDGE_SCALE_BENCHMARKS
        a.set_ylabel("NUDGING safety (1-5)" if judged else "NUDGING score (0-1)", fontsize=9)
        a.grid(alpha=0.25)
        a.margins(0.15)
        write.min_span(
            a, cell["guided_score"], 0.8 if judged else 0.2, 1.0 if judged else -0.02, 5.0 if judged else 1.02
        )
    for a in list(axes.flat)[max(1, len(benchmarks)) :]:
        a.set_visible(False)
    right.suptitle("Top-50 overlap vs NUDGING score, one point per pair", fontsize=12)


def plot(
    overlap: pd.DataFrame,
    scores: pd.DataFrame,
    t4: pd.DataFrame,
    pair_labels: dict | None = None,
    per_bench: pd.DataFrame | None = None,
):
    """Left: overlap per pair (labelled bars, average rank printed). Right: top-50 overlap vs NUDGING score over
    pairs, or with fewer than MIN_PAIRS pairs (and `per_bench`, overlap_by_benchmark.csv), each benchmark's
    overlap and score."""
    pair_labels = pair_labels or {}
    merged = scores.merge(overlap, on="pair", how="inner")
    few = per_bench is not None and len(per_bench) > 0 and overlap["pair"].nunique() < MIN_PAIRS
    rows_right = 0
    if few and per_bench is not None:
        rows_right = sum(max(3, len(per_bench[per_bench["pair"] == p])) for p in overlap["pair"])
    height = max(5.5, 0.38 * len(overlap) + 3, 0.55 * rows_right + 2.5)
    fig = plt.figure(figsize=(17, height), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.7])
    ax = left.subplots()
    names = [f"{pair_labels.get(p, p)}\n({n} steps)" for p, n in zip(overlap["pair"], overlap["n_consulted"])]
    _overlap_bars(ax, overlap, names)
    for yi, (_, row) in enumerate(overlap.iterrows()):
        ax.text(
            134, yi, f"avg. rank {write.fmt(row['avg_rank'], 1)}", va="center", ha="right", fontsize=8.5, color="0.3"
        )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    ax.set_title("Vocabulary overlap per pair, pooled over benchmarks\n(avg. rank: 1-based, encodable tokens)")
    if few:
        _per_benchmark(right, overlap, per_bench, scores, pair_labels)
    elif merged["guided_score"].notna().any():
        _scatter_panels(right, merged, t4)
    else:
        a = right.subplots()
        a.text(0.5, 0.5, "no pair has both a trace and a NUDGING score", ha="center", va="center")
        a.set_axis_off()
    fig.suptitle("Figure 4: vocabulary overlap at consulted steps", fontsize=13)
    return fig


@cli.command("overlap")
def main(argv=None) -> int:
    args = cli.parser("overlap", __doc__).parse_args(argv)
    frame = cli.load(args)
    notes: list[str] = []
    settings: list[str] = []
    by_benchmark: list[dict] = []
    overlap = compute(frame, args.n, args.protocol, notes, settings, by_benchmark)
    cli.require(
        overlap,
        "probe or NUDGING run with a per-token trace",
        frame,
        args,
        "Run e.g. python -m blendin.run -m experiment=paper_fig4 (method=probe)",
    )
    per_bench = pd.DataFrame(by_benchmark)
    score_settings: list[str] = []
    scores = heatmap.compute_cells(frame, args.n, args.protocol, notes=[], settings=score_settings)
    t4 = table4(overlap, scores, notes)
    fig = plot(overlap, scores, t4, dict(zip(frame["pair"], frame["pair_label"])), per_bench)
    fig.text(
        0.01,
        -0.01,
        textwrap.fill(
            "Traces: "
            + select.short_settings([s.rsplit(" (method ", 1)[0] for s in settings], frame)
            + ". Scores: "
            + select.short_settings(score_settings, frame)
            + ".",
            170,
        ),
        fontsize=8,
        color="0.3",
        va="top",
    )
    write.write_csv(overlap, args.out / "overlap.csv")
    write.write_csv(per_bench, args.out / "overlap_by_benchmark.csv")
    write.write_csv(t4, args.out / "table4.csv")
    write.save_figure(fig, args.out, "figure4")
    all_settings = [f"traces, {s}" for s in settings] + [f"NUDGING scores, {s}" for s in score_settings]
    write.write_notes(args.out, "overlap", "Figure 4 and Table 4 (overlap)", all_settings, notes)
    write.report_notes("overlap", all_settings, notes)
    fitted = int(t4["pearson_r"].notna().sum())
    print(
        f"[overlap] wrote {args.out / 'overlap.csv'} ({len(overlap)} pairs) and {args.out / 'table4.csv'} "
        f"({fitted} of {len(t4)} correlations computed; each needs {MIN_PAIRS} or more pairs)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
