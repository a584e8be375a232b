"""Decoding speed of each method against base-only decoding, on the same prompts in the same run.

    python scripts/bench_speed.py [--pair smollm2_gemma3] [--methods base nudging blendin]
                                  [--batch-sizes 1 8] [--n 8] [--max-new-tokens 64] [--device auto]

Every method decodes the same n prompts to exactly max-new-tokens steps (no early stop, so all
methods do the same amount of work) at each batch size. Prints tokens/s and the ratio to `base` at
the same batch size, and stores the table as JSON under results/bench/.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from blendin.pair import Pair, pair_spec  # noqa: E402
from blendin.prompts import Prompt  # noqa: E402

SYSTEM = "Answer the question by walking through the reasoning steps."
QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. She has only half of the money she needs. "
    "How much more money does Betty need?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "What is the capital of Australia, and why is it not Sydney?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "A train travels 60 miles in 1.5 hours. What is its average speed in miles per hour?",
    "If a rectangle is 7 cm long and 4 cm wide, what are its area and perimeter?",
]


def config(*overrides):
    """The run config composed by Hydra (pairs are built from conf/model/ files)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="smollm2_gemma3", help="a name in conf/pair/")
    parser.add_argument("--methods", nargs="+", default=["base", "guidance", "nudging", "blendin"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--n", type=int, default=8, help="prompts per method and batch size")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = parser.parse_args(argv)

    pair = Pair(pair_spec(config(f"pair={args.pair}").pair), args.device, args.dtype)
    prompts = [Prompt(f"Question: {q}", SYSTEM) for q in (QUESTIONS * (args.n // len(QUESTIONS) + 1))[:args.n]]
    rows = []
    for method in args.methods:
        decoder = pair.decoder(OmegaConf.to_container(config(f"method={method}").method))
        _never_stop(decoder)
        decoder.generate(prompts[:1], max_new_tokens=4)  # warm-up: first-call allocations, lazy tables
        for batch_size in args.batch_sizes:
            _sync()
            start = time.perf_counter()
            outs = decoder.generate(prompts, max_new_tokens=args.max_new_tokens, batch_size=batch_size)
            _sync()
            seconds = time.perf_counter() - start
            tokens = sum(o.n_tokens for o in outs)
            rows.append({"method": method, "batch_size": batch_size, "tokens": tokens, "seconds": round(seconds, 3),
                         "tokens_per_s": round(tokens / seconds, 2),
                         "intervention_rate": round(sum(o.intervention_rate for o in outs) / len(outs), 4)})
            print(f"{method:>9} batch {batch_size:>3}: {tokens / seconds:8.1f} tok/s", flush=True)
    base = {r["batch_size"]: r["tokens_per_s"] for r in rows if r["method"] == "base"}
    for r in rows:
        r["speed_vs_base"] = round(r["tokens_per_s"] / base[r["batch_size"]], 3) if r["batch_size"] in base else None
    _print_table(rows)
    meta = {"pair": args.pair, "device": str(pair.model("base").device), "n_prompts": args.n,
            "max_new_tokens": args.max_new_tokens, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"speed-{args.pair}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"stored {path}")


def _never_stop(decoder) -> None:
    """Equal work for every method: EOS does not end a row, only max_new_tokens does."""
    decoder.lead = dataclasses.replace(decoder.lead, eos_ids=frozenset())


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _print_table(rows) -> None:
    print("\n| method | batch | tokens | seconds | tokens/s | vs base | intervention rate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['batch_size']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | "
              f"{r['speed_vs_base']} | {r['intervention_rate']} |")


if __name__ == "__main__":
    main()
