"""Does a 100-sample subset stand for the full benchmark? The paper reports 100-item subsets; this
answers from stored runs how far such a subset's score can sit from the full set's.

    python -m analysis.subset [--results results] [--out results/analysis] [--draws 10000]

For every run on a subset (benchmark.n=100, say) that has a twin on the full set (same pair,
benchmark, method and parameters, protocol, token budget, stop strings and judge):
- the subset's score, the full run's score, and the full run restricted to the subset's sample ids
  (the same questions decoded in the other run: any gap is decoding noise, e.g. batching);
- the spread of n-sample subset means drawn from the full run's per-sample scores (without
  replacement, like the subset rule; --draws draws, seed 0): 2.5th, 50th and 97.5th percentiles,
  and where the stored subset's score falls in it;
- per-sample agreement of the two runs on the shared ids: equal scores, equal outputs, and the
  counts of samples right in only one of them.
Writes subset_vs_full.csv, subset_vs_full.png/.pdf and subset_notes.md.
"""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from blendin.methods import REGISTRY

from . import cli, labels, select, stats, write
from .load import load_samples, sample_scores

COLUMNS = [
    "pair",
    "benchmark",
    "method",
    "params",
    "subset_n",
    "subset_score",
    "full_n",
    "full_score",
    "full_on_subset_ids",
    "n_shared",
    "spread_p2_5",
    "spread_p50",
    "spread_p97_5",
    "subset_percentile",
    "score_agreement",
    "output_agreement",
    "n_subset_only_right",
    "n_full_only_right",
    "setting",
    "subset_run",
    "full_run",
]


def _twin_key(run) -> str:
    """Everything that must match between a subset run and its full-set twin (not n, not the subset seed)."""
    protocol, split, _n, _seed, max_new_tokens, stop, judge = json.loads(run["setting_key"])
    return json.dumps(
        [run["pair"], run["benchmark"], run["method"], run["params_key"], protocol, split, max_new_tokens, stop, judge],
        sort_keys=True,
    )


def twins(frame: pd.DataFrame, n: str | None = None) -> list[tuple[pd.Series, pd.Series]]:
    """(subset run, full run) pairs; the newest full run of each twin key. `n` keeps subsets of that size."""
    walked = frame["method"].map(lambda m: m in REGISTRY and not REGISTRY[m].scored)  # teacher forcing: no score
    usable = frame[frame["score"].notna() & ~walked]
    full = usable[usable["n_spec"] == "full"]
    part = usable[usable["n_spec"] != "full"]
    if n is not None:
        part = part[part["n_spec"] == str(n)]
    newest_full = {}
    for _, run in full.sort_values("created_at").iterrows():
        newest_full[_twin_key(run)] = run
    return [(run, newest_full[_twin_key(run)]) for _, run in part.iterrows() if _twin_key(run) in newest_full]


def compare(subset_run, full_run, draws: int = 10_000, seed: int = 0) -> dict:
    """The comparison of one subset run with its full-set twin (see the module docstring)."""
    sub, full = sample_scores(subset_run).dropna(), sample_scores(full_run).dropna()
    shared = sub.index.intersection(full.index)
    means = (
        stats.bootstrap_means(full.to_numpy(), draws, seed, size=len(sub), replace=False)
        if 0 < len(sub) <= len(full)
        else np.array([])
    )
    outputs = (
        pd.concat(
            [load_samples(r).set_index("id")["output"].rename(k) for k, r in (("sub", subset_run), ("full", full_run))],
            axis=1,
            join="inner",
        ).loc[shared]
        if len(shared)
        else pd.DataFrame(columns=["sub", "full"])
    )

    def right(scores: pd.Series) -> pd.Series:  # 0/1 scores only; on 1-5 scores 'right' is not defined
        return scores.loc[shared] >= 1

    def pct(q: float) -> float:
        return float(np.percentile(means, q)) if len(means) else math.nan

    binary = stats.is_binary(sub) and stats.is_binary(full)
    return {
        "pair": subset_run["pair"],
        "benchmark": subset_run["benchmark"],
        "method": subset_run["method"],
        "params": subset_run["params"],
        "subset_n": len(sub),
        "subset_score": float(sub.mean()) if len(sub) else math.nan,
        "full_n": len(full),
        "full_score": float(full.mean()) if len(full) else math.nan,
        "full_on_subset_ids": float(full.loc[shared].mean()) if len(shared) else math.nan,
        "n_shared": len(shared),
        "spread_p2_5": pct(2.5),
        "spread_p50": pct(50),
        "spread_p97_5": pct(97.5),
        "subset_percentile": float((means <= sub.mean()).mean()) if len(means) else math.nan,
        "score_agreement": float((sub.loc[shared] == full.loc[shared]).mean()) if len(shared) else math.nan,
        "output_agreement": float((outputs["sub"] == outputs["full"]).mean()) if len(outputs) else math.nan,
        "n_subset_only_right": int((right(sub) & ~right(full)).sum()) if binary else -1,
        "n_full_only_right": int((~right(sub) & right(full)).sum()) if binary else -1,
        "setting": subset_run["setting"],
        "subset_run": subset_run["run_dir"],
        "full_run": full_run["run_dir"],
    }


def compute(
    frame: pd.DataFrame, draws: int = 10_000, seed: int = 0, n: str | None = None, notes: list | None = None
) -> pd.DataFrame:
    """subset_vs_full.csv: one row per subset run with a full-set twin."""
    notes = [] if notes is None else notes
    rows = [compare(s, f, draws, seed) for s, f in twins(frame, n)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    if table.empty:
        notes.append(
            "no run has both a subset and a full-set twin (same pair, benchmark, method, parameters and "
            "protocol): run e.g. experiment=paper_table1 (n=100) and experiment=paper_table2 (full)"
        )
    return table


def _forest(ax, table: pd.DataFrame, xlabel: str):
    y = np.arange(len(table))
    ax.hlines(y, table["spread_p2_5"], table["spread_p97_5"], color="0.6", lw=5, label="2.5-97.5% of subset means")
    ax.scatter(table["spread_p50"], y, marker="|", s=200, color="0.2", label="median subset mean", zorder=3)
    ax.scatter(table["full_score"], y, marker="D", color=write.OKABE_ITO[0], label="full set", zorder=4)
    ax.scatter(table["subset_score"], y, marker="o", color=write.OKABE_ITO[3], label="stored subset run", zorder=5)
    ax.scatter(
        table["full_on_subset_ids"],
        y,
        marker="x",
        color=write.OKABE_ITO[2],
        s=60,
        label="full run on the subset's ids",
        zorder=6,
    )
    names = [
        f"{labels.pair_short(r['pair'])} · {labels.benchmark_label(r['benchmark'])} · "
        f"{labels.method_label(r['method'])} (n={r['subset_n']})"
        for _, r in table.iterrows()
    ]
    ax.set_yticks(y, names)
    ax.set_ylim(len(table) - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)


def plot(table: pd.DataFrame):
    """One row per subset run: the spread of subset means from the full run, and where its runs fall.
    Fractions and JustEval-Safe's 1-5 scores get separate panels (never one axis)."""
    judged = table["benchmark"].isin(labels.JUDGE_SCALE_BENCHMARKS)
    groups = [
        (g, x)
        for g, x in ((table[~judged], "score (fraction, 0-1)"), (table[judged], "safety score (1-5, LLM judge)"))
        if len(g)
    ]
    sizes = [len(g) for g, _ in groups] or [1]
    fig, axes = plt.subplots(
        len(sizes),
        1,
        figsize=(9, 0.55 * sum(sizes) + 1.2 * len(sizes) + 1.0),
        height_ratios=[s + 1.5 for s in sizes],
        squeeze=False,
        layout="constrained",
    )
    for ax, (group, xlabel) in zip(axes[:, 0], groups):
        _forest(ax, group, xlabel)
    if not groups:
        axes[0, 0].text(
            0.5, 0.5, "no subset run with a full-set twin", ha="center", va="center", transform=axes[0, 0].transAxes
        )
        axes[0, 0].set_axis_off()
    else:
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncol=3, frameon=False, fontsize=8.5)
    fig.suptitle("Subset vs full set: is the subset's score typical of the full set?", fontsize=12)
    return fig


@cli.command("subset")
def main(argv=None) -> int:
    parser = cli.parser("subset", __doc__)
    parser.add_argument(
        "--draws", type=cli.positive_int, default=10_000, help="subset draws from each full run (default 10000)"
    )
    args = parser.parse_args(argv)
    frame = cli.load(args)
    notes: list[str] = []
    table = compute(select.filter_runs(frame, None, args.protocol), args.draws, n=args.n, notes=notes)
    cli.require(
        table,
        "subset run with a full-set twin (same pair, benchmark, method, parameters and protocol)",
        frame,
        args,
        "Run e.g. experiment=paper_table1 (n=100) and experiment=paper_table2 (full)",
    )
    write.write_csv(table, args.out / "subset_vs_full.csv")
    write.save_figure(plot(table), args.out, "subset_vs_full")
    settings = sorted(set(table["setting"]))
    write.write_notes(args.out, "subset", "Subset vs full set", settings, notes)
    write.report_notes("subset", settings, notes)
    print(f"[subset] wrote {args.out / 'subset_vs_full.csv'} ({len(table)} subset runs with a full-set twin)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
