"""Figure 3, the intervention paradox: intervention vs score of each threshold rule's runs, per benchmark.

    python -m analysis.paradox [--results results] [--out results/analysis] [--n 100] [--protocol ours]

One point per pair (per pair and tau when a sweep stored several taus) in the chosen setting of each
benchmark and method (the one with the most runs, or the one named by --n/--protocol). Per
(benchmark, method, intervention unit): Pearson r and p, a 95% interval on r (Fisher z), Spearman
rho and p, and a permutation p (exact for up to 7 points, else 10,000 seeded permutations); no fit
with fewer than 3 points. Token-level (`nudging`) and word-level
(`nudging_words`, Fei et al.'s ratio) rates are never fitted together: each unit gets its own rows
and its own figure. Points are coloured by guidance-minus-base score where both single-model runs
exist in the same setting.

Every method with a threshold (`blendin.methods`: NUDGING's tau, a KAD deferral rule's threshold) gets
its own figure. The x axis is the method's intervention measure: the intervention rate (the share of
tokens where the guidance was applied) for NUDGING, the deferred mass (the mean share of the base's
probability handed to the guidance per token) for rules that defer part of a step; for NUDGING the two
are the same number.

Each point carries the 95% interval of its score (the run's own, from metrics.json) as an error bar:
at 12 items per run that bar is most of the axis. Writes paradox_points.csv (pair, benchmark,
method, tau, intervention_rate, score, base_score, run_dir, then unit, guidance_score, setting,
ci_low, ci_high, n, then threshold (the value of the method's threshold), measure and x (the plotted
value)), paradox.csv (benchmark, method, unit, n_points,
pearson_r, pearson_p, r_ci95_low, r_ci95_high, spearman_rho, spearman_p, permutation_p),
figure3.png/.pdf (token-level NUDGING; figure3_<method>.png for other methods; each only when it has
points) and paradox_notes.md.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm

from blendin.methods import REGISTRY

from . import cli, labels, select, stats, write

POINT_COLUMNS = [
    "pair",
    "benchmark",
    "method",
    "tau",
    "intervention_rate",
    "score",
    "base_score",
    "run_dir",
    "unit",
    "guidance_score",
    "setting",
    "ci_low",
    "ci_high",
    "n",
    "threshold",
    "measure",
    "x",
]
FIT_COLUMNS = [
    "benchmark",
    "method",
    "unit",
    "n_points",
    "pearson_r",
    "pearson_p",
    "r_ci95_low",
    "r_ci95_high",
    "spearman_rho",
    "spearman_p",
    "permutation_p",
]
# every method whose threshold traces a paradox: NUDGING (token and word level) and KAD's deferral rules
METHODS = tuple(name for name, spec in REGISTRY.items() if spec.threshold)
MEASURE_AXIS = {
    "intervention_rate": "intervention rate",
    "deferred_mass": "deferred mass",  # the share of the base's probability handed to the guidance
}
THRESHOLD = 0.20  # the paper's "excessive intervention" line


def _single_model_score(frame: pd.DataFrame, method: str) -> pd.Series:
    """Score of the newest `method` run per (pair, benchmark, setting_key)."""
    runs = frame[(frame["method"] == method) & frame["score"].notna()].sort_values("created_at", kind="stable")
    runs = runs.drop_duplicates(["pair", "benchmark", "setting_key"], keep="last")
    return runs.set_index(["pair", "benchmark", "setting_key"])["score"]


def compute_points(
    frame: pd.DataFrame, methods=METHODS, n: str | None = None, protocol: str | None = None, notes: list | None = None
) -> pd.DataFrame:
    """The points of Figure 3: one row per NUDGING-type run with a usable score and rate."""
    notes = [] if notes is None else notes
    frame = select.filter_runs(frame, n, protocol)
    runs = frame[frame["method"].isin(methods)]
    notes += select.excluded_notes(runs)
    measure = runs["measure"]
    runs = runs.assign(x=[float(r[m]) for (_, r), m in zip(runs.iterrows(), measure)])
    runs = runs[runs["score"].notna() & runs["x"].notna()]
    # per method too: word-level NUDGING may run under another protocol than token-level NUDGING
    chosen = select.choose_settings(runs, prefer_full=False, by=["benchmark", "method"])
    runs = select.in_chosen_settings(runs, chosen, by=["benchmark", "method"], notes=notes, what="paradox ")
    runs = select.newest(runs, ["pair", "benchmark", "method", "params_key", "setting_key"], notes, "paradox: ")
    base = _single_model_score(frame, "base")
    guidance = _single_model_score(frame, "guidance")
    keys = list(zip(runs["pair"], runs["benchmark"], runs["setting_key"]))
    points = pd.DataFrame(
        {
            "pair": runs["pair"].values,
            "benchmark": runs["benchmark"].values,
            "method": runs["method"].values,
            "tau": runs["tau"].values,
            "intervention_rate": runs["intervention_rate"].values,
            "score": runs["score"].values,
            "base_score": [base.get(k, math.nan) for k in keys],
            "run_dir": runs["run_dir"].values,
            "unit": runs["intervention_unit"].values,
            "guidance_score": [guidance.get(k, math.nan) for k in keys],
            "setting": runs["setting"].values,
            "ci_low": runs["ci_low"].values,
            "ci_high": runs["ci_high"].values,
            "n": runs["n_samples"].values,
            "threshold": [_threshold(m, p) for m, p in zip(runs["method"], runs["method_params"])],
            "measure": runs["measure"].values,
            "x": runs["x"].values,
        },
        columns=POINT_COLUMNS,
    )
    order = {b: i for i, b in enumerate(labels.order_benchmarks(points["benchmark"]))}

    def benchmark_first(column: pd.Series) -> pd.Series:
        return column.map(order) if column.name == "benchmark" else column

    return points.sort_values(
        ["benchmark", "method", "pair", "tau"], key=benchmark_first, kind="stable", ignore_index=True
    )


def _threshold(method: str, params_json: str) -> float:
    """The value of the method's threshold parameter in a run (NaN where it has none)."""
    import json

    name = REGISTRY[method].threshold if method in REGISTRY else None
    value = json.loads(params_json).get(name) if name else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def fit(points: pd.DataFrame, n_permutations: int = 10_000, seed: int = 0) -> dict:
    """The correlation statistics of one group of points; refuses a mix of intervention units."""
    select.require_one_unit(points["unit"], "this fit")
    x = points["x"] if "x" in points else points["intervention_rate"]  # points built before x existed
    return stats.correlation(x, points["score"], n_permutations, seed)


def compute(
    frame: pd.DataFrame,
    methods=METHODS,
    n: str | None = None,
    protocol: str | None = None,
    n_permutations: int = 10_000,
    seed: int = 0,
    notes: list | None = None,
    points: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """paradox.csv: one row per (benchmark, method, unit) of the points (`compute_points`)."""
    notes = [] if notes is None else notes
    points = compute_points(frame, methods, n, protocol, notes) if points is None else points
    rows = []
    for (benchmark, method, unit), group in points.groupby(["benchmark", "method", "unit"], sort=False):
        result = fit(group, n_permutations, seed)
        if len(group) < 3:
            notes.append(f"{benchmark} / {method} ({unit}): {len(group)} point(s), fewer than 3: no fit")
        rows.append({"benchmark": benchmark, "method": method, "unit": unit, **result})
    return pd.DataFrame(rows, columns=FIT_COLUMNS)


_SYMBOL = {"tau": "τ", "threshold": "λ"}  # how a threshold is written beside its point


def _unit_axis(unit: str) -> str:
    return "% of generated words" if unit == "word" else "% of generated tokens"


def _y_label(benchmark: str) -> str:
    if benchmark in labels.JUDGE_SCALE_BENCHMARKS:
        return "safety score (1-5, LLM judge)"
    return "score (fraction correct, 0-1)"


def _eq_p(p) -> str:
    """'= 0.013' or '< 0.001' (for 'p = 0.013' / 'p < 0.001')."""
    text = write.fmt_p(p)
    return f"< {text[1:]}" if text.startswith("<") else f"= {text}"


def _panel(ax, group: pd.DataFrame, fit_row, norm, cmap):
    x = 100 * group["x"].to_numpy(float)
    y = group["score"].to_numpy(float)
    gap = (group["guidance_score"] - group["base_score"]).to_numpy(float)
    has = np.isfinite(gap)
    low, high = group["ci_low"].to_numpy(float), group["ci_high"].to_numpy(float)
    bars = np.isfinite(low) & np.isfinite(high)
    if bars.any():  # each point is one run's score: its own 95% interval
        yerr = np.vstack([np.clip(y - low, 0, None), np.clip(high - y, 0, None)])[:, bars]
        ax.errorbar(x[bars], y[bars], yerr=yerr, fmt="none", ecolor="0.55", elinewidth=1.2, capsize=3, zorder=2)
    ax.axvline(100 * THRESHOLD, color="0.4", ls="--", lw=1)
    ax.annotate(
        "20%",
        (100 * THRESHOLD, 0),
        xycoords=("data", "axes fraction"),
        xytext=(3, 4),
        textcoords="offset points",
        fontsize=9,
        color="0.3",
    )
    sc = None
    if has.any():
        sc = ax.scatter(x[has], y[has], c=gap[has], cmap=cmap, norm=norm, s=55, edgecolor="0.2", lw=0.6, zorder=3)
    if (~has).any():
        ax.scatter(
            x[~has],
            y[~has],
            marker="^",
            color="0.6",
            edgecolor="0.3",
            s=60,
            lw=0.6,
            zorder=3,
            label="no guidance/base run",
        )
    if len(group) <= 8:  # few points: name them (one pair: the threshold alone says which point)
        several_tau = group.groupby("pair")["threshold"].nunique().max() > 1
        symbol = (
            _SYMBOL.get(REGISTRY[group["method"].iloc[0]].threshold or "", "t")
            if group["method"].iloc[0] in REGISTRY
            else "τ"
        )
        one_pair = group["pair"].nunique() == 1
        order = np.argsort(x)
        for rank, i in enumerate(order):
            row = group.iloc[i]
            tau = f"{symbol}={row['threshold']:g}" if several_tau else ""
            text = tau if one_pair and tau else (labels.pair_short(row["pair"]) + (" " + tau if tau else ""))
            # alternate above and below the point, so that neighbours on one score level do not overlap
            ax.annotate(
                text,
                (x[i], y[i]),
                xytext=(0, 7 if rank % 2 == 0 else -12),
                textcoords="offset points",
                fontsize=8,
                color="0.25",
                ha="center",
            )
    slope, intercept = stats.fit_line(group["x"], group["score"])
    if fit_row is not None and np.isfinite(fit_row["pearson_r"]):
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, intercept + slope * xs / 100, color="#D55E00", lw=1.8, zorder=2)
        ci = (
            f" [{fit_row['r_ci95_low']:.2f}, {fit_row['r_ci95_high']:.2f}]"
            if np.isfinite(fit_row["r_ci95_low"])
            else ""
        )
        text = (
            f"r = {fit_row['pearson_r']:.2f}{ci}\np {_eq_p(fit_row['pearson_p'])}, "
            f"perm. p {_eq_p(fit_row['permutation_p'])}\n"
            f"ρ = {fit_row['spearman_rho']:.2f}, n = {int(fit_row['n_points'])}"
        )
    else:
        text = f"n = {len(group)}: no fit\n(fewer than 3 points)" if len(group) < 3 else "no fit (constant values)"
    ax.text(
        0.98,
        0.97,
        text,
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=9,
        bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.7", alpha=0.9),
    )
    ax.grid(alpha=0.25)
    ax.set_xlim(left=0, right=max(25.0, x.max() * 1.2 if len(x) else 25.0))
    ax.margins(y=0.12)
    judged = group["benchmark"].isin(labels.JUDGE_SCALE_BENCHMARKS).any()
    lower, upper = (1.0, 5.0) if judged else (-0.02, 1.02)
    if len(group) < 3:  # no fit to show: the whole scale, so that one point is not magnified into a trend
        ax.set_ylim(lower, upper)
    else:
        shown = np.concatenate([y, low[bars], high[bars]])
        write.min_span(ax, shown, 0.8 if judged else 0.2, lower, upper)
    return sc


def plot(
    points: pd.DataFrame,
    fits: pd.DataFrame,
    method: str = "nudging",
    unit: str = "token",
    frame: pd.DataFrame | None = None,
):
    """One panel per benchmark for one (method, unit): points with their intervals, fit line, r and p, the 20%
    line. `frame` (the runs) only turns the footer's settings into short lines."""
    pts = points[(points["method"] == method) & (points["unit"] == unit)]
    measure = pts["measure"].iloc[0] if len(pts) else "intervention_rate"
    benchmarks = labels.order_benchmarks(pts["benchmark"])
    ncols = min(3, max(1, len(benchmarks)))
    nrows = max(1, math.ceil(len(benchmarks) / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.8 * ncols + 1.2, 4.0 * nrows + 0.9), squeeze=False, layout="constrained"
    )
    cmap = plt.get_cmap("PuOr")
    gaps = pts["guidance_score"] - pts["base_score"]
    frac = gaps[~pts["benchmark"].isin(labels.JUDGE_SCALE_BENCHMARKS)].abs().max()
    judge = gaps[pts["benchmark"].isin(labels.JUDGE_SCALE_BENCHMARKS)].abs().max()
    norm_frac = TwoSlopeNorm(0, -(frac if frac > 0 else 1), frac if frac > 0 else 1)
    norm_judge = TwoSlopeNorm(0, -(judge if judge > 0 else 1), judge if judge > 0 else 1)
    shared = None
    for ax, benchmark in zip(axes.flat, benchmarks):
        group = pts[pts["benchmark"] == benchmark]
        fit_row = fits[(fits["benchmark"] == benchmark) & (fits["method"] == method) & (fits["unit"] == unit)]
        judge_scale = benchmark in labels.JUDGE_SCALE_BENCHMARKS
        sc = _panel(
            ax, group, fit_row.iloc[0] if len(fit_row) else None, norm_judge if judge_scale else norm_frac, cmap
        )
        ax.set_title(labels.benchmark_label(benchmark))
        axis = "% of the base's probability per token" if measure == "deferred_mass" else _unit_axis(unit)
        ax.set_xlabel(f"{MEASURE_AXIS[measure]} ({axis})")
        ax.set_ylabel(_y_label(benchmark))
        if judge_scale and sc is not None:
            fig.colorbar(sc, ax=ax, shrink=0.9, pad=0.02).set_label("guidance − base (1-5 scale)", fontsize=9)
        elif sc is not None:
            shared = sc
    for ax in list(axes.flat)[len(benchmarks) :]:
        ax.set_visible(False)
    if not benchmarks:
        axes[0, 0].set_visible(True)
        axes[0, 0].text(0.5, 0.5, "no runs to plot", ha="center", va="center", transform=axes[0, 0].transAxes)
        axes[0, 0].set_axis_off()
    if shared is not None:
        fig.colorbar(
            shared, ax=[a for a in axes.flat if a.get_visible()], shrink=0.45, aspect=40, pad=0.02, location="bottom"
        ).set_label(
            "point colour: guidance − base score (fraction; grey "
            "triangles: no guidance or base run in the same setting)"
        )
    symbol = _SYMBOL.get(REGISTRY[method].threshold or "", "τ") if method in REGISTRY else "τ"
    several = pts.groupby("pair")["threshold"].nunique().max() > 1
    per = f"one point per pair and {symbol}" if several else "one point per pair"
    n = sorted({int(v) for v in pts["n"] if np.isfinite(v)})
    items = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}" if n else "?"
    fig.suptitle(
        f"Figure 3: {MEASURE_AXIS[measure].split(' (')[0]} vs score ({labels.method_label(method)}, {unit}-level); "
        f"{per}\nbars: each run's 95% interval ({items} items per run)"
        + (f"; λ: the rule's threshold ({REGISTRY[method].summary.split(', ', 1)[-1]})" if symbol == "λ" else ""),
        fontsize=13,
    )
    settings = select.short_settings([f"x: {s}" for s in pts["setting"]], frame)
    fig.text(
        0.01,
        -0.02,
        textwrap.fill("Settings: " + settings + ". Stop strings per benchmark: see paradox_notes.md.", 160),
        fontsize=8,
        color="0.3",
        va="top",
    )
    return fig


@cli.command("paradox")
def main(argv=None) -> int:
    parser = cli.parser("paradox", __doc__)
    parser.add_argument(
        "--permutations", type=cli.positive_int, default=10_000, help="permutation budget (default 10000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random permutations (default 0)")
    args = parser.parse_args(argv)
    frame = cli.load(args)
    notes: list[str] = []
    points = compute_points(frame, n=args.n, protocol=args.protocol, notes=notes)
    cli.require(
        points,
        "NUDGING run (nudging or nudging_words) with a score and an intervention rate",
        frame,
        args,
        "Run e.g. python -m blendin.run -m experiment=paper_fig2",
    )
    fits = compute(frame, points=points, n_permutations=args.permutations, seed=args.seed, notes=notes)
    write.write_csv(points, args.out / "paradox_points.csv")
    write.write_csv(fits, args.out / "paradox.csv")
    for method, unit in sorted(set(zip(points["method"], points["unit"]))):
        stem = "figure3" if (method, unit) == ("nudging", "token") else f"figure3_{method}"
        write.save_figure(plot(points, fits, method, unit, frame), args.out, stem)
    settings = sorted(
        set(f"{b}: {s}; unit: {u}" for b, s, u in zip(points["benchmark"], points["setting"], points["unit"]))
    )
    write.write_notes(args.out, "paradox", "Figure 3 (paradox)", settings, notes)
    write.report_notes("paradox", settings, notes)
    fitted = int(fits["pearson_r"].notna().sum())
    unfitted = (
        f" ({len(fits) - fitted} with fewer than 3 points or constant values: no fit)" if fitted < len(fits) else ""
    )
    print(
        f"[paradox] wrote {args.out / 'paradox.csv'}: {fitted} fit(s) of {len(fits)} benchmark group(s){unfitted}, "
        f"{len(points)} points"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
