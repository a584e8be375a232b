"""The report: one page with every figure and table, the run inventory, the protocol settings, what is
missing for a full reproduction, and the paper's published values beside ours.

    python -m analysis.report [--results results] [--out results/report] [--analysis DIR] [--no-compute]

First runs the analysis commands (paradox, heatmap, overlap, tables, subset, calibration) into --analysis
(default RESULTS/analysis), unless --no-compute; then only assembles what they wrote: it computes no
statistic itself. Writes OUT/report.md and OUT/index.html (the same content; figures copied to
OUT/figures/ and shown as relative links, so the folder can be moved or served as it is).

The paper's numbers (src/analysis/paper_values.csv) appear in their own columns and tables labelled
"paper", next to "ours", never mixed; the report also lists where the paper prints different
numbers for the same setting. The calibration section (alpha's premise on teacher-forced runs)
appears when `analysis.calibration` found forced runs; optional sections other tools add are
rendered when their files exist (see OPTIONAL_SECTIONS): diagnosis, tuning and speed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import yaml

from . import calibration, heatmap, labels, overlap, paper, paradox, select, subset, tables, write
from .load import load_runs, unfinished_runs

COMMANDS = [
    ("heatmap", heatmap.main),
    ("paradox", paradox.main),
    ("overlap", overlap.main),
    ("tables", tables.main),
    ("subset", subset.main),
    ("calibration", calibration.main),
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


# ---- small helpers ----------------------------------------------------------------------------------


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() and path.stat().st_size > 0 else None


def _demote(markdown: str, levels: int = 2) -> list[str]:
    """A module's Markdown file, its headings pushed down `levels` levels to nest in the report."""
    return [("#" * levels + line) if line.startswith("#") else line for line in markdown.splitlines()]


def _include(path: Path, levels: int = 2) -> list[str]:
    return (
        _demote(path.read_text(encoding="utf-8"), levels) + [""]
        if path.is_file()
        else [f"_{path.name} was not written (run its command)._", ""]
    )


def _details(summary: str, lines: list[str]) -> list[str]:
    return ["<details><summary>" + summary + "</summary>", "", *lines, "", "</details>", ""]


def _figure(stem: str, caption: str, analysis: Path, out: Path) -> list[str]:
    png = analysis / f"{stem}.png"
    if not png.is_file():
        return [f"_{stem}.png was not written._", ""]
    (out / "figures").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, out / "figures" / png.name)
    pdf = os.path.relpath(analysis / f"{stem}.pdf", out)
    return [f"![{caption}](figures/{png.name})", "", f"[PDF]({pdf})", ""]


def _format(frame: pd.DataFrame, digits: dict | None = None) -> pd.DataFrame:
    """Numbers as text with fixed digits (missing as n/a), for Markdown tables."""
    digits = digits or {}
    shown = frame.copy().astype(object)
    for col in shown.columns:
        if pd.api.types.is_float_dtype(frame[col]):
            shown[col] = [write.fmt(v, digits.get(col, 3)) for v in frame[col]]
    return shown.fillna(write.MISSING)


# ---- sections ---------------------------------------------------------------------------------------


def header(frame: pd.DataFrame, results: Path, unfinished: list[str]) -> list[str]:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "# BlendIn / NUDGING: results report",
        "",
        f"Generated {when} from `{results}/runs`: {len(frame)} finished runs over {frame['pair'].nunique()} "
        f"pair(s) and {frame['benchmark'].nunique()} benchmark(s)"
        + (f"; {len(unfinished)} unfinished run folder(s) ignored." if unfinished else "."),
        "",
        "Every number below is computed from the stored runs (`samples.jsonl`, `tokens.parquet`, "
        "`metrics.json`) by `python -m analysis.<name>`. Columns and tables marked **paper** hold the "
        "published values of Gan, Li, Luo, *To Intervene or Not* (ACL 2026), typed once into "
        "`src/analysis/paper_values.csv`; they are shown beside **ours**, never mixed into it. "
        "Missing cells are n/a, never 0.",
        "",
    ]


def settings_section(frame: pd.DataFrame, unfinished: list[str]) -> list[str]:
    lines = ["## Protocol settings behind the numbers", ""]
    if frame.empty:
        return lines + ["No runs yet.", ""]
    groups = []
    for (setting, unit), group in frame.groupby(["setting", "intervention_unit"], sort=True):
        groups.append(
            {
                "benchmark": ", ".join(labels.order_benchmarks(group["benchmark"])),
                "setting": setting,
                "intervention unit": unit,
                "methods": ", ".join(sorted(group["method"].unique())),
                "pairs": group["pair"].nunique(),
                "runs": len(group),
            }
        )
    lines += [
        write.markdown_table(pd.DataFrame(groups)),
        "",
        "A setting = protocol (`ours`: the same stop strings for every method; `reference`: the published "
        "code's choices), split, subset size n and seed, token budget, stop strings and judge. Each artefact "
        "uses one setting per benchmark (the one with the most runs) and says which in its notes. "
        "Intervention rates are token-level (share of generated tokens where the guidance was applied) "
        "unless the unit says word (Fei et al.'s word-level ratio of `nudging_words`); units are never "
        "mixed in one fit or column.",
        "",
    ]
    excluded = select.excluded_notes(frame)
    if excluded:
        lines += ["Left out of every score:", ""] + [f"- {n}" for n in excluded] + [""]
    if unfinished:
        lines += _details(
            f"{len(unfinished)} unfinished run folder(s) (no metrics.json; ignored)", [f"- `{u}`" for u in unfinished]
        )
    return lines


def _paper_block(ours: pd.DataFrame | None, values: pd.DataFrame, artefact: str, title: str) -> list[str]:
    """'ours | paper' on the keys both have, plus the paper's full list in a collapsed block."""
    lines = [f"**Ours beside the paper ({title})**", ""]
    both = paper.beside(ours, values, artefact) if ours is not None and len(ours) else pd.DataFrame()
    if both.empty:
        lines += [
            f"None of the pairs and settings of the paper's {title} are stored yet, so there is "
            "nothing to put side by side; the paper's values are listed below.",
            "",
        ]
    else:
        shown = both.rename(columns={"paper": "paper (published)", "ours_n": "ours n"})
        shown = shown[[c for c in shown.columns if not (c in ("tau", "alpha") and (shown[c].astype(str) == "").all())]]
        table = [write.markdown_table(_format(shown)), ""]
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


def _cells_as_ours(path: Path, halfwidth: bool = False) -> pd.DataFrame | None:
    cells = _read(path)
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


def figure2_section(analysis: Path, out: Path, values: pd.DataFrame) -> list[str]:
    lines = ["## Figure 2: NUDGING minus base score, per pair and benchmark", ""]
    lines += _figure("figure2", "Figure 2: NUDGING minus base score (ours)", analysis, out)
    lines += _details("Settings and notes", _include(analysis / "figure2_notes.md", 3))
    table = _read(analysis / "figure2.csv")
    ours = None if table is None else table.assign(method="nudging", metric="delta").rename(columns={"delta": "ours"})
    return lines + _paper_block(ours, values, "figure2", "Figure 2 deltas")


def figure3_section(analysis: Path, out: Path) -> list[str]:
    lines = ["## Figure 3: the intervention paradox", ""]
    lines += _figure("figure3", "Figure 3: intervention rate vs score, token-level NUDGING (ours)", analysis, out)
    for extra in sorted(analysis.glob("figure3_*.png")):
        lines += _figure(extra.stem, f"Figure 3 for {extra.stem.split('_', 1)[1]} (ours)", analysis, out)
    fits = _read(analysis / "paradox.csv")
    if fits is not None:
        lines += [write.markdown_table(_format(fits)), ""]
    lines += [
        "The paper prints no numbers for Figure 3; it reports negative correlations, significant on GSM8K, "
        "TruthfulQA and XSTest, and a 20% intervention line. Its x axis is Fei et al.'s word-level ratio "
        "(docs/protocols.md), ours is token-level unless the unit says word.",
        "",
    ]
    return lines + _details("Settings and notes", _include(analysis / "paradox_notes.md", 3))


def overlap_section(analysis: Path, out: Path, values: pd.DataFrame) -> list[str]:
    lines = ["## Figure 4 and Table 4: vocabulary overlap", ""]
    lines += _figure("figure4", "Figure 4: vocabulary overlap at consulted steps (ours)", analysis, out)
    table = _read(analysis / "overlap.csv")
    if table is not None:
        lines += [write.markdown_table(_format(table)), ""]
    lines += _include(analysis / "table4.md", 2)
    t4 = _read(analysis / "table4.csv")
    ours = None
    if t4 is not None:
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
    lines += _paper_block(ours, values, "table4", "Table 4")
    return lines + _details("Settings and notes", _include(analysis / "overlap_notes.md", 3))


def tables_section(analysis: Path, values: pd.DataFrame) -> list[str]:
    lines = [
        "## Tables 1, 2, 3, 5 and 6",
        "",
        "Each table also exists as `.csv` (machine-readable), `.tex` and "
        "`_cells.csv` (every cell with its interval, paired test, MDD, setting and run folder) in "
        f"`{analysis}`.",
        "",
    ]
    for stem, halfwidth in (
        ("table1", False),
        ("table2", True),
        ("table3", False),
        ("table5", False),
        ("table6", False),
    ):
        lines += _include(analysis / f"{stem}.md", 2)
        if stem == "table5":
            t5 = _read(analysis / "table5.csv")
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
            ours = _cells_as_ours(analysis / f"{stem}_cells.csv", halfwidth)
        lines += _paper_block(ours, values, stem, stem.replace("table", "Table "))
    return lines + _details("Settings and notes of the tables", _include(analysis / "tables_notes.md", 3))


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


def subset_section(analysis: Path, out: Path) -> list[str]:
    lines = ["## Is a 100-sample subset enough? (the review's main objection)", ""]
    table = _read(analysis / "subset_vs_full.csv")
    if table is None or table.empty:
        return lines + [
            "No run has both a subset and a full-set twin yet (same pair, benchmark, method, parameters "
            "and protocol). Run, for example, `python -m blendin.run -m experiment=paper_table1` "
            "(n=100) and `python -m blendin.run -m experiment=paper_table2` (full).",
            "",
        ]
    lines += _figure("subset_vs_full", "Subset vs full set (ours)", analysis, out)
    shown = table.drop(columns=["setting", "subset_run", "full_run"])
    return lines + [
        write.markdown_table(_format(shown)),
        "",
        "full_on_subset_ids: the full run's score on the subset's own questions (a gap to the subset "
        "score is decoding noise); spread: percentiles of the means of random subsets of the same size "
        "drawn from the full run; subset_percentile: where the stored subset's score falls in that "
        "spread; score/output agreement: share of shared questions with the same score / text.",
        "",
    ]


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
            "when": frame["created_at"].str.slice(0, 16),
            "run": frame["run_name"],
        }
    )
    return lines + _details(f"{len(inv)} finished runs, one line each", [write.markdown_table(inv)])


def _conf_dirs(results: Path) -> list[Path]:
    here = Path(__file__).resolve().parents[2] / "conf" / "experiment"
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
                combos = [{}]
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


def calibration_section(analysis: Path, out: Path) -> list[str]:
    """Alpha's premise on teacher-forced runs: the summary, the key tables and the two figures of
    `analysis.calibration`; [] when it found no forced runs."""
    table = _read(analysis / "calibration.csv")
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
    summary = _include(analysis / "calibration_summary.md", 2)
    lines += [line for line in summary if not line.startswith("###")]  # the section heading replaces its title
    lines += _include(analysis / "calibration_table.md", 2)
    lines += _figure("calibration_reliability", "Reliability of each model's top-1 probability (ours)", analysis, out)
    lines += _figure("calibration_alpha", "Alpha against correctness at u < tau (ours)", analysis, out)
    return lines + _details("Settings and notes", _include(analysis / "calibration_notes.md", 3))


# ---- optional sections other tools add (hook points) ------------------------------------------------


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


def render_optional_section(title: str, files: list[Path], root: Path) -> list[str]:
    """A section of plain tables for the CSV/JSON files another tool wrote; [] when there are none."""
    if not files:
        return []
    lines = [f"## {title}", "", f"Rendered as stored ({len(files)} file(s)).", ""]
    for path in files:
        name = os.path.relpath(path, root)
        written = path.with_suffix(".md")
        if written.is_file():  # the tool wrote its own Markdown beside the data: show that
            lines += [f"**`{os.path.relpath(written, root)}`**", "", *_demote(written.read_text(encoding="utf-8")), ""]
            continue
        try:
            if path.suffix == ".csv":
                blocks = [("", pd.read_csv(path))]
            else:
                blocks = _json_tables(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, OSError) as err:
            lines += [f"- `{name}`: could not be read ({err})", ""]
            continue
        lines += [f"**`{name}`**", ""]
        for caption, table in blocks:
            lines += ([f"_{caption}_", ""] if caption else []) + [write.markdown_table(_format(table)), ""]
    return lines


# Hook points: (title, function(results, analysis) -> files). Other parts add their outputs here.
OPTIONAL_SECTIONS = [
    (
        "Protocol differences (ours vs the reference code)",
        lambda results, analysis: sorted(results.glob("protocol_effects.json")),
    ),
    ("Diagnosis", lambda results, analysis: sorted((results / "diagnose").glob("*.json"))),
    ("Tuning (chosen settings)", lambda results, analysis: sorted((results / "tune").glob("**/choice.json"))),
    ("Speed", lambda results, analysis: sorted((results / "bench").glob("*.json"))),
]


# ---- command ----------------------------------------------------------------------------------------


def run_commands(results: Path, analysis: Path, extra: list[str]) -> list[str]:
    """Run every analysis command; returns the names of those that failed (with their error printed)."""
    failed = []
    for name, command in COMMANDS:
        print(f"[report] running analysis.{name}", flush=True)
        try:
            command(["--results", str(results), "--out", str(analysis), *extra])
        except Exception as err:  # noqa: BLE001 - one broken artefact must not hide the others
            print(f"[report] analysis.{name} failed: {type(err).__name__}: {err}")
            failed.append(f"analysis.{name}: {type(err).__name__}: {err}")
    return failed


def build(results: Path, analysis: Path, out: Path, failed: list[str] = ()) -> str:
    """The report's Markdown, from what the analysis commands wrote."""
    frame = load_runs(results)
    unfinished = unfinished_runs(results)
    values = paper.load_paper_values()
    lines = header(frame, results, unfinished)
    calibrated = calibration_section(analysis, out)
    if failed:
        lines += (
            ["**Some analysis commands failed; their sections show what was there before:**", ""]
            + [f"- {f}" for f in failed]
            + [""]
        )
    lines += [
        "Contents: [settings](#protocol-settings-behind-the-numbers) · [Figure 2](#figure-2-nudging-minus-"
        "base-score-per-pair-and-benchmark) · [Figure 3](#figure-3-the-intervention-paradox) · [Figure 4 / "
        "Table 4](#figure-4-and-table-4-vocabulary-overlap) · [Tables](#tables-1-2-3-5-and-6) · "
        "[paper vs paper](#where-the-paper-disagrees-with-itself) · [subset vs full](#is-a-100-sample-subset-"
        "enough-the-review-s-main-objection) · "
        + ("[calibration](#calibration-does-alpha-s-premise-hold) · " if calibrated else "")
        + "[inventory](#run-inventory) · [missing](#what-is-missing-for-a-full-reproduction)",
        "",
    ]
    lines += settings_section(frame, unfinished)
    lines += figure2_section(analysis, out, values)
    lines += figure3_section(analysis, out)
    lines += overlap_section(analysis, out, values)
    lines += tables_section(analysis, values)
    lines += disagreement_section(values)
    lines += subset_section(analysis, out)
    lines += calibrated
    lines += ambiguity_section(frame)
    for title, find in OPTIONAL_SECTIONS:
        lines += render_optional_section(title, find(results, analysis), results)
    lines += inventory_section(frame)
    lines += missing_section(frame, results)
    return "\n".join(lines) + "\n"


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
    return lines + [
        "`n_ambiguous` counts the outputs that the rule-based scorers read one way where a careful reader "
        "might read them another: two different answer letters with no correction between them, "
        "letters joined as the answer, GSM8K's two number rules disagreeing, a refusal read from a "
        "rebuttal or a lecture rather than an explicit decline. `refusal_range` is each refusal rate "
        "if every ambiguous output had gone the other way. An LLM judge (`judge=openai` or "
        "`judge=local`, or `python -m blendin.rescore RUN --judge openai` later) reads them instead.",
        "",
        write.markdown_table(shown.sort_values(["benchmark", "method"])),
        "",
    ]


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m analysis.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="results directory (default: results)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: RESULTS/report)")
    parser.add_argument(
        "--analysis", type=Path, default=None, help="where the analysis outputs are / go (default: RESULTS/analysis)"
    )
    parser.add_argument("--no-compute", action="store_true", help="only assemble what the commands already wrote")
    parser.add_argument("--n", default=None, help="passed to every analysis command (subset size, e.g. 100)")
    parser.add_argument("--protocol", default=None, help="passed to every analysis command (protocol name)")
    args = parser.parse_args(argv)
    out = args.out or args.results / "report"
    analysis = args.analysis or args.results / "analysis"
    extra = (["--n", args.n] if args.n else []) + (["--protocol", args.protocol] if args.protocol else [])
    failed = [] if args.no_compute else run_commands(args.results, analysis, extra)
    out.mkdir(parents=True, exist_ok=True)
    markdown = build(args.results, analysis, out, failed)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    (out / "index.html").write_text(
        write.markdown_to_html(markdown, "BlendIn / NUDGING results report"), encoding="utf-8"
    )
    if load_runs(args.results).empty:
        print(f"[report] note: no finished runs under {args.results}/runs: the report lists what to run")
    print(f"[report] wrote {out / 'index.html'} and {out / 'report.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
