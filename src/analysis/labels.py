"""Display names: benchmarks, methods and the paper's short pair names, in the paper's order.

Names only (no numbers). A pair's long label ("Q-3 1.7B→L-3 8B") comes from the run's own
config.yaml; the short names here are the ones the paper's Tables 1-3 and 6 print.
"""

from __future__ import annotations

import re

from blendin import methods

# Figure 2's column order (G M T A X J).
BENCHMARKS = ["gsm8k", "mmlu", "truthfulqa", "arc_challenge", "xstest", "justeval_safe"]
BENCHMARK_LABEL = {
    "gsm8k": "GSM8K",
    "mmlu": "MMLU",
    "truthfulqa": "TruthfulQA",
    "arc_challenge": "ARC-Challenge",
    "xstest": "XSTest",
    "justeval_safe": "JustEval-Safe",
}

# Figure 2's row order: the 15 pairs of the paper.
PAPER_PAIRS = [
    "llama1b_llama3b",
    "llama1b_llama8b",
    "llama3b_llama8b",
    "gemma1b_gemma4b",
    "gemma1b_gemma9b",
    "gemma4b_gemma9b",
    "qwen1.7b_qwen4b",
    "qwen1.7b_qwen8b",
    "qwen4b_qwen8b",
    "llama1b_gemma9b",
    "llama1b_qwen8b",
    "gemma1b_llama8b",
    "gemma1b_qwen8b",
    "qwen1.7b_llama8b",
    "qwen1.7b_gemma9b",
]

# The short names of Tables 1-3 and 6 (Q = Qwen3-1.7B, L = Llama-3.2-1B / Llama-3.1-8B, G = Gemma).
PAPER_SHORT = {
    "qwen1.7b_llama8b": "Q→L",
    "qwen1.7b_gemma9b": "Q→G",
    "gemma1b_llama8b": "G→L",
    "llama1b_gemma9b": "L→G",
    "llama1b_llama8b": "L→L",
    "gemma1b_gemma9b": "G→G",
}

# The benchmark whose score is not a fraction: the 1-5 safety score of an LLM judge.
JUDGE_SCALE_BENCHMARKS = {"justeval_safe"}


def benchmark_label(name: str) -> str:
    return BENCHMARK_LABEL.get(name, name)


def method_label(name: str) -> str:
    """The label each method declares in `blendin.methods` (one home for a method)."""
    return methods.label(name)


def pair_short(name: str) -> str:
    """The paper's short name (Q→L) where it has one, else our pair name."""
    return PAPER_SHORT.get(name, name)


def order_pairs(pairs) -> list[str]:
    """The paper's pairs in Figure 2's order first, then any others alphabetically."""
    pairs = list(dict.fromkeys(pairs))
    return [p for p in PAPER_PAIRS if p in pairs] + sorted(p for p in pairs if p not in PAPER_PAIRS)


def order_benchmarks(benchmarks) -> list[str]:
    benchmarks = list(dict.fromkeys(benchmarks))
    return [b for b in BENCHMARKS if b in benchmarks] + sorted(b for b in benchmarks if b not in BENCHMARKS)


def score_scale(benchmark: str) -> str:
    return "1-5 judge scale" if benchmark in JUDGE_SCALE_BENCHMARKS else "fraction 0-1"


# Table 1's row order: cross-family pairs, then within-family pairs (as printed in the paper).
TABLE1_ORDER = [
    "qwen1.7b_llama8b",
    "qwen1.7b_gemma9b",
    "gemma1b_llama8b",
    "llama1b_gemma9b",
    "llama1b_llama8b",
    "gemma1b_gemma9b",
]


def family_kind(pair: str) -> str:
    """'cross-family' or 'within-family' from a pair name '<guidance>_<base>' (e.g. qwen1.7b_llama8b)."""
    parts = pair.split("_")
    if len(parts) != 2:
        return "other"
    families = [m.group() if (m := re.match(r"[a-z]+", p)) else p for p in parts]
    return "within-family" if families[0] == families[1] else "cross-family"


def order_table_pairs(pairs) -> list[str]:
    """Table 1's order for the paper's pairs, then Figure 2's, then the others."""
    pairs = list(dict.fromkeys(pairs))
    first = [p for p in TABLE1_ORDER if p in pairs]
    return first + [p for p in order_pairs(pairs) if p not in first]
