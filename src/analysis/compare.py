"""Every method side by side: score, how much the guidance intervened, and how the outputs failed.

    python -m analysis.compare [--results results] [--out results/analysis] [--n 20] [--protocol ours]

One row per run of the chosen setting of each benchmark (the one with the most runs, or the one named
by --n/--protocol), methods in the registry's order (`blendin.methods`, which also gives their labels),
then by parameters. Columns: the score with its 95% interval; the intervention measures (the share of
tokens where the guidance was applied, the mean share of the base's probability handed to the guidance
per token, and the share of tokens that differ from the base's own top token); and the failure detectors'
shares of the outputs (`blendin.failures`): buried answers (the gold stated where the scorer does not
read it; GSM8K and multiple choice), runaway outputs (ran to the token budget where the base alone
stopped; among them, how often the guidance itself gave its end of sequence at least half its
probability), loops, and text in another script or language. A reader sees how much of a low score is
extraction (buried), length (runaway) or degeneration.

Writes compare.csv (one row per run, machine-readable), compare.md (one table per benchmark) and
compare_notes.md.
"""

from __future__ import annotations

import pandas as pd

from blendin.methods import REGISTRY

from . import cli, labels, select, write

COLUMNS = [
    "pair",
    "benchmark",
    "method",
    "params",
    "n",
    "score",
    "ci_low",
    "ci_high",
    "intervention_rate",
    "deferred_mass",
    "override_rate",
    "buried_share",
    "runaway_share",
    "runaway_guide_eos_share",
    "loop_share",
    "foreign_share",
    "setting",
    "run_dir",
]
SHARES = {  # column -> its title in compare.md
    "intervention_rate": "interv.",
    "deferred_mass": "deferred",
    "override_rate": "override",
    "buried_share": "buried",
    "runaway_share": "runaway",
    "runaway_guide_eos_share": "runaway, guid. EOS",
    "loop_share": "loop",
    "foreign_share": "foreign",
}


def compute(frame: pd.DataFrame, n: str | None = None, protocol: str | None = None, notes=None) -> pd.DataFrame:
    """compare.csv: one row per scored run in its benchmark's chosen setting (newest of equal runs)."""
    notes = [] if notes is None else notes
    runs = select.filter_runs(frame, n, protocol)
    notes += select.excluded_notes(runs)
    runs = runs[runs["score"].notna()]
    chosen = select.choose_settings(runs)
    runs = select.in_chosen_settings(runs, chosen, notes=notes, what="compare ")
    runs = select.newest(runs, ["pair", "benchmark", "method", "params_key", "setting_key"], notes, "compare: ")
    order = {m: i for i, m in enumerate(REGISTRY)}
    bench = {b: i for i, b in enumerate(labels.order_benchmarks(runs["benchmark"]))}
    runs = runs.assign(_b=runs["benchmark"].map(bench), _m=runs["method"].map(lambda m: order.get(m, len(order))))
    runs = runs.sort_values(["_b", "pair", "_m", "params_key"], kind="stable")
    table = runs.rename(columns={"n_samples": "n"})
    return table[COLUMNS].reset_index(drop=True)


def blocks(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One display table per benchmark: method label, parameters, score [95% CI], the shares in %."""
    out = []
    for benchmark in labels.order_benchmarks(table["benchmark"]):
        part = table[table["benchmark"] == benchmark]
        several = part["pair"].nunique() > 1
        rows = []
        for _, r in part.iterrows():
            row: dict[str, object] = {"pair": labels.pair_short(r["pair"])} if several else {}
            row.update(
                {
                    "method": labels.method_label(r["method"]),
                    "parameters": r["params"],
                    "n": int(r["n"]),
                    "score [95% CI]": write.fmt_ci(r["score"], r["ci_low"], r["ci_high"]),
                    **{title: write.fmt_pct(r[column], 0) for column, title in SHARES.items()},
                }
            )
            rows.append(row)
        out.append((labels.benchmark_label(benchmark), pd.DataFrame(rows)))
    return out


NOTES = [
    "interv.: tokens where the guidance was applied; deferred: the mean share of the base's probability handed "
    "to the guidance per token (NUDGING: the same as interv.; BlendIn: its weight alpha; proxy-tuning: none); "
    "override: tokens that differ from the base's own top token",
    "buried: outputs that state the gold answer where the scorer does not read it (GSM8K, multiple choice); "
    "runaway: outputs that ran to the token budget where the base alone stopped (of those whose base output "
    "is stored); runaway, guid. EOS: of the runaway outputs, those where the guidance gave its own end of "
    "sequence at least half its probability at some step; loop: outputs ending in repetition; foreign: "
    "outputs in another script or language than the prompt (detectors: blendin.failures, agreement with "
    "hand labels in docs/benchmarks.md)",
    "n/a: not measured (a run stored before the measure existed, or a detector that does not apply)",
]


@cli.command("compare")
def main(argv=None) -> int:
    args = cli.parser("compare", __doc__).parse_args(argv)
    frame = cli.load(args)
    notes: list[str] = []
    table = compute(frame, args.n, args.protocol, notes)
    cli.require(table, "scored run", frame, args)
    write.write_csv(table, args.out / "compare.csv")
    write.write_table(
        blocks(table), args.out, "compare", "Every method side by side: score, intervention and failures", NOTES
    )
    settings = sorted({f"{b}: {s}" for b, s in zip(table["benchmark"], table["setting"])})
    write.write_notes(args.out, "compare", "Every method side by side", settings, notes)
    write.report_notes("compare", settings, notes)
    print(f"[compare] wrote {args.out / 'compare.csv'}: {len(table)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
