"""The report: one page with every figure and table, the run inventory, the protocol settings, what is
missing for a full reproduction, and the paper's published values beside ours.

    python -m analysis.report [--results results] [--out results/report] [--analysis DIR] [--no-compute]

First runs the analysis commands (heatmap, paradox, overlap, tables, subset, calibration) into --analysis
(default RESULTS/analysis), unless --no-compute, and the token viewer (analysis.viewer, when present)
into OUT/viewer/; then only assembles what they wrote: it computes no statistic itself. A file in
--analysis that the commands did not rewrite this time (left from an earlier run) is not shown, so
every number on the page comes from the runs it lists. Writes OUT/report.md and OUT/index.html (the
same content; figures and their PDFs copied to OUT/figures/ and linked relatively, so the folder can
be moved or served as it is).

The page opens with a "how to read this page" box: what was run, how many items, what the numbers can
and cannot show at that size, and how to get the paper's sizes. The paper's numbers
(src/analysis/paper_values.csv) appear in their own columns labelled "paper", next to "ours", never
mixed; a side-by-side block with none of ours is left out with one line saying why. Files that other
tools stored under RESULTS (protocol differences, diagnosis, tuning, speed: see STORED_SECTIONS) are
shown in one section of their own, each with who wrote it, when and on what machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

from blendin.cli import CONF_DIR
from blendin.methods import REGISTRY

from . import calibration, cli, compare, heatmap, labels, overlap, paper, paradox, select, subset, tables, write
from .load import load_runs, unfinished_runs
from .viewer import write_viewer

COMMANDS = [
    ("heatmap", heatmap.main),
    ("paradox", paradox.main),
    ("overlap", overlap.main),
    ("tables", tables.main),
    ("subset", subset.main),
    ("calibration", calibration.main),
    ("compare", compare.main),
]
PAPER_EXPERIMENTS = {  # experiment -> what it reproduces
    "paper_fig2": "Figure 2 (and the data of Figures 3-4, Table 4)",
    "paper_table1": "Table 1",
    "paper_table2": "Table 2",
    "paper_table3": "Table 3",
    "tau_sweep": "Table 5 (tau)",
    "alpha_sweep": "Table 5 (alpha)",
    "paper_table6": "Table 6",
}
GPU_NOTE = (
    "one GPU with 40 GB+ memory (an 8-9B base in bfloat16 next to a 1-4B guidance model); "
    "add hydra/launcher=slurm to spread the runs over a cluster"
)
PAPER_N = 100  # the paper's subsets (its Table 2 uses the full test sets)
PAPER_TOKENS = 512
FLOOR = 0.10  # base and guidance both at or below this score: guidance has nothing to move there
STORED = "Stored results of other runs (not computed from this folder)"

# What the raw column names of the tables on this page mean (the CSV files use the same names).
COLUMN_NOTES = {
    "n_consulted": "steps where the base was unsure (top-1 probability < tau), so the guidance was consulted",
    "top50_overlap": "share of consulted steps whose guidance top token ranks 1-50 in the base's distribution",
    "top_p90_overlap": "share of consulted steps whose guidance top token is in the base's smallest top-p 0.9 set",
    "avg_rank": "mean 1-based rank of the guidance's top token in the base's distribution (encodable tokens)",
    "n_unencodable": "consulted steps whose guidance token the base tokenizer cannot encode (not in avg_rank)",
    "spelled_share": "share of consulted steps whose guidance token has no single base twin and was ranked by "
    "the first base token of its spelling (as the reference code does)",
    "mean_top_p_size": "mean size of the base's top-p 0.9 set at consulted steps",
    "mean_top100_overlap": "mean share of the base's top-100 tokens that are also in the guidance's top-100",
    "source_method": "whose traces: probe (base-only path, guidance observed) or nudging (path already guided)",
    "n_runs": "runs pooled",
    "benchmarks": "the benchmarks pooled",
    "n_pairs": "pairs with both an overlap and a NUDGING score (a correlation needs 3 or more)",
    "ours": "our number, computed from the runs in this folder",
    "ours n": "items behind our number (Table 4: pairs)",
    "paper (published)": "the paper's printed number (src/analysis/paper_values.csv)",
    "paper_subset": "the paper's items: its fixed 100-item subset, or the full test set",
    "paper_note": "what the paper's number is",
    "subset_n": "items of the subset run",
    "full_n": "items of its full-set twin",
    "full_on_subset_ids": "the full run's score on the subset's own items (a gap to subset_score is decoding noise)",
    "n_shared": "items in both runs",
    "spread_p2_5": "2.5th percentile of the means of random subsets of subset_n items drawn from the full run",
    "spread_p50": "their median",
    "spread_p97_5": "their 97.5th percentile",
    "subset_percentile": "where the stored subset's score falls in that spread",
    "score_agreement": "share of shared items with the same score in both runs",
    "output_agreement": "share of shared items with the same output text",
    "n_subset_only_right": "items right only in the subset run (-1: scores not 0/1)",
    "n_full_only_right": "items right only in the full run (-1: scores not 0/1)",
    "n_ambiguous": "outputs the rule-based scorers read one way where a careful reader might read another",
    "refusal_range": "each refusal rate if every ambiguous output had gone the other way",
}


# ---- what the report reads ------------------------------------------------------------------------


class Sources:
    """The analysis folder as the report reads it.

    When the report ran the commands itself, `before` holds each file's modification time from before
    they ran: a file they did not rewrite is left from an earlier run (other runs, other filters) and
    is treated as absent, so that nothing stale is shown as computed from these runs. `skipped` says,
    per command, why it wrote nothing. Figures are copied with their PDFs into OUT/figures/."""

    def __init__(self, folder: Path, out: Path, before: dict | None = None, skipped: dict | None = None):
        self.folder, self.out, self.before, self.skipped = Path(folder), Path(out), before, skipped or {}

    @staticmethod
    def snapshot(folder: Path) -> dict:
        return {p: p.stat().st_mtime_ns for p in Path(folder).glob("*") if p.is_file()}

    def path(self, name: str) -> Path | None:
        path = self.folder / name
        if not path.is_file():
            return None
        fresh = self.before is None or self.before.get(path) != path.stat().st_mtime_ns
        return path if fresh else None

    def read(self, name: str) -> pd.DataFrame | None:
        path = self.path(name)
        return pd.read_csv(path) if path is not None and path.stat().st_size > 0 else None

    def include(self, name: str, levels: int = 2) -> list[str]:
        path = self.path(name)
        if path is None:
            return [f"_{name} was not written this time._", ""]
        return _demote(path.read_text(encoding="utf-8"), levels) + [""]

    def figure(self, stem: str, caption: str) -> list[str]:
        png = self.path(f"{stem}.png")
        if png is None:
            return []
        lines = [f"![{caption}](figures/{png.name})", ""]
        write.copy_file(png, self.out / "figures" / png.name)
        pdf = self.path(f"{stem}.pdf")
        if pdf is not None:
            write.copy_file(pdf, self.out / "figures" / pdf.name)
            lines += [f"[PDF](figures/{pdf.name})", ""]
        return lines

    def glob(self, pattern: str) -> list[Path]:
        return [p for p in sorted(self.folder.glob(pattern)) if self.path(p.name) is not None]

    def not_computed(self, command: str) -> list[str]:
        """One line saying why `command` computed nothing this time ([] when it did)."""
        why = self.skipped.get(command)
        return [f"Not computed this time: {why}", ""] if why else []


# ---- small helpers ----------------------------------------------------------------------------------


def _demote(markdown: str, levels: int = 2) -> list[str]:
    """A module's Markdown file, its headings pushed down `levels` levels to nest in the report."""
    return [("#" * levels + line) if line.startswith("#") else line for line in markdown.splitlines()]


def _details(summary: str, lines: list[str]) -> list[str]:
    return ["<details><summary>" + summary + "</summary>", "", *lines, "", "</details>", ""]


def _format(frame: pd.DataFrame, digits: dict | None = None) -> pd.DataFrame:
    """Numbers as text with fixed digits (missing as n/a), for Markdown tables."""
    digits = digits or {}
    shown = frame.copy().astype(object)
    for col in shown.columns:
        if pd.api.types.is_float_dtype(frame[col]):
            shown[col] = [write.fmt(v, digits.get(col, 3)) for v in frame[col]]
    return shown.fillna(write.MISSING)


def _table(frame: pd.DataFrame, digits: dict | None = None) -> list[str]:
    """A Markdown table, then what its raw column names mean (COLUMN_NOTES), collapsed."""
    defined = [f"- `{c}`: {COLUMN_NOTES[c]}" for c in frame.columns if c in COLUMN_NOTES]
    table = [write.markdown_table(_format(frame, digits)), ""]
    return table + (_details("What the columns mean", defined) if defined else [])


def _items(values) -> str:
    """'12' or '3-12 (median 12)' for a set of item counts."""
    values = sorted(int(v) for v in values if np.isfinite(v))
    if not values:
        return "?"
    return f"{values[0]}" if values[0] == values[-1] else f"{values[0]}-{values[-1]} (median {int(np.median(values))})"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


# ---- the top of the page --------------------------------------------------------------------------


def readme_box(frame: pd.DataFrame, src: Sources, results: Path, computed: bool, stored: bool, viewer: bool):
    """'How to read this page': what was run, how many items, what the numbers can and cannot show at that
    size, how to get the paper's sizes, and where each number comes from; every fact read from the runs."""
    lines = ['<div class="box">', "", "**How to read this page**", ""]
    missing = f"[what is missing](#{write.anchor('What is missing for a full reproduction')})"
    stored_link = f"[stored results of other runs](#{write.anchor(STORED)})"
    if frame.empty:
        return lines + [
            f"- There are no finished runs under `{results}/runs` yet, so this page only lists what to run: "
            f"`make reproduce` (the embedded pair on a CPU), or the paper's experiments under {missing}.",
            *([f"- The {stored_link} are files other tools wrote on other days and machines."] if stored else []),
            "",
            "</div>",
            "",
        ]
    walked = frame["method"].map(lambda m: m in REGISTRY and not REGISTRY[m].scored)  # teacher forcing
    scored, forced = frame[~walked], frame[walked]
    pairs = [f"{label} (`{pair}`)" for pair, label in dict(zip(frame["pair"], frame["pair_label"])).items()]
    order = {m: i for i, m in enumerate(tables.T1_METHODS)}  # Table 1's order first, then the others
    methods = [labels.method_label(m) for m in sorted(set(scored["method"]), key=lambda m: (order.get(m, 99), m))]
    protocols = sorted(set(frame["protocol"]))
    benchmarks = [labels.benchmark_label(b) for b in labels.order_benchmarks(frame["benchmark"])]
    lines.append(
        f"- **What was run:** {len(frame)} runs of {len(pairs)} pair{'s' if len(pairs) > 1 else ''} "
        f"(guidance → base: {_join(pairs)}) on {_join(benchmarks)}; methods {_join(methods) if methods else 'none'}; "
        f"protocol {_join(protocols)}."
    )
    if len(scored):
        n = pd.to_numeric(scored["n_samples"], errors="coerce")
        tokens = pd.to_numeric(scored["max_new_tokens"], errors="coerce")
        lines.append(
            f"- **How many items:** {_items(n)} items per run and {_items(tokens)} new tokens per answer"
            + (
                f"; {len(forced)} teacher-forced run(s) of {_items(forced['n_samples'])} items for the calibration"
                if len(forced)
                else ""
            )
            + f". The paper used {PAPER_N}-item subsets (the full test sets in its Table 2) and {PAPER_TOKENS} tokens."
        )
        lines.append("- **What the numbers can show at this size:** " + _what_it_can_show(scored, src))
    lines.append(
        f"- **The paper's sizes:** `make reproduce REPRO_N={PAPER_N} REPRO_TOKENS={PAPER_TOKENS}` runs the embedded "
        f"pair at the paper's sizes (hours on a CPU); the paper's own pairs need {GPU_NOTE.split(';')[0]}: "
        f"see {missing}."
    )
    where = (
        f"every section up to the run inventory is computed from the {len(frame)} runs in `{results}/runs` "
        "by the analysis commands, this time (each section's notes give the full settings)"
        if computed
        else f"the sections were assembled from the files in the analysis folder as found (`--no-compute`): "
        f"they may come from other runs than the {len(frame)} listed here"
    )
    stored_text = f"; the {stored_link} are files other tools wrote on other days and machines" if stored else ""
    lines.append(
        f"- **Where the numbers come from:** {where}; columns marked **paper** hold the paper's published "
        f"values{stored_text}."
    )
    if viewer:
        lines.append(
            "- **Token viewer:** [viewer/index.html](viewer/index.html) shows every stored answer token by "
            "token, coloured by who chose each token."
        )
    return lines + ["", "</div>", ""]


def _what_it_can_show(scored: pd.DataFrame, src: Sources) -> str:
    """The interval width of one score, the minimum detectable difference, the floor, and what follows."""
    fraction = scored[~scored["benchmark"].isin(labels.JUDGE_SCALE_BENCHMARKS)]
    n = int(pd.to_numeric(scored["n_samples"], errors="coerce").median())
    # the widest 95% interval of a 0-1 score of n items (Wald at 0.5): a bootstrap interval of a run whose items
    # all scored alike collapses to a point, so the runs' own intervals would understate it
    half = min(1.0, 1.96 * math.sqrt(0.25 / n))
    values = f"can take only {n + 1} values and " if n <= 20 else ""
    parts = [f"a fraction measured on {n} items {values}has a 95% interval as wide as ±{half:.2f} (at a score of 0.5)"]
    cells = src.read("table1_cells.csv")
    mdd = cells["mdd"].dropna() if cells is not None and "mdd" in cells else pd.Series(dtype=float)
    if len(mdd):
        parts.append(
            f"two methods on the same items must differ by about {mdd.median():.2f} before the paired test can "
            "tell them apart (the median minimum detectable difference of Table 1)"
        )
    text = "; ".join(parts) + ". "
    single = fraction[fraction["method"].isin(["base", "guidance"])]
    best = single.groupby("benchmark")["score"].max()
    floor = [labels.benchmark_label(b) for b in labels.order_benchmarks(best.index) if best[b] <= FLOOR]
    if floor:
        text += (
            f"Base and guidance alone both score {FLOOR:.2f} or less on {_join(floor)}: there guidance has "
            "nothing to move, whatever the method. "
        )
    small = n < PAPER_N
    paper_pairs = set(scored["pair"]) & set(labels.PAPER_PAIRS)
    if small or not paper_pairs:
        why = [f"{n} items per run" if small else "", "none of the paper's 15 pairs" if not paper_pairs else ""]
        text += (
            f"With {_join([w for w in why if w])}, Figures 2-4 and Tables 1, 3 and 6 show that every stage of "
            "the analysis runs, not the paper's effects: read their intervals before their point values."
        )
    return text


def header(frame: pd.DataFrame, results: Path, unfinished: list[str]) -> list[str]:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"Generated {when} from `{results}/runs`: {len(frame)} finished runs over {frame['pair'].nunique()} "
        f"pair(s) and {frame['benchmark'].nunique()} benchmark(s)"
        + (f"; {len(unfinished)} unfinished run folder(s) ignored." if unfinished else "."),
        "",
        "Columns and tables marked **paper** hold the published values of Gan, Li, Luo, *To Intervene or Not* "
        "(ACL 2026), typed once into `src/analysis/paper_values.csv`; they are shown beside **ours**, never mixed "
        "into it. Missing cells are n/a, never 0.",
        "",
    ]


def contents(lines: list[str]) -> list[str]:
    """Links to every section ('## ' heading) of the page, in order."""
    headings = [line[3:].strip() for line in lines if line.startswith("## ")]
    links = [f"[{h.split(':')[0]}](#{write.anchor(h)})" for h in headings]
    return ["Contents: " + " · ".join(links), ""] if links else []


def settings_section(frame: pd.DataFrame, unfinished: list[str]) -> list[str]:
    lines = ["## Protocol settings behind the numbers", ""]
    if frame.empty:
        return lines + ["No runs yet.", ""]
    groups, full = [], []
    for i, ((setting, unit), group) in enumerate(frame.groupby(["setting", "intervention_unit"], sort=True), 1):
        groups.append(
            {
                "#": i,
                "benchmarks": ", ".join(labels.benchmark_label(b) for b in labels.order_benchmarks(group["benchmark"])),
                "setting": select.setting_label(group.iloc[0]),
                "stop strings": f"`{group['stop'].iloc[0]}`",
                "rate unit": unit,
                "methods": ", ".join(labels.method_label(m) for m in sorted(group["method"].unique())),
                "pairs": group["pair"].nunique(),
                "runs": len(group),
            }
        )
        full.append(f"- {i}: `{setting}`")
    lines += [
        write.markdown_table(pd.DataFrame(groups)),
        "",
        "A setting is everything besides the method that makes two runs' numbers comparable: the protocol "
        "(`ours`: the same stop strings for every method; `reference`: the published code's choices), split, "
        "subset size and seed, token budget, stop strings and judge. Each artefact uses one setting per "
        "benchmark (the one with the most runs) and names it in its notes. Intervention rates are token-level "
        "(share of generated tokens where the guidance was applied) unless the unit says word (Fei et al.'s "
        "ratio, `nudging_words`); units are never mixed in one fit or column.",
        "",
    ]
    lines += _details("The full settings strings (protocol options included)", full)
    excluded = select.excluded_notes(frame)
    if excluded:
        lines += ["Left out of every score:", ""] + [f"- {n}" for n in excluded] + [""]
    if unfinished:
        lines += _details(
            f"{len(unfinished)} unfinished run folder(s) (no metrics.json; ignored)", [f"- `{u}`" for u in unfinished]
        )
    return lines


# ---- the paper's artefacts -------------------------------------------------------------------------


def _paper_block(
    ours: pd.DataFrame | None, values: pd.DataFrame, artefact: str, title: str, why_none: str = ""
) -> list[str]:
    """'ours | paper' on the keys where both have a number, or one line saying why there are none; then the
    paper's full list in a collapsed block."""
    both = paper.beside(ours, values, artefact) if ours is not None and len(ours) else pd.DataFrame()
    both = both[both["ours"].notna()] if len(both) else both
    if both.empty:
        why = why_none or (
            f"none of the paper's {title} cells (its pairs, benchmarks and methods) has a number of ours in this folder"
        )
        lines = [f"_Ours beside the paper ({title}): left out, because {why}._", ""]
    else:
        shown = both.rename(columns={"paper": "paper (published)", "ours_n": "ours n"})
        shown = shown[[c for c in shown.columns if not (c in ("tau", "alpha") and (shown[c].astype(str) == "").all())]]
        table = _table(shown)
        lines = [f"**Ours beside the paper ({title})**", ""]
        lines += (_details(f"{len(shown)} numbers side by side", table) if len(shown) > 24 else table) + [
            "Ours uses the setting named in this section's notes; the paper used 100-sample subsets (or the full "
            "sets where marked), 512 new tokens and its own scorers: compare with care.",
            "",
        ]
    ref = values[values["artefact"] == artefact][
        ["pair", "benchmark", "method", "tau", "alpha", "subset", "metric", "value", "note"]
    ]
    ref = ref.assign(value=[write.fmt(v, d) for v, d in zip(ref["value"], values.loc[ref.index, "decimals"])])
    return lines + _details(
        f"The paper's {title}, as published ({len(ref)} numbers)",
        [write.markdown_table(ref.rename(columns={"value": "paper value"}))],
    )


def _notes(src: Sources, name: str, summary: str = "Settings and notes") -> list[str]:
    return _details(summary, src.include(name, 3)) if src.path(name) is not None else []


def figure2_section(src: Sources, values: pd.DataFrame) -> list[str]:
    lines = ["## Figure 2: NUDGING minus base score, per pair and benchmark", ""] + src.not_computed("heatmap")
    lines += src.figure(
        "figure2",
        "Figure 2 (ours): NUDGING minus base score. The colour scale is fixed (±1, ±4 on JustEval-Safe's 1-5 "
        "judge scale); each cell gives the difference, its 95% paired bootstrap interval and the items both runs "
        "scored; 'no judge': JustEval-Safe ran without an LLM judge, so it has no safety score.",
    )
    lines += _notes(src, "figure2_notes.md")
    table = src.read("figure2.csv")
    ours = None if table is None else table.assign(method="nudging", metric="delta").rename(columns={"delta": "ours"})
    cells = src.read("figure2_cells.csv")
    if ours is not None and cells is not None:
        ours = ours.merge(cells[["pair", "benchmark", "n"]].rename(columns={"n": "ours_n"}), on=["pair", "benchmark"])
    return lines + _paper_block(ours, values, "figure2", "Figure 2 deltas")


def _fits_table(fits: pd.DataFrame) -> list[str]:
    """paradox.csv with readable columns: r with its interval, the p-values, and why a group has no fit."""
    rows = []
    for _, f in fits.iterrows():
        fitted = np.isfinite(f["pearson_r"])
        rows.append(
            {
                "benchmark": labels.benchmark_label(f["benchmark"]),
                "method": labels.method_label(f["method"]),
                "rate unit": f["unit"],
                "points": int(f["n_points"]),
                "Pearson r [95% CI]": write.fmt_ci(f["pearson_r"], f["r_ci95_low"], f["r_ci95_high"])
                if fitted
                else ("no fit: fewer than 3 points" if f["n_points"] < 3 else "no fit: constant values"),
                "p (Pearson)": write.fmt_p(f["pearson_p"]),
                "Spearman ρ (p)": f"{write.fmt(f['spearman_rho'])} ({write.fmt_p(f['spearman_p'])})"
                if fitted
                else "n/a",
                "permutation p": write.fmt_p(f["permutation_p"]),
            }
        )
    return [
        write.markdown_table(pd.DataFrame(rows)),
        "",
        "95% CI: Fisher z interval on r (needs 4 or more points); permutation p: share of random pairings of the "
        "same points with |r| at least as large (exact for up to 7 points).",
        "",
    ]


def figure3_section(src: Sources) -> list[str]:
    lines = ["## Figure 3: the intervention paradox", ""] + src.not_computed("paradox")
    lines += src.figure(
        "figure3", "Figure 3 (ours): intervention rate vs score, token-level NUDGING; bars: each run's 95% interval"
    )
    for extra in src.glob("figure3_*.png"):
        lines += src.figure(extra.stem, f"Figure 3 for {extra.stem.split('_', 1)[1]} (ours)")
    fits = src.read("paradox.csv")
    if fits is not None:
        lines += _fits_table(fits)
    lines += [
        "The paper prints no numbers for Figure 3; it reports negative correlations, significant on GSM8K, "
        "TruthfulQA and XSTest, and a 20% intervention line. Its x axis is Fei et al.'s word-level ratio "
        "(docs/protocols.md), ours is token-level unless the unit says word.",
        "",
    ]
    return lines + _notes(src, "paradox_notes.md")


def overlap_section(src: Sources, values: pd.DataFrame) -> list[str]:
    lines = ["## Figure 4 and Table 4: vocabulary overlap", ""] + src.not_computed("overlap")
    lines += src.figure("figure4", "Figure 4 (ours): vocabulary overlap at consulted steps")
    table = src.read("overlap.csv")
    if table is not None:
        lines += _table(table)
    per_bench = src.read("overlap_by_benchmark.csv")
    if per_bench is not None:
        lines += _details(
            "Per pair and benchmark (overlap_by_benchmark.csv)", _table(per_bench.drop(columns=["run_dir"]))
        )
    t4 = src.read("table4.csv")
    ours, why = None, ""
    if t4 is not None:
        pairs = int(t4["n_pairs"].max()) if len(t4) else 0
        if t4["pearson_r"].notna().any():
            lines += src.include("table4.md", 2)
        else:
            why = f"a correlation over pairs needs {overlap.MIN_PAIRS} or more pairs and {pairs} is stored"
            lines += [
                f"_Table 4 (overlap against NUDGING's score, Pearson r over pairs): not computed, because {why}._",
                "",
            ]
        names = {"top50_overlap": "top50", "top_p90_overlap": "top_p90"}
        t4 = t4[t4["metric"].isin(names)]
        ours = pd.concat(
            [
                pd.DataFrame(
                    {
                        "pair": "",
                        "benchmark": t4["benchmark"],
                        "method": "nudging",
                        "metric": t4["metric"].map(names) + f"_pearson_{k}",
                        "ours": t4[f"pearson_{k}"],
                        "ours_n": t4["n_pairs"],
                    }
                )
                for k in ("r", "p")
            ]
        ).fillna({"pair": ""})
    lines += _paper_block(ours, values, "table4", "Table 4", why)
    return lines + _notes(src, "overlap_notes.md")


def tables_section(src: Sources, values: pd.DataFrame) -> list[str]:
    lines = ["## Tables 1, 2, 3, 5 and 6", ""] + src.not_computed("tables")
    if src.skipped.get("tables"):
        return lines
    lines += [
        "Each table also exists as `.csv` (machine-readable), `.tex` and `_cells.csv` (every cell with its "
        f"interval, paired test, MDD, setting and run folder) in `{src.folder}`.",
        "",
    ]
    for stem, halfwidth in (
        ("table1", False),
        ("table2", True),
        ("table3", False),
        ("table5", False),
        ("table6", False),
    ):
        if src.path(f"{stem}.md") is None:
            lines += [f"### {tables.CAPTIONS[stem]}", "", f"_Not written: {tables.MISSING_RUNS[stem]}._", ""]
        else:  # the table, then its notes (settings, interval methods) collapsed
            table = src.include(f"{stem}.md", 2)
            cut = table.index("Notes:") if "Notes:" in table else len(table)
            lines += table[:cut] + (
                _details(f"Notes of {stem.replace('table', 'Table ')}", table[cut + 1 :]) if cut < len(table) else []
            )
        if stem == "table5":
            t5 = src.read("table5.csv")
            ours = (
                None
                if t5 is None
                else t5.assign(method="blendin", metric="score")
                .rename(columns={"score": "ours", "n": "ours_n"})
                .drop_duplicates(["pair", "benchmark", "tau", "alpha"])
            )
            if ours is not None:
                ours["alpha"] = ours["alpha"].fillna("").astype(str)
        else:
            ours = _cells_as_ours(src.read(f"{stem}_cells.csv"), halfwidth)
        lines += _paper_block(ours, values, stem, stem.replace("table", "Table "))
    return lines + _notes(src, "tables_notes.md", "Settings and notes of the tables")


def _cells_as_ours(cells: pd.DataFrame | None, halfwidth: bool = False) -> pd.DataFrame | None:
    """A table's cells (tableN_cells.csv) as 'ours' rows for `paper.beside`."""
    if cells is None or cells.empty:
        return None
    rows = []
    for _, c in cells.iterrows():
        rows.append(
            {
                "pair": c["pair"],
                "benchmark": c["benchmark"],
                "method": c["method"],
                "metric": "score",
                "ours": c["score"],
                "ours_n": c["n"],
            }
        )
        if halfwidth:
            rows.append(
                {
                    "pair": c["pair"],
                    "benchmark": c["benchmark"],
                    "method": c["method"],
                    "metric": "ci_halfwidth",
                    "ours": (c["ci_high"] - c["ci_low"]) / 2,
                    "ours_n": c["n"],
                }
            )
        if c["method"] == "nudging":
            rows.append(
                {
                    "pair": c["pair"],
                    "benchmark": c["benchmark"],
                    "method": "nudging",
                    "metric": "intervention_rate",
                    "ours": c["intervention_rate"],
                    "ours_n": c["n"],
                }
            )
    return pd.DataFrame(rows)


def disagreement_section(values: pd.DataFrame) -> list[str]:
    found = paper.disagreements(values)
    lines = [
        "## Where the paper disagrees with itself",
        "",
        "Computed from `paper_values.csv` (numbers as printed; two printings of one number may differ by half "
        "a unit of the coarser rounding):",
        "",
    ]
    if found.empty:
        return lines + ["None found.", ""]
    return lines + [
        write.markdown_table(found),
        "",
        "Table 5's default row (tau 0.4, alpha auto, Q→L, full sets) and Table 2's BlendIn Q→L row "
        "describe the same setting with different numbers, and so do Table 6 and Table 1 for some "
        "cells; the large subset-vs-full XSTest gaps fit the remark in docs/protocols.md that the XSTest "
        "scorer changed between the two.",
        "",
    ]


def _conf_dirs(results: Path) -> list[Path]:
    here = CONF_DIR / "experiment"
    return [d for d in (here, Path.cwd() / "conf" / "experiment", results.parent / "conf" / "experiment") if d.is_dir()]


def experiment_cells(path: Path) -> tuple[list[dict], str]:
    """The (pair, benchmark, method, n, swept params) cells a conf/experiment/<name>.yaml asks for."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    fixed = {}
    for entry in spec.get("defaults", []) or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                fixed[key.replace("override /", "").strip()] = str(value)
    params = ((spec.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    grid = {k: [v.strip() for v in str(val).split(",")] for k, val in params.items()}
    pairs = grid.get("pair", [fixed.get("pair", "smollm2_gemma3")])
    benchmarks = grid.get("benchmark", [fixed.get("benchmark", "gsm8k")])
    methods = grid.get("method", [fixed.get("method", "nudging")])
    n = str((spec.get("benchmark") or {}).get("n", ""))
    swept = {k.split(".", 1)[1]: v for k, v in grid.items() if k.startswith("method.")}
    cells = []
    for pair in pairs:
        for benchmark in benchmarks:
            for method in methods:
                combos: list[dict] = [{}]
                for key, options in swept.items():
                    combos = [dict(c, **{key: o}) for c in combos for o in options]
                cells += [dict(pair=pair, benchmark=benchmark, method=method, n=n, **c) for c in combos]
    return cells, n


def _has(frame: pd.DataFrame, cell: dict) -> bool:
    hit = frame[
        (frame["pair"] == cell["pair"])
        & (frame["benchmark"] == cell["benchmark"])
        & (frame["method"] == cell["method"])
        & (frame["n_spec"].astype(str) == cell["n"])
    ]
    if "tau" in cell:
        hit = hit[(hit["tau"] - float(cell["tau"])).abs() < 1e-9]
    if "alpha" in cell:
        hit = hit[hit["alpha"] == (cell["alpha"] if cell["alpha"] == "auto" else f"{float(cell['alpha']):g}")]
    return len(hit) > 0


def missing_section(frame: pd.DataFrame, results: Path) -> list[str]:
    lines = ["## What is missing for a full reproduction", ""]
    dirs = _conf_dirs(results)
    if not dirs:
        return lines + [
            "conf/experiment/ was not found next to the package or in the working directory, so the "
            "paper's grids cannot be checked here.",
            "",
        ]
    rows, details = [], []
    for name, what in PAPER_EXPERIMENTS.items():
        path = next((d / f"{name}.yaml" for d in dirs if (d / f"{name}.yaml").is_file()), None)
        if path is None:
            continue
        cells, n = experiment_cells(path)
        missing = [c for c in cells if not _has(frame, c)]
        rows.append(
            {
                "experiment": name,
                "reproduces": what,
                "runs": len(cells),
                "stored": len(cells) - len(missing),
                "missing": len(missing),
                "command": f"`python -m blendin.run -m experiment={name}`",
            }
        )
        if missing:
            shown = [
                f"- {c['pair']} / {c['benchmark']} / {c['method']}"
                + "".join(f" {k}={v}" for k, v in c.items() if k not in ("pair", "benchmark", "method", "n"))
                + f" (n={n})"
                for c in missing[:15]
            ]
            details += _details(
                f"{name}: {len(missing)} missing run(s)",
                shown + ([f"- ... and {len(missing) - 15} more"] if len(missing) > 15 else []),
            )
    lines += [
        write.markdown_table(pd.DataFrame(rows)),
        "",
        f"Hardware: the paper's pairs need {GPU_NOTE}. JustEval-Safe needs an LLM judge (`judge=openai` with "
        "an OpenAI-compatible endpoint, or `judge=local`); without one its runs are left out of every score. "
        "The embedded pair (`pair=smollm2_gemma3`) runs every grid on a CPU, e.g. "
        "`python -m blendin.run -m experiment=tau_sweep pair=smollm2_gemma3 benchmark.n=20`. "
        "Then run `python -m analysis.report` again.",
        "",
    ]
    return lines + details


def _json_tables(obj, prefix: str = "") -> list[tuple[str, pd.DataFrame]]:
    """A JSON document as tables: lists of records become tables, scalars a key/value table."""
    if isinstance(obj, list):
        if obj and all(isinstance(x, dict) for x in obj):
            return [(prefix, pd.json_normalize(obj))]
        return [(prefix, pd.DataFrame({"value": [json.dumps(x) if isinstance(x, (dict, list)) else x for x in obj]}))]
    if not isinstance(obj, dict):
        return [(prefix, pd.DataFrame({"value": [obj]}))]
    scalars, tables_ = {}, []
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            tables_.append((name, pd.json_normalize(value)))
        elif isinstance(value, dict):
            flat = pd.json_normalize(value, sep=".").to_dict("records")[0] if value else {}
            if all(not isinstance(v, (dict, list)) for v in flat.values()):
                scalars.update({f"{key}.{k}": v for k, v in flat.items()})
            else:
                tables_ += _json_tables(value, name)
        else:
            scalars[key] = json.dumps(value) if isinstance(value, list) else value
    kv = [(prefix, pd.DataFrame({"key": list(scalars), "value": list(scalars.values())}))] if scalars else []
    return kv + tables_


def subset_section(src: Sources) -> list[str]:
    lines = ["## Is a 100-sample subset enough? (the paper's tables use 100 items)", ""]
    table = src.read("subset_vs_full.csv")
    if table is None or table.empty:
        return lines + [
            "No run has both a subset and a full-set twin (same pair, benchmark, method, parameters and "
            "protocol), so there is nothing to compare. Run, for example, `python -m blendin.run -m "
            "experiment=paper_table1` (n=100) and `python -m blendin.run -m experiment=paper_table2` (full).",
            "",
        ]
    lines += src.figure("subset_vs_full", "Subset vs full set (ours)")
    return lines + _table(table.drop(columns=["setting", "subset_run", "full_run"]))


def calibration_section(src: Sources) -> list[str]:
    """Alpha's premise on teacher-forced runs: the summary, the key tables and the two figures of
    `analysis.calibration`; [] when it computed nothing this time."""
    table = src.read("calibration.csv")
    if table is None or table.empty:
        return []
    lines = [
        "## Calibration: does alpha's premise hold?",
        "",
        "From teacher-forced runs (`method=forced`: both models walked along known answers); every number "
        "comes from `calibration.csv` (written by `python -m analysis.calibration`, which also splits by token "
        "kind, position and alpha bin).",
        "",
    ]
    summary = src.include("calibration_summary.md", 2)
    lines += [line for line in summary if not line.startswith("###")]  # the section heading replaces its title
    lines += src.include("calibration_table.md", 2)
    lines += src.figure("calibration_reliability", "Reliability of each model's top-1 probability (ours)")
    lines += src.figure("calibration_alpha", "Alpha against correctness at u < tau (ours)")
    return lines + _notes(src, "calibration_notes.md")


def compare_section(src: Sources) -> list[str]:
    """Every method side by side with the failure detectors' shares (`analysis.compare`); [] if it computed nothing."""
    if src.path("compare.md") is None:
        return []
    lines = [
        "## Every method side by side: score, intervention and failures",
        "",
        "All methods of each benchmark's chosen setting, the field's other rules (KAD's token-wise deferral, "
        "proxy-tuning) included, labelled as `blendin.methods` names them. Beside each score: how much the "
        "guidance intervened, and the share of outputs that bury the gold answer where the scorer does not read "
        "it, run away to the token budget where the base alone stopped, end in a loop, or switch language.",
        "",
    ]
    body = src.include("compare.md", 2)
    return lines + [line for line in body if not line.startswith("###")] + _notes(src, "compare_notes.md")


def ambiguity_section(frame: pd.DataFrame) -> list[str]:
    """How many outputs the rule-based scorers found ambiguous, and how far that could move the rates."""
    lines = ["## Outputs the rules may have misread", ""]
    if "n_ambiguous" not in frame or frame["n_ambiguous"].fillna(0).sum() == 0:
        return lines + [
            "No stored run counts an output its scoring rules found ambiguous (runs scored before "
            "the count existed show nothing here).",
            "",
        ]
    shown = frame[frame["n_ambiguous"].fillna(0) > 0][
        ["benchmark", "method", "params", "n_samples", "n_ambiguous", "refusal_range"]
    ]
    return (
        lines
        + [
            "Examples: two different answer letters with no correction between them, letters joined as the "
            "answer, GSM8K's two number rules disagreeing, a refusal read from a rebuttal or a lecture rather "
            "than an explicit decline. An LLM judge (`judge=openai` or `judge=local`, or `python -m "
            "blendin.rescore RUN --judge openai` later) reads them instead.",
            "",
        ]
        + _table(shown.sort_values(["benchmark", "method"]))
    )


def inventory_section(frame: pd.DataFrame) -> list[str]:
    lines = ["## Run inventory", ""]
    if frame.empty:
        return lines + ["No finished runs.", ""]
    inv = pd.DataFrame(
        {
            "pair": frame["pair"],
            "benchmark": frame["benchmark"],
            "method": frame["method"],
            "params": frame["params"],
            "n": frame["n_spec"],
            "protocol": frame["protocol"],
            "unit": frame["intervention_unit"],
            "score": [
                write.fmt(s, 3) if not e else f"left out ({write.fmt(st, 3)})"
                for s, st, e in zip(frame["score"], frame["stored_score"], frame["score_excluded"])
            ],
            "score_name": frame["score_name"],
            "intervention": [write.fmt_pct(v) for v in frame["intervention_rate"]],
            "machine": frame["device"],
            "when": frame["created_at"].str.slice(0, 16),
            "run": frame["run_name"],
        }
    )
    return lines + _details(f"{len(inv)} finished runs, one line each", [write.markdown_table(inv)])


# ---- files other tools stored under the results folder -------------------------------------------

# (title, the tool that writes them, where they are under RESULTS)
STORED_SECTIONS = [
    (
        "Protocol differences (ours vs the reference code)",
        "python scripts/protocol_effects.py",
        "protocol_effects.json",
    ),
    ("Diagnosis", "python -m blendin.diagnose", "diagnose/*.json"),
    ("Tuning (chosen settings)", "python -m blendin.tune", "tune/**/choice.json"),
    ("Speed", "python -m blendin.bench", "bench/*.json"),
]


def _named_runs(obj) -> list[str]:
    """Every run folder a stored JSON document names (strings with a runs/<pair>/<benchmark>/<run> path)."""
    if isinstance(obj, dict):
        return [r for v in obj.values() for r in _named_runs(v)]
    if isinstance(obj, list):
        return [r for v in obj for r in _named_runs(v)]
    return [obj] if isinstance(obj, str) and "runs/" in obj and len(Path(obj).parts) >= 4 else []


def _run_key(path: str) -> str:
    return "/".join(Path(path).parts[-3:])


def _git_date(path: Path) -> str:
    """The date the file was last committed to git ('' when it is not in a repository)."""
    try:
        done = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def provenance(path: Path, data, frame: pd.DataFrame, tool: str) -> str:
    """Whose a stored file is, from when, on what machine, and whether the runs it names are in this folder."""
    meta = (data.get("meta") or {}) if isinstance(data, dict) else {}
    pair = meta.get("pair") or (data.get("pair") if isinstance(data, dict) else None)
    named = sorted(set(_named_runs(data)))
    here = frame[frame["run_dir"].map(_run_key).isin({_run_key(r) for r in named})] if named else frame.iloc[:0]
    if meta.get("created_at"):
        when = f"made {str(meta['created_at'])[:16].replace('T', ' ')} UTC"
    elif len(here):
        when = f"from runs made {here['created_at'].min()[:10]} to {here['created_at'].max()[:10]}"
    elif _git_date(path):
        when = f"committed to git on {_git_date(path)}"
    else:
        when = f"file dated {dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc):%Y-%m-%d}"
    if meta.get("device"):
        machine = f"{meta.get('device_name') or meta['device']}" + "".join(
            f", {label} {meta[k]}" for k, label in (("threads", "threads"), ("torch", "torch")) if meta.get(k)
        )
    elif len(here):
        machine = ", ".join(sorted(set(here["device"]) - {""})) or "not recorded"
    else:
        machine = "not recorded in the file"
    runs = f"; names {len(named)} run(s), {len(here)} of them in this folder" if named else ""
    return (
        f"Written by `{meta.get('command') or tool}`" + (f" for pair `{pair}`" if pair else "") + f"; {when}; "
        f"machine: {machine}{runs}."
    )


def render_optional_section(title: str, files: list[Path], root: Path, frame=None, tool: str = "") -> list[str]:
    """A sub-section of plain tables for the CSV/JSON files another tool wrote, each with its provenance;
    [] when there are none."""
    if not files:
        return []
    frame = load_runs(root) if frame is None else frame
    lines = [f"### {title}", ""]
    for path in files:
        name = os.path.relpath(path, root)
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.suffix == ".json" else None
            blocks = [("", pd.read_csv(path))] if path.suffix == ".csv" else _json_tables(data)
        except (ValueError, OSError) as err:
            lines += [f"- `{name}`: could not be read ({err})", ""]
            continue
        lines += [f"#### `{name}`", "", provenance(path, data, frame, tool), ""]
        written = path.with_suffix(".md")
        if written.is_file():  # the tool wrote its own Markdown beside the data: show that
            lines += [*_demote(written.read_text(encoding="utf-8"), 4), ""]
            continue
        for caption, table in blocks:
            lines += ([f"_{caption}_", ""] if caption else []) + [write.markdown_table(_format(table)), ""]
    return lines


def stored_section(results: Path, frame: pd.DataFrame) -> list[str]:
    """The files of STORED_SECTIONS found under RESULTS, in one section that says they are not computed here."""
    body = []
    for title, tool, pattern in STORED_SECTIONS:
        body += render_optional_section(title, sorted(results.glob(pattern)), results, frame, tool)
    if not body:
        return []
    return [
        f"## {STORED}",
        "",
        '<div class="stored">',
        "",
        f"These files sit under `{results}` but were written by other tools, on other days and perhaps other "
        f"machines. Their numbers were **not** computed from the runs of this report, and the runs they name may "
        "not be in this folder: each says whose it is, from when and on what machine.",
        "",
        *body,
        "</div>",
        "",
    ]


# ---- command ----------------------------------------------------------------------------------------


def run_commands(results: Path, analysis: Path, extra: list[str]) -> tuple[list[str], dict]:
    """Run every analysis command: (the failures, with their error; {command: why it computed nothing})."""
    failed, skipped = [], {}
    for name, command in COMMANDS:
        print(f"[report] running analysis.{name}", flush=True)
        try:
            command.__wrapped__(["--results", str(results), "--out", str(analysis), *extra])  # errors, not codes
        except cli.NothingToCompute as err:
            print(f"[report] analysis.{name}: nothing to compute: {err}")
            skipped[name] = str(err)
        except Exception as err:  # noqa: BLE001 - one broken artefact must not hide the others
            print(f"[report] analysis.{name} failed: {type(err).__name__}: {err}")
            failed.append(f"analysis.{name}: {type(err).__name__}: {err}")
    return failed, skipped


def build(results: Path, src: Sources, failed: Sequence[str] = (), viewer: bool = False) -> str:
    """The report's Markdown, from what the analysis commands wrote (`src`)."""
    frame = load_runs(results)
    values = paper.load_paper_values()
    body = settings_section(frame, unfinished_runs(results))
    if len(frame):
        body += figure2_section(src, values)
        body += figure3_section(src)
        body += compare_section(src)
        body += overlap_section(src, values)
        body += tables_section(src, values)
        body += disagreement_section(values)
        body += subset_section(src)
        body += calibration_section(src)
        body += ambiguity_section(frame)
        body += inventory_section(frame)
    body += missing_section(frame, results)
    stored = stored_section(results, frame)
    body += stored
    lines = ["# BlendIn / NUDGING: results report", ""]
    lines += readme_box(frame, src, results, src.before is not None, bool(stored), viewer)
    lines += header(frame, results, unfinished_runs(results))
    if failed:
        lines += (
            ["**Some analysis commands failed; their sections are left out:**", ""] + [f"- {f}" for f in failed] + [""]
        )
    return "\n".join(lines + contents(body) + body) + "\n"


@cli.command("report")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="results directory (default: results)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: RESULTS/report)")
    parser.add_argument(
        "--analysis", type=Path, default=None, help="where the analysis outputs are / go (default: RESULTS/analysis)"
    )
    parser.add_argument("--no-compute", action="store_true", help="only assemble what the commands already wrote")
    cli.add_filters(parser)  # passed to every analysis command
    args = parser.parse_args(argv)
    cli.check_folder(args.results)
    frame = load_runs(args.results)
    if len(frame):
        cli.check_filters(frame, args.results, args.n, args.protocol)
    out = args.out or args.results / "report"
    analysis = args.analysis or args.results / "analysis"
    extra = (["--n", args.n] if args.n else []) + (["--protocol", args.protocol] if args.protocol else [])
    failed: list[str] = []
    skipped: dict = {}
    before = None
    viewer_built = False
    if not args.no_compute and len(frame):
        before = Sources.snapshot(analysis)
        failed, skipped = run_commands(args.results, analysis, extra)
        try:
            write_viewer(args.results, out / "viewer")
            viewer_built = True
        except Exception as err:  # noqa: BLE001 - the viewer must not take the report down with it
            print(f"[report] analysis.viewer failed: {type(err).__name__}: {err}")
            failed.append(f"analysis.viewer: {type(err).__name__}: {err}")
    elif not args.no_compute:
        before = Sources.snapshot(analysis)  # nothing computed: nothing in the analysis folder is current
    src = Sources(analysis, out, before, skipped)
    # link the viewer only where this report built it from these runs (or, with --no-compute, as found)
    viewer = viewer_built or (args.no_compute and (out / "viewer" / "index.html").is_file())
    markdown = build(args.results, src, failed, viewer)
    write.write_text(out / "report.md", markdown)
    write.write_text(out / "index.html", write.markdown_to_html(markdown, "BlendIn / NUDGING results report"))
    if frame.empty:
        print(f"[report] note: no finished runs under {args.results}/runs: the report lists what to run")
    if skipped:
        print(f"[report] not computed (nothing to compute): {', '.join(skipped)}")
    print(f"[report] wrote {out / 'index.html'} and {out / 'report.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
