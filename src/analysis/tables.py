"""Tables 1, 2, 3, 5 and 6 of the paper, from stored runs, with intervals and paired tests.

    python -m analysis.tables [--results results] [--out results/analysis] [--ci bootstrap|wald]
                              [--n-boot 2000] [--n 100] [--protocol ours]

- Table 1: base, guidance, aligned, NUDGING and BlendIn per pair and benchmark, BlendIn's change
  over NUDGING in %, NUDGING's intervention rate, and the paired p of BlendIn vs NUDGING.
- Table 2: NUDGING vs BlendIn on the full test sets (runs with benchmark.n=full).
- Table 3: NUDGING, intervention capping (cap) and BlendIn on GSM8K, NUDGING's rate in the header.
- Table 5: BlendIn's tau sweep (alpha auto) and alpha sweep (tau 0.4), per pair.
- Table 6: NUDGING, the discrete filters (af, cc, af_cc) and BlendIn.
- Table 4 is computed by `python -m analysis.overlap`; when its table4.csv exists, this command
  also writes table4.md/.tex from it.

Every score comes with a 95% interval from its per-sample scores: percentile bootstrap of the mean
(default, --n-boot resamples, fixed seed) or Wald (--ci wald; the paper's Table 2 used Wald). Every
method is compared with NUDGING of the same pair, benchmark and setting on the SAME sample ids:
exact McNemar for 0/1 scores, a paired bootstrap otherwise (analysis.stats.paired_test), with the
minimum detectable difference at that n (alpha 0.05, power 0.8; analysis.stats.mdd_paired_binary).
Each table uses one setting per benchmark (the one with the most runs, or --n/--protocol); a cell
without its run is "n/a", never 0. Scores are fractions except JustEval-Safe (1-5, judge only).

Writes tableN.csv (machine-readable; table1.csv has exactly: pair, benchmark, base, guidance,
aligned, nudging, blendin, blendin_vs_nudging_pct, intervention_rate, paired_p), tableN.md and
tableN.tex (the paper's layout, intervals in the cells), tableN_cells.csv (one row per cell: score,
interval, n, paired test, MDD, setting, run) and tables_notes.md.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd

from . import cli, labels, select, stats, write
from .load import sample_scores

CELL_COLUMNS = [
    "table",
    "pair",
    "benchmark",
    "method",
    "tau",
    "alpha",
    "score",
    "ci_low",
    "ci_high",
    "ci_method",
    "n",
    "score_name",
    "intervention_rate",
    "unit",
    "vs_nudging_test",
    "vs_nudging_diff",
    "vs_nudging_p",
    "vs_nudging_n",
    "mdd",
    "setting",
    "run_dir",
]
TABLE1_COLUMNS = [
    "pair",
    "benchmark",
    "base",
    "guidance",
    "aligned",
    "nudging",
    "blendin",
    "blendin_vs_nudging_pct",
    "intervention_rate",
    "paired_p",
]


class DefaultParams(TypedDict):
    tau: float
    alpha: str
    top_k: float


DEFAULT_PARAMS: DefaultParams = {"tau": 0.4, "alpha": "auto", "top_k": 100.0}


@functools.lru_cache(maxsize=512)
def _scores(run_dir: str, excluded: str) -> pd.Series:
    """Per-sample scores of a run (cached: a run appears in several tables)."""
    scores = sample_scores(run_dir)
    return scores * np.nan if excluded else scores


def scores_of(run) -> pd.Series:
    return _scores(run["run_dir"], run["score_excluded"])


# ---- choosing runs --------------------------------------------------------------------------------


def table_runs(
    frame, methods, benchmarks=None, only_full=False, n=None, protocol=None, notes=None, what=""
) -> pd.DataFrame:
    """The runs of one table: its methods, one setting per benchmark, usable scores only."""
    notes = [] if notes is None else notes
    runs = select.filter_runs(frame, n, protocol)
    runs = runs[runs["method"].isin(methods)]
    if benchmarks is not None:
        runs = runs[runs["benchmark"].isin(benchmarks)]
    if only_full:
        runs = runs[runs["n_spec"] == "full"]
    notes += [f"{what}{line}" for line in select.excluded_notes(runs)]
    runs = runs[runs["score"].notna()]
    chosen = select.choose_settings(runs, prefer_full=only_full)
    return select.in_chosen_settings(runs, chosen, notes=notes, what=what)


def settings_of(cells: pd.DataFrame, what: str) -> list[str]:
    """'table N: benchmark: setting' lines of the cells a table shows."""
    pairs = sorted(set(zip(cells["benchmark"], cells["setting"])))
    return [f"{what}{benchmark}: {setting}" for benchmark, setting in pairs]


def _matches_defaults(run) -> int:
    """How many of the default parameters (tau 0.4, alpha auto, top-k 100) a run has, of those it uses."""
    hits = 0
    if np.isfinite(run["tau"]) and math.isclose(run["tau"], DEFAULT_PARAMS["tau"]):
        hits += 1
    if run["alpha"] == DEFAULT_PARAMS["alpha"]:
        hits += 1
    if np.isfinite(run["top_k"]) and run["top_k"] == DEFAULT_PARAMS["top_k"]:
        hits += 1
    return hits


def pick_default(runs: pd.DataFrame, notes: list, what: str) -> pd.Series | None:
    """One run of a cell: the one closest to the default parameters, newest first; notes the others."""
    if runs.empty:
        return None
    ranked = runs.assign(_hits=runs.apply(_matches_defaults, axis=1)).sort_values(["_hits", "created_at"])
    chosen = ranked.iloc[-1]
    if len(runs) > 1 and runs["params_key"].nunique() > 1:
        notes.append(f"{what}: {len(runs)} runs with different parameters; used [{chosen['params']}]")
    return chosen.drop("_hits")


# ---- one cell -------------------------------------------------------------------------------------


def cell(run, reference, table: str, ci: str = "bootstrap", n_boot: int = 2000, seed: int = 0) -> dict:
    """Score, 95% interval and the paired comparison with `reference` (the NUDGING run) of one run."""
    scores = scores_of(run).dropna()
    mean, low, high = stats.mean_ci(scores.to_numpy(), ci, n_boot, seed)
    if len(scores) == 0:  # no per-sample scores stored: fall back to the run's own metrics
        mean, low, high = run["score"], run["ci_low"], run["ci_high"]
    out = {
        "table": table,
        "pair": run["pair"],
        "benchmark": run["benchmark"],
        "method": run["method"],
        "tau": run["tau"],
        "alpha": run["alpha"],
        "score": mean,
        "ci_low": low,
        "ci_high": high,
        "ci_method": ci if len(scores) else "stored",
        "n": len(scores),
        "score_name": run["score_name"],
        "intervention_rate": run["intervention_rate"],
        "unit": run["intervention_unit"],
        "vs_nudging_test": "",
        "vs_nudging_diff": math.nan,
        "vs_nudging_p": math.nan,
        "vs_nudging_n": 0,
        "mdd": math.nan,
        "setting": run["setting"],
        "run_dir": run["run_dir"],
    }
    if reference is not None and run["run_dir"] != reference["run_dir"]:
        paired = pd.concat(
            [scores_of(reference).rename("ref"), scores_of(run).rename("run")], axis=1, join="inner"
        ).dropna()
        result = stats.paired_test(paired["ref"].to_numpy(), paired["run"].to_numpy(), n_boot, seed)
        out.update(
            vs_nudging_test=result["test"],
            vs_nudging_diff=result["diff"],
            vs_nudging_p=result["p"],
            vs_nudging_n=result["n"],
            mdd=result["mdd"],
        )
    return out


def has_any(*methods):
    """A `keep` for grid_cells: the (pair, benchmark) rows with a run of one of `methods`."""

    def keep(pair, benchmark, group) -> bool:
        return bool(group["method"].isin(methods).any())

    return keep


def grid_cells(
    runs: pd.DataFrame, table: str, methods, ci="bootstrap", n_boot=2000, notes=None, keep=None
) -> pd.DataFrame:
    """One cell per (pair, benchmark, method) of `runs`, each compared with that pair's NUDGING run.

    `keep(pair, benchmark, runs_of_cell)` decides which (pair, benchmark) rows the table has."""
    notes = [] if notes is None else notes
    rows = []
    for (pair, benchmark), group in runs.groupby(["pair", "benchmark"], sort=False):
        if keep is not None and not keep(pair, benchmark, group):
            continue
        nudging = pick_default(group[group["method"] == "nudging"], notes, f"{table} {pair}/{benchmark}/nudging")
        for method in methods:
            run = (
                nudging
                if method == "nudging"
                else pick_default(group[group["method"] == method], notes, f"{table} {pair}/{benchmark}/{method}")
            )
            if run is not None:
                rows.append(cell(run, nudging, table, ci, n_boot))
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def _value(cells: pd.DataFrame, pair, benchmark, method, column="score"):
    hit = cells[(cells["pair"] == pair) & (cells["benchmark"] == benchmark) & (cells["method"] == method)]
    return hit[column].iloc[0] if len(hit) else math.nan


def _ci_text(cells, pair, benchmark, method) -> str:
    hit = cells[(cells["pair"] == pair) & (cells["benchmark"] == benchmark) & (cells["method"] == method)]
    if hit.empty:
        return write.MISSING
    row = hit.iloc[0]
    return write.fmt_ci(row["score"], row["ci_low"], row["ci_high"])


def _pct_change(new, old) -> float:
    """100 * (new - old) / old; NaN when old is 0 or missing (a change over nothing is undefined)."""
    if write.is_missing(new) or write.is_missing(old) or old == 0:
        return math.nan
    return 100 * (new - old) / old


def _ordered(cells: pd.DataFrame) -> list[tuple[str, str]]:
    keys = list(dict.fromkeys(zip(cells["pair"], cells["benchmark"])))
    pair_rank = {p: i for i, p in enumerate(labels.order_table_pairs([k[0] for k in keys]))}
    bench_rank = {b: i for i, b in enumerate(labels.order_benchmarks([k[1] for k in keys]))}
    return sorted(keys, key=lambda k: (bench_rank[k[1]], pair_rank[k[0]]))


# ---- the tables -----------------------------------------------------------------------------------

T1_METHODS = ["base", "guidance", "aligned", "nudging", "blendin"]


def table1(frame, ci="bootstrap", n_boot=2000, n=None, protocol=None, notes=None, settings=None):
    """(table1.csv frame, cells): every (pair, benchmark) with a NUDGING or BlendIn run."""
    runs = table_runs(frame, T1_METHODS, n=n, protocol=protocol, notes=notes, what="table 1: ")
    cells = grid_cells(runs, "table1", T1_METHODS, ci, n_boot, notes, keep=has_any("nudging", "blendin"))
    if settings is not None:
        settings += settings_of(cells, "table 1: ")
    rows = []
    for pair, benchmark in _ordered(cells):
        nudging, blendin = _value(cells, pair, benchmark, "nudging"), _value(cells, pair, benchmark, "blendin")
        rows.append(
            {
                "pair": pair,
                "benchmark": benchmark,
                **{m: _value(cells, pair, benchmark, m) for m in T1_METHODS},
                "blendin_vs_nudging_pct": _pct_change(blendin, nudging),
                "intervention_rate": _value(cells, pair, benchmark, "nudging", "intervention_rate"),
                "paired_p": _value(cells, pair, benchmark, "blendin", "vs_nudging_p"),
            }
        )
    table = pd.DataFrame(rows, columns=TABLE1_COLUMNS)
    select.require_one_unit(cells[cells["method"] == "nudging"]["unit"], "table 1's intervention-rate column")
    return table, cells


def table1_blocks(table: pd.DataFrame, cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Table 1 in the paper's layout: one block per benchmark, cross-family pairs then within-family."""
    blocks = []
    for benchmark in labels.order_benchmarks(table["benchmark"]):
        rows = []
        part = table[table["benchmark"] == benchmark]
        for kind in ("cross-family", "within-family", "other"):
            mine = part[part["pair"].map(labels.family_kind) == kind]
            if mine.empty:
                continue
            rows.append({"Pair": f"{kind.capitalize()} pairs"})
            for _, r in mine.iterrows():
                pair = r["pair"]
                pct = r["blendin_vs_nudging_pct"]
                change = "" if write.is_missing(pct) else f" ({pct:+.0f}%)"
                ours = _ci_text(cells, pair, benchmark, "blendin") + change
                rows.append(
                    {
                        "Pair": labels.pair_short(pair),
                        **{labels.method_label(m): _ci_text(cells, pair, benchmark, m) for m in T1_METHODS[:-1]},
                        "Ours (BlendIn)": ours,
                        "Int.%": write.fmt_pct(r["intervention_rate"]),
                        "p (paired)": write.fmt_p(r["paired_p"]),
                        "MDD": write.fmt(_value(cells, pair, benchmark, "blendin", "mdd")),
                    }
                )
        cols = (
            ["Pair"]
            + [labels.method_label(m) for m in T1_METHODS[:-1]]
            + ["Ours (BlendIn)", "Int.%", "p (paired)", "MDD"]
        )
        blocks.append((labels.benchmark_label(benchmark), pd.DataFrame(rows, columns=cols).fillna("")))
    return blocks


def table2(frame, ci="bootstrap", n_boot=2000, protocol=None, notes=None, settings=None):
    """Full test sets, NUDGING vs BlendIn."""
    runs = table_runs(frame, ["nudging", "blendin"], only_full=True, protocol=protocol, notes=notes, what="table 2: ")
    cells = grid_cells(runs, "table2", ["nudging", "blendin"], ci, n_boot, notes)
    if settings is not None:
        settings += settings_of(cells, "table 2: ")
    rows = []
    for pair, benchmark in _ordered(cells):
        get = functools.partial(_value, cells, pair, benchmark)
        rows.append(
            {
                "benchmark": benchmark,
                "pair": pair,
                "intervention_rate": get("nudging", "intervention_rate"),
                "unit": get("nudging", "unit") if not write.is_missing(get("nudging", "unit")) else "",
                "nudging": get("nudging"),
                "nudging_ci_low": get("nudging", "ci_low"),
                "nudging_ci_high": get("nudging", "ci_high"),
                "blendin": get("blendin"),
                "blendin_ci_low": get("blendin", "ci_low"),
                "blendin_ci_high": get("blendin", "ci_high"),
                "n": get("blendin", "vs_nudging_n"),
                "paired_test": get("blendin", "vs_nudging_test"),
                "paired_p": get("blendin", "vs_nudging_p"),
                "mdd": get("blendin", "mdd"),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "benchmark",
            "pair",
            "intervention_rate",
            "unit",
            "nudging",
            "nudging_ci_low",
            "nudging_ci_high",
            "blendin",
            "blendin_ci_low",
            "blendin_ci_high",
            "n",
            "paired_test",
            "paired_p",
            "mdd",
        ],
    ), cells


def table2_blocks(table, cells):
    rows = [
        {
            "Dataset": labels.benchmark_label(r["benchmark"]),
            "Pair": labels.pair_short(r["pair"]),
            "Int. %": write.fmt_pct(r["intervention_rate"]),
            "NUDGING": _ci_text(cells, r["pair"], r["benchmark"], "nudging"),
            "Ours": _ci_text(cells, r["pair"], r["benchmark"], "blendin"),
            "p (paired)": write.fmt_p(r["paired_p"]),
            "MDD": write.fmt(r["mdd"]),
        }
        for _, r in table.iterrows()
    ]
    return [("", pd.DataFrame(rows, columns=["Dataset", "Pair", "Int. %", "NUDGING", "Ours", "p (paired)", "MDD"]))]


T3_METHODS = ["nudging", "cap", "blendin"]


def table3(frame, ci="bootstrap", n_boot=2000, n=None, protocol=None, notes=None, settings=None):
    """GSM8K: NUDGING, cap, BlendIn for every pair with a cap run."""
    runs = table_runs(frame, T3_METHODS, benchmarks=["gsm8k"], n=n, protocol=protocol, notes=notes, what="table 3: ")
    cells = grid_cells(runs, "table3", T3_METHODS, ci, n_boot, notes, keep=has_any("cap"))
    if settings is not None:
        settings += settings_of(cells, "table 3: ")
    rows = []
    for pair, benchmark in _ordered(cells):
        get = functools.partial(_value, cells, pair, benchmark)
        rows.append(
            {
                "pair": pair,
                "benchmark": benchmark,
                "intervention_rate": get("nudging", "intervention_rate"),
                "unit": get("nudging", "unit"),
                "nudging": get("nudging"),
                "cap": get("cap"),
                "blendin": get("blendin"),
                "cap_vs_nudging_p": get("cap", "vs_nudging_p"),
                "blendin_vs_nudging_p": get("blendin", "vs_nudging_p"),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "pair",
            "benchmark",
            "intervention_rate",
            "unit",
            "nudging",
            "cap",
            "blendin",
            "cap_vs_nudging_p",
            "blendin_vs_nudging_p",
        ],
    ), cells


def table3_blocks(table, cells):
    """Rows = methods, columns = pairs with NUDGING's intervention rate in the header (as printed)."""
    header = {
        r["pair"]: f"{labels.pair_short(r['pair'])} ({write.fmt_pct(r['intervention_rate'], 0)})"
        for _, r in table.iterrows()
    }
    names = {"nudging": "NUDGING", "cap": "Cap (15%)", "blendin": "Ours"}
    rows = []
    for method in T3_METHODS:
        row = {"Method": names[method]}
        for pair in table["pair"]:
            text = _ci_text(cells, pair, "gsm8k", method)
            p = _value(cells, pair, "gsm8k", method, "vs_nudging_p")
            row[header[pair]] = text + ("" if method == "nudging" or write.is_missing(p) else f" p={write.fmt_p(p)}")
        rows.append(row)
    return [("GSM8K", pd.DataFrame(rows, columns=["Method", *header.values()]))]


def table5(frame, ci="bootstrap", n_boot=2000, n=None, protocol=None, notes=None, settings=None):
    """BlendIn sweeps: tau with alpha auto, alpha with tau 0.4; one row per (pair, sweep, value, benchmark)."""
    notes = [] if notes is None else notes
    runs = select.filter_runs(frame, n, protocol)
    runs = runs[(runs["method"] == "blendin") & runs["score"].notna()]
    # a sweep lives within one (pair, benchmark): choose its setting there (the paper's: full test sets)
    chosen = select.choose_settings(runs, prefer_full=True, by=["pair", "benchmark"])
    runs = select.in_chosen_settings(runs, chosen, by=["pair", "benchmark"])
    runs = select.newest(runs, ["pair", "benchmark", "params_key", "setting_key"], notes, "table 5: ")
    rows = []
    for (pair, benchmark), group in runs.groupby(["pair", "benchmark"], sort=False):
        if group["params_key"].nunique() < 2:
            continue  # one BlendIn setting is not a sweep
        sweeps = [
            ("tau", group[group["alpha"] == "auto"]),
            ("alpha", group[np.isclose(group["tau"].astype(float), DEFAULT_PARAMS["tau"])]),
        ]
        for sweep, members in sweeps:
            for _, run in members.iterrows():
                c = cell(run, None, "table5", ci, n_boot)
                rows.append(
                    {
                        "pair": pair,
                        "sweep": sweep,
                        "tau": run["tau"],
                        "alpha": run["alpha"],
                        "top_k": run["top_k"],
                        "benchmark": benchmark,
                        "score": c["score"],
                        "ci_low": c["ci_low"],
                        "ci_high": c["ci_high"],
                        "n": c["n"],
                        "intervention_rate": run["intervention_rate"],
                        "unit": run["intervention_unit"],
                        "setting": run["setting"],
                        "run_dir": run["run_dir"],
                    }
                )
    table = pd.DataFrame(
        rows,
        columns=[
            "pair",
            "sweep",
            "tau",
            "alpha",
            "top_k",
            "benchmark",
            "score",
            "ci_low",
            "ci_high",
            "n",
            "intervention_rate",
            "unit",
            "setting",
            "run_dir",
        ],
    )
    if settings is not None:
        settings += settings_of(table, "table 5: ")
    if not table.empty:
        rank = {p: i for i, p in enumerate(labels.order_table_pairs(table["pair"]))}
        alpha_rank = table["alpha"].map(lambda a: 2.0 if a == "auto" else float(a or -1))
        table = (
            table.assign(_p=table["pair"].map(rank), _a=alpha_rank)
            .sort_values(["_p", "sweep", "tau", "_a"], ascending=[True, False, True, True], kind="stable")
            .drop(columns=["_p", "_a"])
        )
    return table.reset_index(drop=True)


def table5_blocks(table):
    blocks = []
    for (pair, sweep), part in table.groupby(["pair", "sweep"], sort=False):
        benchmarks = labels.order_benchmarks(part["benchmark"])
        key = "tau" if sweep == "tau" else "alpha"
        rows = []
        for value, group in part.groupby(key, sort=False):
            label = f"{value:g}" if isinstance(value, float) else str(value).capitalize()
            extra = (
                ""
                if group["top_k"].isna().all() or (group["top_k"] == DEFAULT_PARAMS["top_k"]).all()
                else " (top_k " + ", ".join(sorted({str(t) for t in group["top_k"]})) + ")"
            )
            row = {("τ" if sweep == "tau" else "α"): label + extra}
            for benchmark in benchmarks:
                hit = group[group["benchmark"] == benchmark]
                row[labels.benchmark_label(benchmark)] = (
                    write.fmt_ci(*hit[["score", "ci_low", "ci_high"]].iloc[0]) if len(hit) else write.MISSING
                )
            rows.append(row)
        title = (
            f"{labels.pair_short(pair)}: τ sweep with α = auto"
            if sweep == "tau"
            else f"{labels.pair_short(pair)}: α sweep with τ = 0.4"
        )
        blocks.append((title, pd.DataFrame(rows)))
    return blocks


T6_METHODS = ["nudging", "af", "cc", "af_cc", "blendin"]


def table6(frame, ci="bootstrap", n_boot=2000, n=None, protocol=None, notes=None, settings=None):
    """NUDGING, the discrete filters and BlendIn, for every (pair, benchmark) with a filter run."""
    runs = table_runs(frame, T6_METHODS, n=n, protocol=protocol, notes=notes, what="table 6: ")
    cells = grid_cells(runs, "table6", T6_METHODS, ci, n_boot, notes, keep=has_any("af", "cc", "af_cc"))
    if settings is not None:
        settings += settings_of(cells, "table 6: ")
    rows = []
    for pair, benchmark in _ordered(cells):
        get = functools.partial(_value, cells, pair, benchmark)
        rows.append(
            {
                "pair": pair,
                "benchmark": benchmark,
                **{m: get(m) for m in T6_METHODS},
                **{f"{m}_vs_nudging_p": get(m, "vs_nudging_p") for m in T6_METHODS if m != "nudging"},
            }
        )
    cols = ["pair", "benchmark", *T6_METHODS] + [f"{m}_vs_nudging_p" for m in T6_METHODS if m != "nudging"]
    return pd.DataFrame(rows, columns=cols), cells


def table6_blocks(table, cells):
    """Rows = methods, columns = pairs, one block per benchmark (the paper's layout)."""
    names = {"nudging": "NUDG.", "af": "AF", "cc": "CC", "af_cc": "AF+CC", "blendin": "Ours"}
    blocks = []
    for benchmark in labels.order_benchmarks(table["benchmark"]):
        pairs = list(table[table["benchmark"] == benchmark]["pair"])
        rows = []
        for method in T6_METHODS:
            row = {"Method": names[method]}
            for pair in pairs:
                p = _value(cells, pair, benchmark, method, "vs_nudging_p")
                row[labels.pair_short(pair)] = _ci_text(cells, pair, benchmark, method) + (
                    "" if method == "nudging" or write.is_missing(p) else f" p={write.fmt_p(p)}"
                )
            rows.append(row)
        blocks.append((labels.benchmark_label(benchmark), pd.DataFrame(rows)))
    return blocks


def table4_blocks(t4: pd.DataFrame):
    """Table 4 (from overlap's table4.csv): r and p per benchmark and overlap metric."""
    rows = []
    for benchmark in labels.order_benchmarks(t4["benchmark"]):
        part = t4[t4["benchmark"] == benchmark].set_index("metric")
        row: dict[str, str | int] = {"Benchmark": labels.benchmark_label(benchmark)}
        for metric, name in [("top50_overlap", "top-50"), ("top_p90_overlap", "top-p 0.9"), ("avg_rank", "avg. rank")]:
            row[f"{name} r"] = write.fmt(part["pearson_r"].get(metric, math.nan), 3)
            row[f"{name} p"] = write.fmt(part["pearson_p"].get(metric, math.nan), 3)
        row["pairs"] = int(part["n_pairs"].max()) if len(part) else 0
        rows.append(row)
    return [("", pd.DataFrame(rows))]


# ---- command --------------------------------------------------------------------------------------

CAPTIONS = {
    "table1": "Table 1: base, guidance, aligned, NUDGING and BlendIn (Ours); NUDGING's intervention rate (Int.%, "
    "token-level); p: BlendIn vs NUDGING on the same samples",
    "table2": "Table 2: full test sets, NUDGING vs BlendIn (Ours)",
    "table3": "Table 3: intervention capping on GSM8K (NUDGING's token-level intervention rate in parentheses)",
    "table4": "Table 4: Pearson correlation between vocabulary overlap and NUDGING's score over pairs",
    "table5": "Table 5: BlendIn's sensitivity to tau (alpha auto) and alpha (tau 0.4)",
    "table6": "Table 6: NUDGING vs the discrete filters (AF, CC, AF+CC) and BlendIn (Ours)",
}
MISSING_RUNS = {
    "table1": "no NUDGING or BlendIn runs: run python -m blendin.run -m experiment=paper_table1",
    "table2": "no full-test-set runs (benchmark.n=full): run python -m blendin.run -m experiment=paper_table2",
    "table3": "no cap runs on GSM8K: run python -m blendin.run -m experiment=paper_table3",
    "table5": "no BlendIn sweep (two or more tau/alpha values of one pair and benchmark): run "
    "python -m blendin.run -m experiment=tau_sweep and experiment=alpha_sweep",
    "table6": "no af/cc/af_cc runs: run python -m blendin.run -m experiment=paper_table6",
}


def _method_note(ci: str, n_boot: int) -> list[str]:
    interval = (
        f"95% intervals: percentile bootstrap of the mean over samples ({n_boot} resamples, seed 0)"
        if ci == "bootstrap"
        else "95% intervals: Wald (mean ± 1.96 sd/sqrt(n); clipped to [0, 1] for 0/1 scores)"
    )
    return [
        interval,
        "p (paired): the method vs NUDGING on the same sample ids; exact McNemar (two-sided binomial "
        "test on the discordant pairs) for 0/1 scores, paired bootstrap of the mean difference otherwise",
        "MDD: minimum detectable difference vs NUDGING at this n (alpha 0.05, power 0.8; McNemar design with the "
        "observed discordance, Connor 1987; normal approximation for non-binary scores)",
        "n/a: no run in this setting (never filled). Scores are fractions, JustEval-Safe is on the judge's "
        "1-5 scale; intervention rates are token-level fractions shown as %",
    ]


@cli.command("tables")
def main(argv=None) -> int:
    parser = cli.parser("tables", __doc__)
    parser.add_argument("--ci", choices=["bootstrap", "wald"], default="bootstrap", help="interval method")
    parser.add_argument("--n-boot", type=cli.positive_int, default=2000, help="bootstrap resamples (default 2000)")
    args = parser.parse_args(argv)
    out: Path = args.out
    frame = cli.load(args)
    _scores.cache_clear()  # a run may have been re-scored since the last call in this process
    notes: list[str] = []
    settings: list[str] = []
    common = dict(ci=args.ci, n_boot=args.n_boot, protocol=args.protocol, notes=notes, settings=settings)
    t1, c1 = table1(frame, n=args.n, **common)
    t2, c2 = table2(frame, **common)
    t3, c3 = table3(frame, n=args.n, **common)
    t5 = table5(frame, n=args.n, **common)
    t6, c6 = table6(frame, n=args.n, **common)
    outputs = {
        "table1": (t1, c1, functools.partial(table1_blocks, t1, c1)),
        "table2": (t2, c2, functools.partial(table2_blocks, t2, c2)),
        "table3": (t3, c3, functools.partial(table3_blocks, t3, c3)),
        "table5": (t5, None, functools.partial(table5_blocks, t5)),
        "table6": (t6, c6, functools.partial(table6_blocks, t6, c6)),
    }
    written = {stem: len(table) for stem, (table, _, _) in outputs.items() if len(table)}
    cli.require(
        written,
        "run for any of Tables 1, 2, 3, 5, 6 (" + "; ".join(MISSING_RUNS.values()) + ")",
        frame,
        args,
    )
    method_notes = _method_note(args.ci, args.n_boot)
    for stem, (table, cells, blocks) in outputs.items():
        if not len(table):  # nothing to show: keep whatever an earlier run wrote, and say so
            notes.append(f"{stem}: {MISSING_RUNS[stem]} (not written)")
            continue
        write.write_csv(table, out / f"{stem}.csv")
        if cells is not None:
            write.write_csv(cells, out / f"{stem}_cells.csv")
        extra = []
        if stem == "table1":
            extra.append(
                "Ours (+x%): BlendIn's change over NUDGING in percent of NUDGING's score, n/a when NUDGING's score is 0"
            )
        shown_notes = [method_notes[0], method_notes[-1]] if stem == "table5" else method_notes  # no paired test
        prefix = stem.replace("table", "table ") + ": "
        used = [f"setting of {line[len(prefix) :]}" for line in sorted(set(settings)) if line.startswith(prefix)]
        write.write_table(blocks(), out, stem, CAPTIONS[stem], extra + used + shown_notes)
    if (out / "table4.csv").is_file():
        t4 = pd.read_csv(out / "table4.csv")
        if len(t4):
            write.write_table(
                table4_blocks(t4),
                out,
                "table4",
                CAPTIONS["table4"],
                ["computed by python -m analysis.overlap (overlap.csv, table4.csv)"],
            )
    else:
        notes.append("table4: written by python -m analysis.overlap (no table4.csv yet)")
    write.write_notes(out, "tables", "Tables 1, 2, 3, 5, 6", sorted(set(settings)), notes)
    write.report_notes("tables", sorted(set(settings)), notes)
    print(
        f"[tables] wrote under {out} (.csv, .md, .tex): "
        + ", ".join(f"{stem} ({rows} rows)" for stem, rows in written.items())
        + (f"; not written (no runs): {', '.join(s for s in outputs if s not in written)}" if len(written) < 5 else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
