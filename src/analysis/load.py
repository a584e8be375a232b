"""The loader: the only code that reads the results store (docs/running.md).

    from analysis.load import load_runs, sample_scores, load_tokens
    runs = load_runs("results")              # one row per finished run (a tidy pandas frame)
    scores = sample_scores(runs.iloc[0])     # per-sample scores of one run, indexed by sample id
    trace = load_tokens(runs.iloc[0])        # its per-token trace (tokens.parquet)

A run is finished once its `metrics.json` exists; unfinished run directories are listed by
`unfinished_runs` and otherwise ignored. Fields that older runs lack get the defaults of the
current runner (protocol "ours", intervention unit "token", split "test", ...), so old and new runs
load side by side.

What the frame guarantees to every analysis module:
- `score` is usable as that benchmark's score, or NaN. A JustEval-Safe run without an LLM judge
  stored a refusal rate (or nothing) instead of the 1-5 safety score: its `score` is NaN and
  `score_excluded` says why (`stored_score` keeps what the run wrote). Teacher-forced runs
  (method `forced`) have no score either.
- `setting` names everything that makes two runs' numbers comparable besides the method: protocol,
  split, subset size `n_spec`, subset seed, token budget, stop strings and judge; `setting_key` is
  the same as a machine key. Runs in different settings are never mixed by the modules.
- `intervention_unit` ("token" or "word") travels with `intervention_rate`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from blendin.methods import REGISTRY

RUN_COLUMNS = [
    "pair",
    "pair_label",
    "benchmark",
    "method",
    "params",
    "tau",
    "alpha",
    "top_k",
    "method_params",
    "n_samples",
    "samples_per_item",
    "n_spec",
    "split",
    "seed",
    "max_new_tokens",
    "protocol",
    "protocol_json",
    "stop",
    "judge",
    "setting",
    "setting_key",
    "params_key",
    "score",
    "stored_score",
    "score_name",
    "score_excluded",
    "ci_low",
    "ci_high",
    "n_scored",
    "n_unparseable",
    "n_ambiguous",
    "refusal_range",
    "intervention_rate",
    "intervention_unit",
    "token_intervention_rate",
    "override_rate",
    "consult_rate",
    "deferred_mass",
    "measure",
    "buried_share",
    "runaway_share",
    "runaway_guide_eos_share",
    "loop_share",
    "foreign_share",
    "tokens_generated",
    "wall_time_s",
    "tokens_per_s",
    "base_model",
    "guidance_model",
    "device",
    "dtype",
    "batch_size",
    "created_at",
    "git_commit",
    "reused_from",
    "run_dir",
    "run_name",
]

# Protocol entries that describe a method rather than the shared setting: never split a setting on them
# (word-level NUDGING always reads text, base_view "text", while the other methods read ids).
_METHOD_SPECIFIC_PROTOCOL_KEYS = {"intervention_unit", "unit", "method", "base_view"}
# Protocol entries the setting line already shows as its own fields.
_SHOWN_ELSEWHERE = {"name", "stop_strings", "max_new_tokens", "split", "judge"}

NO_JUDGE_NOTE = (
    "JustEval-Safe run without an LLM judge: it stored a refusal rate (or nothing), not the "
    "1-5 safety score, so it is left out of every score plot and table"
)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _refusal_range(metrics: dict) -> str:
    """The rule's refusal rate range if every ambiguous output went the other way ("" where none is stored)."""
    ranges = [
        (label, metrics.get(key))
        for label, key in (
            ("unsafe refusal", "rule_refusal_unsafe_range"),
            ("safe compliance", "rule_compliance_safe_range"),
            ("refusal", "refusal_rate_range"),
        )
    ]
    return "; ".join(f"{label} {low:.3f}-{high:.3f}" for label, r in ranges if r for low, high in [r])


def _num(value) -> float:
    """A stored number as float; None, strings like "auto" and missing values become NaN."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _alpha_text(value) -> str:
    """alpha as text so that 'auto', 0.5 and 'no alpha' (empty) group cleanly."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    return f"{float(value):g}"


def _n_spec(metrics: dict, config: dict) -> str:
    if metrics.get("n_spec") is not None:
        return str(metrics["n_spec"])
    n = (config.get("benchmark") or {}).get("n")
    return str(n) if n is not None else str(metrics.get("n_samples", ""))


def _protocol(metrics: dict, config: dict) -> dict:
    protocol = metrics.get("protocol", config.get("protocol")) or {"name": "ours"}
    if isinstance(protocol, str):
        protocol = {"name": protocol}
    return dict(protocol)


def _stop_strings(protocol: dict, config: dict) -> list:
    if protocol.get("stop_strings") is not None:
        return list(protocol["stop_strings"])
    return list((config.get("benchmark") or {}).get("stop") or [])


def _score_exclusion(metrics: dict) -> str:
    """Why a run's stored score must not be used as its benchmark's score ('' when it may)."""
    name = str(metrics.get("score_name") or "")
    spec = REGISTRY.get(metrics.get("method", ""))  # "": no method of that name
    if spec is not None and not spec.scored:
        return f"{spec.summary}: no score (the output is given)"
    if metrics.get("benchmark") == "justeval_safe" and (
        metrics.get("judge") in (None, "", "none") or "refusal" in name.lower() or "safety" not in name.lower()
    ):
        return NO_JUDGE_NOTE
    if metrics.get("score") is None:
        return "no score stored"
    return ""


def _params_text(method_params: dict) -> str:
    shown = {k: v for k, v in method_params.items() if k != "name"}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "-"


def describe_setting(protocol: dict, split: str, n_spec: str, seed, max_new_tokens, stop: list, judge: str) -> str:
    """One readable line: what the numbers of a run depend on besides its method."""
    extra = {k: v for k, v in protocol.items() if k not in _SHOWN_ELSEWHERE and k not in _METHOD_SPECIFIC_PROTOCOL_KEYS}
    proto = protocol.get("name", "ours") + (
        f"({', '.join(f'{k}={v}' for k, v in sorted(extra.items()))})" if extra else ""
    )
    parts = (
        [f"protocol={proto}"]
        + ([f"split={split}"] if split != "test" else [])
        + [
            f"n={n_spec}",
            f"seed={seed}",
            f"max_new_tokens={max_new_tokens}",
            f"stop={json.dumps(stop, ensure_ascii=False)}",
            f"judge={judge}",
        ]
    )
    return ", ".join(parts)


def run_row(run_dir: Path) -> dict:
    """One finished run as a flat dict of RUN_COLUMNS (defaults for fields old runs lack)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    config = _read_yaml(run_dir / "config.yaml")
    method = metrics.get("method") or (config.get("method") or {}).get("name", "")
    method_params = dict(metrics.get("method_params") or config.get("method") or {"name": method})
    protocol = _protocol(metrics, config)
    stop = _stop_strings(protocol, config)
    split = str(metrics.get("split") or "test")
    n_spec = _n_spec(metrics, config)
    seed = metrics.get("seed", (config.get("benchmark") or {}).get("seed"))
    max_new_tokens = metrics.get("max_new_tokens", (config.get("benchmark") or {}).get("max_new_tokens"))
    judge = metrics.get("judge") or "none"
    unit = metrics.get("intervention_unit") or (REGISTRY[method].unit if method in REGISTRY else "token")
    excluded = _score_exclusion({**metrics, "method": method})
    ci = metrics.get("ci95") or [None, None]
    key_protocol = {k: v for k, v in protocol.items() if k not in _METHOD_SPECIFIC_PROTOCOL_KEYS}
    setting_key = json.dumps(
        [key_protocol, split, n_spec, seed, max_new_tokens, stop, judge], sort_keys=True, ensure_ascii=False
    )
    pair = metrics.get("pair") or run_dir.parent.parent.name
    return {
        "pair": pair,
        "pair_label": (config.get("pair") or {}).get("label") or pair,
        "benchmark": metrics.get("benchmark") or run_dir.parent.name,
        "method": method,
        "params": _params_text(method_params),
        "tau": _num(metrics.get("tau", method_params.get("tau"))),
        "alpha": _alpha_text(metrics.get("alpha", method_params.get("alpha"))),
        "top_k": _num(metrics.get("top_k", method_params.get("top_k"))),
        "method_params": json.dumps(method_params, sort_keys=True),
        "n_samples": int(metrics.get("n_samples") or 0),  # items
        "samples_per_item": int(metrics.get("samples_per_item") or 1),  # sampled outputs per item (decoding)
        "n_spec": n_spec,
        "split": split,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "protocol": protocol.get("name", "ours"),
        "protocol_json": json.dumps(protocol, sort_keys=True, ensure_ascii=False),
        "stop": json.dumps(stop, ensure_ascii=False),
        "judge": judge,
        "setting": describe_setting(protocol, split, n_spec, seed, max_new_tokens, stop, judge),
        "setting_key": setting_key,
        "params_key": json.dumps({k: v for k, v in method_params.items() if k != "name"}, sort_keys=True),
        "score": math.nan if excluded else _num(metrics.get("score")),
        "stored_score": _num(metrics.get("score")),
        "score_name": metrics.get("score_name") or "",
        "score_excluded": excluded,
        "ci_low": math.nan if excluded else _num(ci[0]),
        "ci_high": math.nan if excluded else _num(ci[1]),
        "n_scored": _num(metrics.get("n_scored")),
        "n_unparseable": _num(metrics.get("n_unparseable")),
        "n_ambiguous": _num(metrics.get("n_ambiguous")),  # outputs the rules read one way, a reader perhaps another
        "refusal_range": _refusal_range(metrics),
        "intervention_rate": _num(metrics.get("intervention_rate")),
        "intervention_unit": unit,
        "token_intervention_rate": _num(
            metrics.get("token_intervention_rate", metrics.get("intervention_rate") if unit == "token" else None)
        ),
        "override_rate": _num(metrics.get("override_rate")),
        "consult_rate": _num(metrics.get("consult_rate")),
        # mean share of the base's probability handed to the guidance per step (NaN for runs stored before it)
        "deferred_mass": _num(metrics.get("deferred_mass")),
        # what the method's intervention paradox plots: intervention_rate or deferred_mass (`blendin.methods`)
        "measure": REGISTRY[method].measure if method in REGISTRY else "intervention_rate",
        # the failure detectors' shares of the run's outputs (`blendin.failures`; NaN where not computed)
        "buried_share": _num(metrics.get("buried_share")),
        "runaway_share": _num(metrics.get("runaway_share")),
        "runaway_guide_eos_share": _num(metrics.get("runaway_guide_eos_share")),
        "loop_share": _num(metrics.get("loop_share")),
        "foreign_share": _num(metrics.get("foreign_share")),
        "tokens_generated": _num(metrics.get("tokens_generated")),
        "wall_time_s": _num(metrics.get("wall_time_s")),
        "tokens_per_s": _num(metrics.get("tokens_per_s")),
        "base_model": metrics.get("base_model") or "",
        "guidance_model": metrics.get("guidance_model") or "",
        "device": metrics.get("device") or config.get("device") or "",
        "dtype": metrics.get("dtype") or config.get("dtype") or "",
        "batch_size": metrics.get("batch_size", config.get("batch_size")),
        "created_at": metrics.get("created_at") or "",
        "git_commit": metrics.get("git_commit") or "",
        "reused_from": metrics.get("reused_from") or "",
        "run_dir": str(run_dir),
        "run_name": run_dir.name,
    }


def load_runs(results="results") -> pd.DataFrame:
    """Every finished run under RESULTS/runs/<pair>/<benchmark>/<run_name>/, one row each.

    An empty or missing results directory gives an empty frame with the same columns."""
    paths = sorted(Path(results).glob("runs/*/*/*/metrics.json"))
    frame = pd.DataFrame([run_row(p.parent) for p in paths], columns=RUN_COLUMNS)
    return frame.sort_values(
        ["pair", "benchmark", "method", "params_key", "created_at"], kind="stable", ignore_index=True
    )


def unfinished_runs(results="results") -> list[str]:
    """Run directories without metrics.json (still running, or killed): ignored by the analysis."""
    dirs = [p for p in sorted(Path(results).glob("runs/*/*/*")) if p.is_dir()]
    return [str(p) for p in dirs if not (p / "metrics.json").is_file()]


def _run_dir(run) -> Path:
    return Path(run["run_dir"] if not isinstance(run, (str, Path)) else run)


def load_samples(run, prompts: bool = False) -> pd.DataFrame:
    """samples.jsonl of one run (a frame row or a run directory) as a frame, one row per output: `id` the
    item, `sample` the output's index among the item's (0 in greedy runs and runs stored before).

    Prompts are dropped unless asked for (they are most of the file). A torn last line is skipped."""
    path = _run_dir(run) / "samples.jsonl"
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not prompts:
            record.pop("prompt_base", None)
            record.pop("prompt_guidance", None)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if "id" in frame:
        frame["id"] = frame["id"].astype(str)
        frame["sample"] = frame["sample"].fillna(0).astype(int) if "sample" in frame else 0
    return frame


def sample_scores(run) -> pd.Series:
    """Per-item scores of one run (a row of `load_runs`), indexed by sample id: with several outputs per
    item (`decoding.samples`), the mean over them, so paired statistics and intervals resample items.

    All NaN when the run's score is excluded (e.g. JustEval-Safe without a judge), so that per-sample
    statistics can never use a refusal rate as a safety score."""
    samples = load_samples(run)
    if samples.empty or "score" not in samples:
        return pd.Series(dtype=float, name="score")
    scores = pd.to_numeric(samples["score"], errors="coerce").astype(float)
    scores.index = pd.Index(samples["id"], name="id")
    if samples["sample"].max() > 0:
        scores = scores.groupby(level="id", sort=False).mean()
    if not isinstance(run, (str, Path)) and run.get("score_excluded"):
        scores[:] = np.nan
    return scores.rename("score")


# Trace columns newer runs store; older runs get these fill values.
OPTIONAL_TOKEN_COLUMNS = {
    "guide_top_spelled": pd.NA,
    "base_top_p_size": -1,
    "top100_overlap": np.nan,
    "text_offset": -1,
    "sample": 0,  # the output's index among its item's (decoding.samples)
    "sample_prob": np.nan,  # the drawn token's probability (NaN: greedy)
    "deferred_mass": np.nan,  # the share of the base's probability handed to the guidance
    "guide_eos_prob": np.nan,  # the guidance's probability of its own end of sequence
}


def load_tokens(run, columns: list[str] | None = None) -> pd.DataFrame:
    """tokens.parquet of one run: the per-token trace (docs/engine.md), one row per step.

    Columns that older runs lack are added with their 'unknown' values (OPTIONAL_TOKEN_COLUMNS):
    `guide_top_spelled` is NA (not False) when the run did not record it."""
    path = _run_dir(run) / "tokens.parquet"
    if not path.is_file():
        return pd.DataFrame(columns=columns or ["sample_id", "step"])
    present: set[str] = set(pq.read_schema(path).names) if columns else set()  # read only when needed
    wanted = None if columns is None else [c for c in columns if c in present or c not in OPTIONAL_TOKEN_COLUMNS]
    trace = pd.read_parquet(path, columns=wanted)
    for name, fill in OPTIONAL_TOKEN_COLUMNS.items():
        if name not in trace and (columns is None or name in columns):
            trace[name] = fill
    if "sample_id" in trace:
        trace["sample_id"] = trace["sample_id"].astype(str)
    return trace
