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
n_unencodable, spelled_share, mean_top_p_size, mean_top100_overlap, source_method, n_runs,
benchmarks), table4.csv (benchmark, metric, pearson_r, pearson_p, n_pairs), figure4.png/.pdf and
overlap_notes.md.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import cli, heatmap, labels, select, stats, write
from .load import load_runs, load_tokens

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
    chosen_runs = []
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
    frame: pd.DataFrame, n=None, protocol=None, notes: list | None = None, settings: list | None = None
) -> pd.DataFrame:
    """overlap.csv: one row per pair, pooled over its benchmarks' consulted steps."""
    runs = choose_traces(frame, n, protocol, notes, settings)
    rows = []
    for pair in labels.order_pairs(runs["pair"]) if len(runs) else []:
        mine = runs[runs["pair"] == pair]
        trace = pd.concat([load_tokens(r, TRACE_COLUMNS) for _, r in mine.iterrows()], ignore_index=True)
        rows.append(
            {
                "pair": pair,
                **trace_metrics(trace),
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
        if len(cell) < 3:
            notes.append(
                f"table 4, {benchmark}: {len(cell)} pair(s) with both overlap and a NUDGING score, fewer "
                "than 3: no correlation"
            )
    return pd.DataFrame(rows, columns=TABLE4_COLUMNS)


def plot(overlap: pd.DataFrame, scores: pd.DataFrame, t4: pd.DataFrame, pair_labels: dict | None = None):
    """Left: overlap per pair (bars, average rank printed). Right: top-50 overlap vs NUDGING score."""
    pair_labels = pair_labels or {}
    fig = plt.figure(figsize=(15, max(5.5, 0.38 * len(overlap) + 3)), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.55])
    ax = left.subplots()
    y = np.arange(len(overlap))
    ax.barh(y - 0.2, 100 * overlap["top50_overlap"], height=0.38, label="top-50", color=write.OKABE_ITO[0])
    ax.barh(y + 0.2, 100 * overlap["top_p90_overlap"], height=0.38, label="top-p 0.9", color=write.OKABE_ITO[1])
    for yi, (_, row) in zip(y, overlap.iterrows()):
        ax.text(101, yi, f"rank {write.fmt(row['avg_rank'], 1)}", va="center", fontsize=8, color="0.3")
    ax.set_yticks(y, [pair_labels.get(p, p) for p in overlap["pair"]])
    ax.set_ylim(max(len(overlap), 4) - 0.5, -0.5)  # top to bottom; a few pairs do not get giant bars
    ax.set_xlim(0, 122)
    ax.set_xticks([0, 20, 40, 60, 80, 100])
    ax.set_xlabel("% of consulted steps with the guidance token in the set")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    ax.set_title("Vocabulary overlap per pair\n(avg. rank: 1-based, encodable tokens)")
    if overlap.empty:
        ax.text(0.5, 0.5, "no traces with consulted steps", ha="center", va="center", transform=ax.transAxes)
    merged = scores.merge(overlap, on="pair", how="inner")
    with_scores = merged[merged["guided_score"].notna()]["benchmark"] if len(merged) else []
    benchmarks = labels.order_benchmarks(with_scores)  # benchmarks without any point get no panel
    ncols = min(3, max(1, len(benchmarks)))
    axes = right.subplots(max(1, math.ceil(len(benchmarks) / ncols)), ncols, squeeze=False)
    if not benchmarks:
        axes[0, 0].text(
            0.5,
            0.5,
            "no pair has both a trace and a NUDGING score",
            ha="center",
            va="center",
            transform=axes[0, 0].transAxes,
        )
        axes[0, 0].set_axis_off()
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
        a.set_ylabel(
            "NUDGING safety (1-5)" if benchmark in labels.JUDGE_SCALE_BENCHMARKS else "NUDGING score (0-1)", fontsize=9
        )
        a.grid(alpha=0.25)
        a.margins(0.15)
        judged = benchmark in labels.JUDGE_SCALE_BENCHMARKS
        write.min_span(
            a, cell["guided_score"], 0.8 if judged else 0.2, 1.0 if judged else -0.02, 5.0 if judged else 1.02
        )
    for a in list(axes.flat)[max(1, len(benchmarks)) :]:
        a.set_visible(False)
    right.suptitle("Top-50 overlap vs NUDGING score, one point per pair", fontsize=12)
    fig.suptitle("Figure 4: vocabulary overlap at consulted steps", fontsize=13)
    return fig


def main(argv=None) -> int:
    args = cli.parser("overlap", __doc__).parse_args(argv)
    notes: list[str] = []
    settings: list[str] = []
    frame = load_runs(args.results)
    overlap = compute(frame, args.n, args.protocol, notes, settings)
    score_settings: list[str] = []
    scores = heatmap.compute(frame, args.n, args.protocol, notes=[], settings=score_settings)
    t4 = table4(overlap, scores, notes)
    write.write_csv(overlap, args.out / "overlap.csv")
    write.write_csv(t4, args.out / "table4.csv")
    fig = plot(overlap, scores, t4, dict(zip(frame["pair"], frame["pair_label"])))
    fig.text(
        0.01,
        -0.01,
        textwrap.fill(
            "Traces: " + select.short_settings(settings) + ". Scores: " + select.short_settings(score_settings) + ".",
            170,
        ),
        fontsize=8,
        color="0.3",
        va="top",
    )
    write.save_figure(fig, args.out, "figure4")
    if overlap.empty:
        notes.append(
            f"no probe or NUDGING traces under {args.results}/runs: overlap is empty "
            "(run e.g. python -m blendin.run -m experiment=paper_fig2, or method=probe)"
        )
    all_settings = [f"traces, {s}" for s in settings] + [f"NUDGING scores, {s}" for s in score_settings]
    write.write_notes(args.out, "overlap", "Figure 4 and Table 4 (overlap)", all_settings, notes)
    write.report_notes("overlap", all_settings, notes)
    print(f"[overlap] wrote {args.out / 'overlap.csv'} ({len(overlap)} pairs) and {args.out / 'table4.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
