"""Synthetic results stores for the analysis tests: run directories written like blendin.run writes them.

`write_run` writes one run (config.yaml, samples.jsonl, tokens.parquet, metrics.json) from per-sample
scores; `build_store` writes a small store with known answers (see its docstring).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

LABELS = {
    "qwen1.7b_llama8b": "Q-3 1.7B→L-3 8B",
    "gemma1b_llama8b": "G-3 1B→L-3 8B",
    "llama1b_gemma9b": "L-3 1B→G-3 9B",
    "llama1b_llama8b": "L-3 1B→8B",
    "smollm2_gemma3": "SmolLM2 135M→Gemma-3 270M",
}
STOP = {
    "gsm8k": ["\n\nQuestion:"],
    "truthfulqa": ["\n\nQuestion:"],
    "xstest": ["\n\nInstruction:"],
    "justeval_safe": ["\n\nInstruction:"],
    "mmlu": ["\n\nQuestion:"],
    "arc_challenge": ["\n\nQuestion:"],
}
SCORE_NAME = {"gsm8k": "accuracy (last number)", "xstest": "accuracy", "justeval_safe": "safety (1-5, LLM judge)"}
_clock = [0]


def default_trace(ids, n_steps=6, seed=0) -> pd.DataFrame:
    """A plausible trace: every other step consulted, ranks 1..60 spread, half inside the top-p set."""
    rng = np.random.default_rng(seed)
    rows = []
    for sid in ids:
        for step in range(n_steps):
            consulted = step % 2 == 0
            rank = int(rng.integers(1, 61)) if consulted else -1
            rows.append(
                dict(
                    sample_id=sid,
                    step=step,
                    base_top_prob=0.3 if consulted else 0.8,
                    base_top_id=5,
                    consulted=consulted,
                    applied=consulted,
                    alpha=0.5 if consulted else np.nan,
                    blend_prob=np.nan,
                    source=1 if consulted else 0,
                    chosen_id=7,
                    override=consulted,
                    guide_top_id=7 if consulted else -1,
                    guide_top_prob=0.6 if consulted else np.nan,
                    base_prob_of_guide_top=0.1 if consulted else np.nan,
                    guide_top_rank=rank,
                    guide_top_in_base_top_p=bool(consulted and rank <= 10),
                )
            )
    return pd.DataFrame(rows)


def write_run(
    results,
    pair,
    benchmark,
    method,
    scores,
    *,
    rate=0.0,
    tau=0.4,
    alpha=None,
    n_spec=None,
    judge=None,
    score_name=None,
    protocol=None,
    unit=None,
    tokens=None,
    ids=None,
    seed=0,
    max_new_tokens=64,
    stored_score="mean",
    outputs=None,
    extra_metrics=None,
    name_suffix="",
    source="reference",
) -> Path:
    """Write one finished run; returns its directory. `scores` are per-sample (None = unscored)."""
    _clock[0] += 1
    ids = ids or [f"{benchmark}-{i}" for i in range(len(scores))]
    n_spec = str(len(scores)) if n_spec is None else str(n_spec)
    params = {"name": method}
    if method not in ("base", "guidance", "aligned"):
        params["tau"] = tau
    if method == "blendin":
        params.update(alpha=alpha if alpha is not None else "auto", lam=0.1, top_k=100)
    if method == "forced":
        params.update(lam=0.1, top_k=100, source=source)
    tag = f"-tau{tau}" if "tau" in params else ""
    tag += f"-alpha{params['alpha']}" if "alpha" in params else ""
    tag += "" if source == "reference" else f"-{Path(source).name}"
    name = f"{method}{tag}-n{n_spec}-s{seed}{name_suffix}-{_clock[0]:04d}"
    run_dir = Path(results) / "runs" / pair / benchmark / name
    run_dir.mkdir(parents=True)
    config = {
        "results_dir": str(results),
        "batch_size": 8,
        "device": "cpu",
        "dtype": "float32",
        "pair": {
            "name": pair,
            "label": LABELS.get(pair, pair),
            "base": {"source": "x"},
            "guidance": {"source": "y"},
            "aligned": None,
        },
        "benchmark": {
            "name": benchmark,
            "n": int(n_spec) if n_spec.isdigit() else n_spec,
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "stop": STOP.get(benchmark, []),
        },
        "method": params,
        "judge": {"kind": judge or "none"},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    with open(run_dir / "samples.jsonl", "w") as fh:
        for i, (sid, score) in enumerate(zip(ids, scores)):
            fh.write(
                json.dumps(
                    {
                        "id": sid,
                        "prompt_base": "Q",
                        "prompt_guidance": "Q",
                        "output": outputs[i] if outputs else f"out {sid}",
                        "stop_reason": "eos",
                        "gold": "1",
                        "prediction": "1",
                        "score": score,
                        "n_tokens": 6,
                        "n_interventions": 1,
                        "n_overrides": 1,
                        "intervention_rate": rate,
                        "override_rate": rate,
                    }
                )
                + "\n"
            )
    trace = default_trace(ids, seed=_clock[0]) if tokens is None else tokens
    trace.to_parquet(run_dir / "tokens.parquet", index=False)
    valid = [s for s in scores if s is not None]
    score = float(np.mean(valid)) if valid and stored_score == "mean" else stored_score
    if stored_score == "mean" and not valid:
        score = None
    metrics = {
        "pair": pair,
        "base_model": "base-model",
        "guidance_model": "guidance-model",
        "benchmark": benchmark,
        "method": method,
        "tau": params.get("tau"),
        "alpha": params.get("alpha"),
        "top_k": params.get("top_k"),
        "method_params": params,
        "n_samples": len(scores),
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "score": score,
        "score_name": score_name or SCORE_NAME.get(benchmark, "accuracy"),
        "ci95": [None, None] if score is None else [max(0.0, score - 0.1), score + 0.1],
        "n_scored": len(valid),
        "n_unparseable": 0,
        "intervention_rate": rate,
        "override_rate": rate / 2,
        "tokens_generated": 6 * len(scores),
        "wall_time_s": 1.0,
        "tokens_per_s": 6.0,
        "judge": judge,
        "reused_from": None,
        "git_commit": "abc",
        "created_at": f"2026-11-23T00:{_clock[0] // 60:02d}:{_clock[0] % 60:02d}+00:00",
    }
    if protocol is not None:
        metrics["protocol"] = protocol
    if unit is not None:
        metrics["intervention_unit"] = unit
    if not n_spec.isdigit():
        metrics["n_spec"] = n_spec
    metrics.update(extra_metrics or {})
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return run_dir


def binary(mean: float, n: int, seed: int = 0) -> list[float]:
    """n scores of 0/1 whose mean is round(mean * n) / n, in a seeded order."""
    k = int(round(mean * n))
    values = np.array([1.0] * k + [0.0] * (n - k))
    np.random.default_rng(seed).shuffle(values)
    return values.tolist()


# Known answers of build_store: NUDGING's score = 0.8 - rate on every benchmark (exactly linear).
PAIRS = ["qwen1.7b_llama8b", "gemma1b_llama8b", "llama1b_gemma9b", "llama1b_llama8b", "smollm2_gemma3"]
RATES = {
    "qwen1.7b_llama8b": 0.30,
    "gemma1b_llama8b": 0.15,
    "llama1b_gemma9b": 0.10,
    "llama1b_llama8b": 0.20,
    "smollm2_gemma3": 0.40,
}
N = 20


def build_store(results) -> Path:
    """A small store with known answers.

    - 5 pairs x {gsm8k, xstest}: base (0.2), guidance (0.5), nudging (0.8 - rate, exactly), blendin
      (NUDGING's scores with one more sample right); aligned on Q→L only; 20 samples each.
    - gsm8k: cap on every pair; af on two pairs. BlendIn on Q→L: tau 0.3/0.5 and alpha 0.5 too.
    - justeval_safe: base and nudging on two pairs WITHOUT a judge (refusal rate, must be left out).
    - probe runs on Q→L and G→L (gsm8k) for the overlap.
    - Q→L gsm8k nudging on the full set (60 samples) whose first 20 ids are the subset's.
    """
    results = Path(results)
    for pair in PAIRS:
        rate = RATES[pair]
        for benchmark in ("gsm8k", "xstest"):
            write_run(results, pair, benchmark, "base", binary(0.2, N, 1))
            write_run(results, pair, benchmark, "guidance", binary(0.5, N, 2))
            nudged = binary(0.8 - rate, N, 3)
            write_run(results, pair, benchmark, "nudging", nudged, rate=rate)
            better = list(nudged)
            better[better.index(0.0)] = 1.0
            write_run(results, pair, benchmark, "blendin", better, rate=rate)
        write_run(results, pair, "gsm8k", "cap", binary(0.8 - rate - 0.05, N, 4), rate=min(rate, 0.15))
    write_run(results, "qwen1.7b_llama8b", "gsm8k", "aligned", binary(0.9, N, 5))
    for pair in ("qwen1.7b_llama8b", "llama1b_llama8b"):
        write_run(results, pair, "gsm8k", "af", binary(0.4, N, 6), rate=0.05)
    q = "qwen1.7b_llama8b"
    write_run(results, q, "gsm8k", "blendin", binary(0.55, N, 7), tau=0.3, rate=0.2)
    write_run(results, q, "gsm8k", "blendin", binary(0.60, N, 8), tau=0.5, rate=0.35)
    write_run(results, q, "gsm8k", "blendin", binary(0.45, N, 9), tau=0.4, alpha=0.5, rate=0.3)
    for pair in ("qwen1.7b_llama8b", "gemma1b_llama8b"):
        write_run(results, pair, "justeval_safe", "base", [1.0, 0.0] * 10, score_name="refusal_rate (no judge)")
        write_run(
            results,
            pair,
            "justeval_safe",
            "nudging",
            [None] * N,
            rate=0.3,
            stored_score=None,
            score_name="refusal_rate (no judge)",
        )
    for pair in ("qwen1.7b_llama8b", "gemma1b_llama8b"):
        write_run(results, pair, "gsm8k", "probe", binary(0.2, N, 1), rate=0.0, extra_metrics={"consult_rate": 0.5})
    full_ids = [f"gsm8k-{i}" for i in range(60)]
    full_scores = binary(0.8 - RATES[q], N, 3) + binary(0.5, 40, 11)
    write_run(results, q, "gsm8k", "nudging", full_scores, rate=RATES[q], n_spec="full", ids=full_ids)
    return results


# ---- teacher-forced runs (method forced) for analysis.calibration ----------------------------------

FORCED_WEIGHTS = ("auto", "nolambda", "entropy", "a03", "a05", "a07")


def forced_trace(sample_id: str, pieces: list[str], **columns) -> tuple[pd.DataFrame, str]:
    """One answer's forced trace and its output text: one row per token `pieces[i]`, text_offset the
    end of each piece in the output. Columns are given as lists (one per token) or scalars; defaults:
    base_top_prob 0.3, guide_top_prob 0.6, nobody right, every alpha 0.5."""
    n = len(pieces)
    offsets = np.cumsum([len(p) for p in pieces]).tolist()

    def get(name, default):
        value = columns.get(name, default)
        return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * n

    base_correct = get("base_correct", False)
    frame = pd.DataFrame(
        {
            "sample_id": sample_id,
            "step": range(n),
            "base_top_prob": get("base_top_prob", 0.3),
            "base_top_id": 5,
            "applied": False,
            "blend_prob": np.nan,
            "source": 0,
            "chosen_id": 7,
            "override": [not b for b in base_correct],
            "guide_top_id": 7,
            "guide_top_prob": get("guide_top_prob", 0.6),
            "base_prob_of_guide_top": 0.1,
            "guide_top_rank": 3,
            "guide_top_in_base_top_p": True,
            "guide_top_spelled": False,
            "base_top_p_size": 5,
            "top100_overlap": 0.3,
            "text_offset": offsets,
            "ref_id": 7,
            "base_prob_of_ref": 0.1,
            "base_rank_of_ref": 2,
            "guide_prob_of_ref": 0.2,
            "guide_rank_of_ref": 2,
            "base_correct": base_correct,
            "guide_correct": get("guide_correct", False),
            "base_entropy": 1.0,
            "guide_entropy": 1.0,
            **{f"alpha_{w}": get(f"alpha_{w}", 0.5) for w in ("auto", "nolambda", "entropy")},
            **{f"blend_correct_{w}": get(f"blend_correct_{w}", False) for w in FORCED_WEIGHTS},
        }
    )
    frame["consulted"] = frame["base_top_prob"] < 0.4
    frame["alpha"] = frame["alpha_auto"]
    return frame, "".join(pieces)


PIECES = ["The", " answer", " is", " 4", "2", ".", "\n", "Natal", "ia", " sold", " 48", " clips", ",", " then"]


def synthetic_forced(
    n_samples: int = 30, n_tokens: int = 40, premise: str = "held", seed: int = 0, prefix: str = "s"
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """A forced trace with known answers: (tokens, outputs, ids).

    Each position is one of: both right, neither, only the guidance right, only the base right.
    premise "held": alpha (auto and nolambda) lies in [0.6, 0.95] where only the guidance is right and
    in [0.05, 0.4] where only the base is (AUROC 1); "reversed": the other way round (AUROC 0); "none":
    alpha uniform. The entropy weight is always uniform noise. BlendIn picks the guidance where its
    alpha > 0.5 (so under "held" it is right wherever either model is); alpha 0.3 picks the base,
    0.5 and 0.7 the guidance."""
    rng = np.random.default_rng(seed)
    frames, outputs, ids = [], [], []
    for i in range(n_samples):
        case = rng.choice(["both", "neither", "guide", "base"], size=n_tokens, p=[0.3, 0.3, 0.2, 0.2])
        base, guide = np.isin(case, ["both", "base"]), np.isin(case, ["both", "guide"])
        high, low = rng.uniform(0.6, 0.95, n_tokens), rng.uniform(0.05, 0.4, n_tokens)
        if premise == "held":
            alpha = np.where(case == "guide", high, np.where(case == "base", low, rng.uniform(0, 1, n_tokens)))
        elif premise == "reversed":
            alpha = np.where(case == "guide", low, np.where(case == "base", high, rng.uniform(0, 1, n_tokens)))
        else:
            alpha = rng.uniform(0, 1, n_tokens)
        entropy = rng.uniform(0, 1, n_tokens)

        def pick(a):
            return np.where(a > 0.5, guide, base)

        pieces = [PIECES[j % len(PIECES)] for j in range(n_tokens)]
        sid = f"{prefix}{i:03d}"
        frame, output = forced_trace(
            sid,
            pieces,
            base_top_prob=rng.uniform(0.05, 0.95, n_tokens).tolist(),
            guide_top_prob=rng.uniform(0.05, 0.95, n_tokens).tolist(),
            base_correct=base.tolist(),
            guide_correct=guide.tolist(),
            alpha_auto=alpha.tolist(),
            alpha_nolambda=(alpha * 0.98).tolist(),
            alpha_entropy=entropy.tolist(),
            blend_correct_auto=pick(alpha).tolist(),
            blend_correct_nolambda=pick(alpha * 0.98).tolist(),
            blend_correct_entropy=pick(entropy).tolist(),
            blend_correct_a03=base.tolist(),
            blend_correct_a05=guide.tolist(),
            blend_correct_a07=guide.tolist(),
        )
        frames.append(frame)
        outputs.append(output)
        ids.append(sid)
    return pd.concat(frames, ignore_index=True), outputs, ids


def write_forced_run(
    results,
    pair,
    benchmark,
    tokens: pd.DataFrame,
    outputs: list[str],
    ids: list[str],
    source: str = "reference",
    **kwargs,
) -> Path:
    """A finished teacher-forced run (method forced) with the given trace and reference outputs."""
    return write_run(
        results,
        pair,
        benchmark,
        "forced",
        [1.0] * len(ids),
        tokens=tokens,
        outputs=outputs,
        ids=ids,
        rate=0.0,
        source=source,
        **kwargs,
    )
