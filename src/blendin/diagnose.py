"""Will this guidance model help this base model? The paper's intervention-rate diagnostic, in minutes.

    python -m blendin.diagnose [pair=P] [benchmarks=[gsm8k,xstest]] [n=30] [max_new_tokens=128]

For each benchmark it decodes a small subset with the `probe` method: the base model writes alone and
the guidance model is consulted wherever the base is unsure (top-1 probability u < tau), but never
applied. The share of such steps is the intervention rate NUDGING would start from
(`observe_with=nudging` measures NUDGING's own rate on its own path instead, what the paper plots:
guided text can be more or less uncertain than the base's own). The paper finds
that pairs intervening on more than ~20% of tokens do worse (the intervention paradox, Figure 3), so:

- verdict `high`: the 95% interval of the rate lies above the 20% line (expect NUDGING to hurt, or to
  help less; try BlendIn, or another guidance model);
- `low`: the interval lies below it (guidance is rare: expect little change either way);
- `borderline`: the interval contains it.

It also reports how often the two models agree where the base is unsure, and the kinds of tokens
(digits, word starts, punctuation, other) where they disagree most. Each probe run is a normal stored
run (resumable, reused next time). Output: a table on stdout and `results/diagnose/<pair>.json/.md`;
where NUDGING and base runs of the pair are stored, their score difference is shown beside the
verdict, so you can see how well the verdict predicted it. Config: conf/diagnose.yaml.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from .cli import call, refuse_unknown_keys
from .errors import ConfigError

log = logging.getLogger("blendin.diagnose")
KINDS = ("digit", "word start", "punctuation", "other")


def token_kind(text: str) -> str:
    """A token's kind from its text: digits, a word start (leading space or capital), punctuation, other."""
    stripped = text.strip()
    if stripped and any(c.isdigit() for c in stripped):
        return "digit"
    if stripped and all(not c.isalnum() for c in stripped):
        return "punctuation"
    if text[:1].isspace() and stripped[:1].isalpha():
        return "word start"
    return "other"


def rate_interval(rates: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over samples (steps of one sample are not independent)."""
    if not rates:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(rates)
    means = sorted(sum(rates[rng.randrange(n)] for _ in range(n)) / n for _ in range(draws))
    return means[int(0.025 * draws)], means[min(draws - 1, int(0.975 * draws))]


def verdict(low: float, high: float, line: float) -> str:
    if low > line:
        return "high"
    if high < line:
        return "low"
    return "borderline"


def summarize(run_path: Path, tokenizer, line: float) -> dict:
    """The diagnosis of one stored probe run, from its samples and per-token trace."""
    import pandas as pd

    samples = [json.loads(s) for s in (run_path / "samples.jsonl").read_text().splitlines()]
    rates = [s.get("consult_rate", s["intervention_rate"]) for s in samples]
    low, high = rate_interval(rates)
    trace = pd.read_parquet(run_path / "tokens.parquet")
    consulted = trace[trace["consulted"]]
    kinds = consulted["base_top_id"].map(lambda t: token_kind(tokenizer.decode([int(t)])))
    disagree = consulted["guide_top_id"] != consulted["base_top_id"]
    by_kind: list[dict[str, Any]] = []
    for kind in KINDS:
        mask = kinds == kind
        if mask.any():
            by_kind.append(
                {
                    "kind": kind,
                    "consulted_steps": int(mask.sum()),
                    "disagreement": round(float(disagree[mask].mean()), 3),
                }
            )
    by_kind.sort(key=lambda k: (-k["disagreement"], -k["consulted_steps"]))
    rate = sum(rates) / len(rates)
    return {
        "n": len(samples),
        "intervention_rate": round(rate, 4),
        "ci95": [round(low, 4), round(high, 4)],
        "verdict": verdict(low, high, line),
        "consulted_steps": int(len(consulted)),
        "agreement_where_unsure": round(float(1 - disagree.mean()), 3) if len(consulted) else None,
        "mean_rank_of_suggestion": round(
            float(consulted.loc[consulted["guide_top_rank"] > 0, "guide_top_rank"].mean()), 1
        )
        if len(consulted)
        else None,
        "disagreement_by_kind": by_kind,
        "run_dir": str(run_path),
    }


def stored_gain(results: Path, pair: str, benchmark: str) -> dict | None:
    """NUDGING minus base score of the pair's stored runs on this benchmark (same n and settings), if any."""
    runs: dict[tuple, dict[tuple, dict]] = {}  # (n, max_new_tokens, protocol) -> (method, tau) -> metrics
    for path in sorted((results / "runs" / pair / benchmark).glob("*/metrics.json")):
        m = json.loads(path.read_text())
        if m.get("method") in ("base", "nudging") and m.get("score") is not None and m.get("split", "test") == "test":
            key = (
                m.get("n_spec", str(m["n_samples"])),
                m.get("max_new_tokens"),
                json.dumps((m.get("protocol") or {}).get("name", "ours")),
            )
            runs.setdefault(key, {})[(m["method"], m.get("tau"))] = m
    for key, found in sorted(runs.items(), key=lambda kv: -len(kv[1])):
        base = found.get(("base", None))
        nudging = found.get(("nudging", 0.4))
        if base and nudging:
            return {
                "base": base["score"],
                "nudging": nudging["score"],
                "gain": round(nudging["score"] - base["score"], 4),
                "n": base["n_samples"],
                "nudging_intervention_rate": nudging["intervention_rate"],
            }
    return None


def table(pair: str, rows: dict, line: float, observe_with: str = "probe") -> str:
    what = (
        "probe runs, intervention rate = share of base-only steps with u < tau"
        if observe_with == "probe"
        else "NUDGING runs, intervention rate = share of NUDGING's own steps with u < tau"
    )
    out = [
        f"Diagnosis of {pair}: {what} (95% bootstrap interval over samples) against the {line:.0%} line.",
        "",
        "| benchmark | n | intervention rate | 95% CI | verdict | agreement where unsure | most disagreement "
        "| stored NUDGING - base |",
        "|---|---:|---:|---|---|---:|---|---|",
    ]
    for name, r in rows.items():
        kinds = ", ".join(f"{k['kind']} {k['disagreement']:.0%}" for k in r["disagreement_by_kind"][:2]) or "-"
        gain = r.get("stored_gain")
        gain_text = f"{gain['gain']:+.3f} (n={gain['n']})" if gain else "not stored"
        out.append(
            f"| {name} | {r['n']} | {r['intervention_rate']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | "
            f"{r['verdict']} | "
            f"{r['agreement_where_unsure'] if r['agreement_where_unsure'] is not None else '-'} "
            f"| {kinds} | {gain_text} |"
        )
    return "\n".join(out)


def pair_overrides() -> list[str]:
    """The pair chosen on this command line (pair=..., pair.*=..., model@pair.*=...), for the run configs."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    chosen = [f"pair={hydra_cfg.runtime.choices['pair']}"]
    return chosen + [o for o in hydra_cfg.overrides.task if o.startswith(("pair.", "model@pair", "+pair."))]


def diagnose(cfg: DictConfig) -> dict:
    from hydra import compose

    from .run import execute, run_dir, shared_pair
    from .store import atomic_write_json, atomic_write_text

    if cfg.observe_with not in ("probe", "nudging"):
        raise ConfigError(
            f"observe_with={cfg.observe_with!r} must be probe (the base's own path, guidance observed) "
            "or nudging (NUDGING's own path: the rate the paper plots)"
        )
    benchmarks = list(cfg.benchmarks)
    if not benchmarks:
        raise ConfigError("benchmarks=[] is empty: name at least one, e.g. benchmarks=[gsm8k,xstest]")
    results = Path(cfg.results_dir)
    rows, started = {}, time.perf_counter()
    pair_name: str | None = None
    for name in benchmarks:
        overrides = pair_overrides() + [
            f"benchmark={name}",
            f"method={cfg.observe_with}",
            f"method.tau={cfg.tau}",
            f"benchmark.n={cfg.n}",
            f"benchmark.max_new_tokens={cfg.max_new_tokens}",
            f"results_dir={cfg.results_dir}",
            f"batch_size={cfg.batch_size}",
            f"device={cfg.device}",
            f"dtype={cfg.dtype}",
        ]
        run_cfg = compose(config_name="config", overrides=overrides)
        pair_name = run_cfg.pair.name
        t0 = time.perf_counter()
        execute(run_cfg)
        row = summarize(run_dir(run_cfg), shared_pair(run_cfg).model("base").tokenizer, cfg.threshold)
        row["wall_time_s"] = round(time.perf_counter() - t0, 1)
        row["stored_gain"] = stored_gain(results, pair_name, name)
        rows[name] = row
    assert pair_name is not None, "benchmarks is not empty, so a run has named the pair"
    report = {
        "pair": pair_name,
        "observe_with": cfg.observe_with,
        "tau": cfg.tau,
        "threshold": cfg.threshold,
        "n": cfg.n,
        "max_new_tokens": cfg.max_new_tokens,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "benchmarks": rows,
    }
    text = table(pair_name, rows, cfg.threshold, cfg.observe_with)
    out = results / "diagnose"
    stem = pair_name if cfg.observe_with == "probe" else f"{pair_name}-nudging"
    atomic_write_json(out / f"{stem}.json", report)
    atomic_write_text(out / f"{stem}.md", text + "\n")
    print(text)
    print(f"\nstored {out / stem}.json and .md ({report['wall_time_s']} s)")
    return report


@hydra.main(version_base=None, config_path="conf", config_name="diagnose")
def _hydra_main(cfg: DictConfig) -> None:
    call(diagnose, cfg)


def main() -> None:
    refuse_unknown_keys("diagnose", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
