"""How far does each difference between our protocol and the reference code's move the numbers?

    python scripts/protocol_effects.py [--pair smollm2_gemma3] [--n 20] [--max-new-tokens 128]
                                       [--benchmarks gsm8k truthfulqa xstest] [--results results]

For each difference (stop strings, TruthfulQA option shuffling, the base's view of the text,
token- vs word-level NUDGING, the cap's latch vs running throttle, the reference code's subset vs our
seeded one) it runs the two settings on the same items (normal stored runs: resumable, reused when
they exist) and prints score and intervention rate of each, their difference, and an exact McNemar
p-value on the shared items for 0/1 scores. The table goes to results/protocol_effects.md/.json.
Every number comes from the stored runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# (difference, benchmarks it applies to, overrides of setting A (ours), overrides of setting B)
DIFFERENCES = [
    ("stop strings on / off (base)", None, ["method=base"], ["method=base", "benchmark.stop=[]"]),
    ("stop strings on / off (NUDGING)", None, ["method=nudging"], ["method=nudging", "benchmark.stop=[]"]),
    (
        "TruthfulQA options shuffled / unshuffled, gold always A (base)",
        ["truthfulqa"],
        ["method=base"],
        ["method=base", "benchmark.shuffle=false"],
    ),
    (
        "TruthfulQA options shuffled / unshuffled, gold always A (NUDGING)",
        ["truthfulqa"],
        ["method=nudging"],
        ["method=nudging", "benchmark.shuffle=false"],
    ),
    ("base reads ids / re-tokenized text", None, ["method=nudging"], ["method=nudging", "base_view=text"]),
    ("NUDGING token- / word-level", None, ["method=nudging"], ["method=nudging_words"]),
    ("cap running / latch", None, ["method=cap", "method.mode=running"], ["method=cap", "method.mode=latch"]),
    (
        "subset seeded / reference (seed 609: other items)",
        None,
        ["method=nudging"],
        ["method=nudging", "benchmark.subset_rule=reference"],
    ),
]


def run(overrides: list[str]) -> Path:
    from hydra import compose

    from blendin.run import execute, run_dir

    cfg = compose(config_name="config", overrides=overrides)
    execute(cfg)
    return run_dir(cfg)


def scores(path: Path) -> dict[str, float]:
    return {
        r["id"]: r["score"]
        for r in map(json.loads, (path / "samples.jsonl").read_text().splitlines())
        if r.get("score") is not None
    }


def mcnemar(a: dict, b: dict) -> float | None:
    """Exact two-sided McNemar p on the items both runs scored (None unless scores are 0/1)."""
    from scipy.stats import binomtest

    shared = sorted(set(a) & set(b))
    if not shared or any(a[i] not in (0, 1) or b[i] not in (0, 1) for i in shared):
        return None
    up = sum(a[i] == 0 and b[i] == 1 for i in shared)
    down = sum(a[i] == 1 and b[i] == 0 for i in shared)
    return 1.0 if up + down == 0 else binomtest(up, up + down, 0.5).pvalue


def main(argv=None) -> None:
    from hydra import initialize_config_dir

    from blendin.cli import setup_logging
    from blendin.store import atomic_write_json, atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="smollm2_gemma3")
    parser.add_argument("--benchmarks", nargs="+", default=["gsm8k", "truthfulqa", "xstest"])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    setup_logging()
    common = [
        f"pair={args.pair}",
        f"benchmark.n={args.n}",
        f"benchmark.max_new_tokens={args.max_new_tokens}",
        f"results_dir={args.results}",
    ]
    rows = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for label, only, first, second in DIFFERENCES:
            for benchmark in args.benchmarks:
                if only and benchmark not in only:
                    continue
                paths = [run(common + [f"benchmark={benchmark}"] + o) for o in (first, second)]
                metrics = [json.loads((p / "metrics.json").read_text()) for p in paths]
                a, b = (scores(p) for p in paths)
                rows.append(
                    {
                        "difference": label,
                        "benchmark": benchmark,
                        "score_name": metrics[0]["score_name"],
                        "score_a": metrics[0]["score"],
                        "score_b": metrics[1]["score"],
                        "rate_a": metrics[0]["intervention_rate"],
                        "rate_b": metrics[1]["intervention_rate"],
                        "unit_b": metrics[1].get("intervention_unit", "token"),
                        "n": metrics[0]["n_samples"],
                        "shared_items": len(set(a) & set(b)),
                        "mcnemar_p": mcnemar(a, b),
                        "runs": [str(p) for p in paths],
                    }
                )
    lines = [
        f"Protocol differences on {args.pair}, n={args.n} items per run, {args.max_new_tokens} new tokens "
        "(A = ours, B = the reference code's choice; rates are token-level unless marked word):",
        "",
        "| difference (A / B) | benchmark | score A | score B | B - A | McNemar p | intervention A | intervention B |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    for r in rows:
        delta = None if r["score_a"] is None or r["score_b"] is None else r["score_b"] - r["score_a"]
        unit = " (word)" if r["unit_b"] == "word" else ""
        lines.append(
            f"| {r['difference']} | {r['benchmark']} | {fmt(r['score_a'])} | {fmt(r['score_b'])} | "
            f"{'-' if delta is None else f'{delta:+.3f}'} | {fmt(r['mcnemar_p'])} | {fmt(r['rate_a'])} | "
            f"{fmt(r['rate_b'])}{unit} |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write_json(Path(args.results) / "protocol_effects.json", rows)
    atomic_write_text(Path(args.results) / "protocol_effects.md", text)
    print(text)


if __name__ == "__main__":
    main()
