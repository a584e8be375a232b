"""Print a Markdown table of stored runs: every metrics.json under RESULTS/runs/.

    python scripts/results_table.py [--results results] [--pair smollm2_gemma3]
    python scripts/results_table.py --sweep latest      (the runs of the newest multirun)
    python scripts/results_table.py --sweep results/multirun/20261122-170000

One row per run (pair, benchmark, method and its parameters, subset), with the score, its 95%
bootstrap interval, the intervention and override rates and the decoding speed, all read from the
files the runs stored.
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--pair")
    parser.add_argument("--sweep", help="a multirun folder (results/multirun/<time>) or 'latest'")
    args = parser.parse_args(argv)
    runs = sweep_rows(args.results, args.sweep) if args.sweep else rows(args.results, args.pair)
    print(table(runs) if runs else f"no finished runs under {args.results}/runs/")


if __name__ == "__main__":
    main()
