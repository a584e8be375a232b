"""Print a Markdown table of stored runs: every metrics.json under RESULTS/runs/.

    python scripts/results_table.py [--results results] [--pair smollm2_gemma3]
    python scripts/results_table.py --sweep latest      (the runs of the newest multirun)
    python scripts/results_table.py --sweep results/multirun/20261122-170000

One row per run (pair, benchmark, method and its parameters, subset), with the score, its 95%
bootstrap interval, the intervention and override rates and the decoding speed, all read from the
files the runs stored. Runs with several sampled outputs per item (`decoding.samples`) get a second
table: mean accuracy over samples, pass@1, pass@k and majority-vote accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(results: Path, pair: str | None = None) -> list[dict]:
    found = []
    for path in sorted(results.glob("runs/*/*/*/metrics.json")):
        metrics = json.loads(path.read_text())
        if pair in (None, metrics["pair"]):
            found.append(metrics)
    return found


def sweep_rows(results: Path, sweep: str) -> list[dict]:
    """The finished runs of one multirun, from its sweep.json (the job records of blendin.sweep)."""
    folder = max(results.glob("multirun/*/sweep.json"), default=None, key=lambda p: p.parent.name)
    folder = folder.parent if sweep == "latest" and folder else Path(sweep)
    if not (folder / "sweep.json").is_file():
        raise SystemExit(f"error: no sweep.json in {folder}: give a multirun folder, or 'latest'")
    jobs = json.loads((folder / "sweep.json").read_text())
    paths = [Path(j["run_dir"]) / "metrics.json" for j in jobs if j["status"] != "failed"]
    return [json.loads(p.read_text()) for p in paths if p.is_file()]


def table(runs: list[dict]) -> str:
    out = [
        "| pair | benchmark | method | params | n | max tokens | score | score name | 95% CI | intervention | "
        "override | tok/s |",
        "|---|---|---|---|---:|---:|---:|---|---|---:|---:|---:|",
    ]

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    for m in sorted(runs, key=lambda m: (m["pair"], m["benchmark"], m["method"], json.dumps(m["method_params"]))):
        params = ", ".join(f"{k}={v}" for k, v in m["method_params"].items() if k != "name") or "-"
        ci = "-" if m["ci95"][0] is None else f"[{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}]"
        out.append(
            f"| {m['pair']} | {m['benchmark']} | {m['method']} | {params} | {m['n_samples']} | "
            f"{m.get('max_new_tokens', '-')} | {fmt(m['score'])} | {m['score_name']} | {ci} | "
            f"{fmt(m['intervention_rate'])} | {fmt(m['override_rate'])} | {fmt(m['tokens_per_s'])} |"
        )
    return "\n".join(out)


def _ci(pair) -> str:
    return "-" if not pair or pair[0] is None else f"[{pair[0]:.2f}, {pair[1]:.2f}]"


def sampled_table(runs: list[dict]) -> str:
    """Sampled runs: the mean score over outputs, pass@k and the majority vote (with several outputs per
    item), each interval resampling items."""
    out = [
        "| pair | benchmark | method | decoding | items x samples | max tokens | accuracy (mean over samples) | "
        "pass@1 | pass@k | majority vote | intervention |",
        "|---|---|---|---|---|---:|---|---:|---|---|---:|",
    ]
    for m in sorted(runs, key=lambda m: (m["pair"], m["benchmark"], m["method"], json.dumps(m["method_params"]))):
        k = m["samples_per_item"]
        d = m["decoding"]
        drawn = f"T={d['temperature']:g}" + (f", top-p {d['top_p']:g}" if d["top_p"] < 1 else "")
        drawn += (f", top-k {d['top_k']}" if d["top_k"] else "") + f", seed {d['seed']}"
        passes = m.get("pass_at_k") or {}
        majority = m.get("majority_score")
        out.append(
            f"| {m['pair']} | {m['benchmark']} | {m['method']} | {drawn} | {m['n_samples']} x {k} | "
            f"{m.get('max_new_tokens', '-')} | {_fmt(m['score'])} {_ci(m['ci95'])} | {_fmt(passes.get('1'))} | "
            f"{_fmt(passes.get(str(k)))} (k={k}) | {_fmt(majority)} {_ci(m.get('majority_ci95'))} | "
            f"{_fmt(m['intervention_rate'])} |"
        )
    return "\n".join(out)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--pair")
    parser.add_argument("--sweep", help="a multirun folder (results/multirun/<time>) or 'latest'")
    args = parser.parse_args(argv)
    runs = sweep_rows(args.results, args.sweep) if args.sweep else rows(args.results, args.pair)
    if not runs:
        raise SystemExit(f"error: no finished runs under {args.results}/runs/")

    def drawn(m) -> bool:  # sampled (decoding.temperature > 0), with one output per item or several
        return (m.get("decoding") or {}).get("temperature", 0) > 0

    sampled = [m for m in runs if drawn(m)]
    greedy = [m for m in runs if not drawn(m)]
    print("\n\n".join(t for t in (table(greedy) if greedy else "", sampled_table(sampled) if sampled else "") if t))


if __name__ == "__main__":
    main()
