"""Does alpha's premise hold? Calibration and blend choices on teacher-forced traces (docs/beyond.md).

    python -m analysis.calibration [--results results] [--out results/analysis] [--tau 0.4]
                                   [--n-boot 2000] [--seed 0] [--n N] [--protocol NAME]

Reads the teacher-forced runs (method `forced`: both models walked along a known answer, see
blendin.forcing), whose tokens.parquet has one row per base token of the reference with each model's
top-1 probability, whether each top-1 equals the reference token, the blend weights and whether
BlendIn's choice under each weight equals it. Make them with
`python -m blendin.run -m method=forced benchmark=gsm8k,truthfulqa benchmark.n=200`.

Per pair, per benchmark and pooled over benchmarks (reference-answer runs only), over all positions
and over the positions where the base is unsure (u = base top-1 probability < tau):

- calibration of each model's top-1 probability as a predictor of "top-1 == reference": reliability
  bins and the expected calibration error (ECE, 10 equal-width bins over [0, 1]: the share-weighted
  mean of |accuracy - mean confidence| per bin). ECE is biased upward when bins hold few positions,
  and its resamples more so, so a percentile interval can miss it: `ece_*` is the plain ECE without an
  interval, `ece_bc_*` the bootstrap bias-corrected ECE with its basic bootstrap interval;
- accuracy (share of positions whose choice equals the reference token) of the base, the guidance,
  NUDGING's choice (= the guidance's top-1), BlendIn's choice under each weight (Eq. 3 "auto",
  Eq. 3 without the lambda term, the entropy weight H_b / (H_b + H_g), fixed 0.3 / 0.5 / 0.7) and
  the oracle (base or guidance right: the upper bound of any per-token chooser between the two);
- AUROC of each adaptive weight (auto, nolambda, entropy) for the cases where exactly one model is
  right: positives = guidance right and base wrong, negatives = base right and guidance wrong, i.e.
  the probability that alpha is higher where only the guidance is right than where only the base is
  (0.5 = no ranking). Also `auroc_all_*`: over every position of the subset, positive = guidance
  right and base wrong. Fixed weights rank nothing: they get their blend accuracy only;
- the same split by the reference token's kind (digit, word start, punctuation, other) and by its
  position in the answer (tokens 1-10, 11-50, 51+; and relative thirds), plus accuracy by alpha bin.

Intervals are 95% percentile bootstraps that resample SAMPLES (answers), not tokens: the tokens of
one answer are correlated, so a token bootstrap would give intervals that are too narrow. Every
statistic of a cell is recomputed on the same resamples (counts per sample).

Writes calibration.csv (long format: pair, benchmark, source, scope, split, metric, value, ci_low,
ci_high, n_positions, n_samples), calibration_reliability.csv (the bins), calibration_table.md (the
key tables), calibration_summary.md (whether the premise held, computed from the numbers),
calibration_reliability.png/.pdf, calibration_alpha.png/.pdf and calibration_notes.md.
"""

from __future__ import annotations

import functools
import math
import textwrap
import unicodedata
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from blendin.methods import REGISTRY

from . import cli, labels, select, stats, write
from .load import load_samples, load_tokens

TAU = 0.4
N_BOOT = 2000
ALPHA_BINS = 5
MIN_CASES = 10  # fewer positions of one kind than this: AUROC is reported but no verdict is drawn
MAKE_COMMAND = "python -m blendin.run -m method=forced benchmark=gsm8k,truthfulqa benchmark.n=200"
POOLED = "pooled"

ADAPTIVE = ["auto", "nolambda", "entropy"]
FIXED = {"a03": "0.3", "a05": "0.5", "a07": "0.7"}
# choice name -> (column of the trace, label); oracle is computed
CHOICES = {
    "base": ("base_correct", "base"),
    "guidance": ("guide_correct", "guidance"),
    "nudging": ("guide_correct", "NUDGING (= guidance top-1)"),
    **{f"blend_{w}": (f"blend_correct_{w}", f"BlendIn, alpha {w}") for w in ADAPTIVE},
    **{f"blend_{v}": (f"blend_correct_{k}", f"BlendIn, alpha {v}") for k, v in FIXED.items()},
    "oracle": (None, "oracle (base or guidance right)"),
}
TOKEN_COLUMNS = [
    "sample_id",
    "step",
    "base_top_prob",
    "guide_top_prob",
    "base_correct",
    "guide_correct",
    "text_offset",
    *(f"alpha_{w}" for w in ADAPTIVE),
    *(f"blend_correct_{w}" for w in ADAPTIVE),
    *(f"blend_correct_{k}" for k in FIXED),
]
COLUMNS = [
    "pair",
    "benchmark",
    "source",
    "scope",
    "split",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_positions",
    "n_samples",
]
RELIABILITY_COLUMNS = [
    "pair",
    "benchmark",
    "source",
    "scope",
    "model",
    "bin",
    "bin_low",
    "bin_high",
    "n_positions",
    "mean_confidence",
    "accuracy",
]
KINDS = {"digit": "digits", "word_start": "word starts", "punctuation": "punctuation", "other": "other"}
POSITIONS = {"tokens 1-10": (0, 10), "tokens 11-50": (10, 50), "tokens 51+": (50, None)}
THIRDS = ["first third", "middle third", "last third"]


# ---- the reference token's kind and position ---------------------------------------------------------


def teacher_forced(frame):
    """Which runs walked given answers (the registry's teacher-forcing decoder): this module's input."""
    return frame["method"].map(lambda m: m in REGISTRY and REGISTRY[m].decoder == "forced")


def token_kind(text: str, before: str = "") -> str:
    """The kind of a token from its text and the text before it.

    digit: contains a digit; punctuation: only punctuation or symbols (ignoring spaces); word_start:
    starts (after optional spaces) with a letter at a word boundary (start of the answer, after a
    space, or after a non-alphanumeric character); other: word continuations, whitespace-only
    tokens, pieces of a character (empty text) and mixed tokens."""
    core = text.strip()
    if not core:
        return "other"
    if any(ch.isdigit() for ch in core):
        return "digit"
    if all(unicodedata.category(ch)[0] in "PS" for ch in core):
        return "punctuation"
    if core[0].isalpha() and (text[0].isspace() or not before or not before[-1].isalnum()):
        return "word_start"
    return "other"


def sample_kinds(output: str | None, offsets) -> list[str]:
    """Kinds of one answer's tokens: token i's text is output[offset[i-1]:offset[i]] (offset[-1] = 0)."""
    kinds, prev = [], 0
    for off in offsets:
        off = int(off)
        if off < 0 or output is None:
            kinds.append("unknown")
            continue
        text = output[prev:off] if off >= prev else ""
        kinds.append(token_kind(text, output[:prev]))
        prev = max(prev, off)
    return kinds


def position_split(step, n_tokens) -> tuple[np.ndarray, np.ndarray]:
    """(absolute bucket, relative third) of each position; step is 0-based, n_tokens per answer."""
    step, n_tokens = np.asarray(step, int), np.asarray(n_tokens, int)
    absolute = np.where(step < 10, "tokens 1-10", np.where(step < 50, "tokens 11-50", "tokens 51+"))
    third = np.where(3 * step < n_tokens, THIRDS[0], np.where(3 * step < 2 * n_tokens, THIRDS[1], THIRDS[2]))
    return absolute, third


def prepare(trace: pd.DataFrame, samples: pd.DataFrame | None = None) -> pd.DataFrame:
    """A forced trace with the derived columns: kind, n_tokens, position, third (and 0/1 columns)."""
    trace = trace.sort_values(["sample_id", "step"], kind="stable").reset_index(drop=True)
    outputs = (
        {}
        if samples is None or samples.empty or "output" not in samples
        else dict(zip(samples["id"].astype(str), samples["output"]))
    )
    kinds = []
    for sid, group in trace.groupby("sample_id", sort=False):
        offsets = group["text_offset"] if "text_offset" in group else [-1] * len(group)
        kinds += sample_kinds(outputs.get(str(sid)), offsets)
    trace["kind"] = kinds
    trace["n_tokens"] = trace.groupby("sample_id")["step"].transform("size")
    trace["position"], trace["third"] = position_split(trace["step"], trace["n_tokens"])
    for col in [c for c in trace.columns if c.startswith(("base_correct", "guide_correct", "blend_correct"))]:
        trace[col] = trace[col].fillna(False).astype(bool)
    return trace


# ---- which runs --------------------------------------------------------------------------------------


def source_label(method_params: str) -> str:
    """'reference' for the benchmark's answers, else 'outputs of <pair>/<benchmark>/<run>'."""
    import json

    source = str(json.loads(method_params or "{}").get("source", "reference"))
    if source in ("reference", "gold", ""):
        return "reference"
    parts = Path(source).parts
    return "outputs of " + "/".join(parts[-3:])


def choose_runs(frame: pd.DataFrame, n=None, protocol=None, notes: list | None = None) -> pd.DataFrame:
    """The forced runs used: per (pair, benchmark, source) the run with the most samples (then newest)."""
    notes = [] if notes is None else notes
    runs = select.filter_runs(frame[teacher_forced(frame)], n, protocol).copy()
    if runs.empty:
        return runs.assign(source=pd.Series(dtype=str))
    runs["source"] = [source_label(p) for p in runs["method_params"]]
    kept = []
    for key, group in runs.groupby(["pair", "benchmark", "source"], sort=True):
        ordered = group.sort_values(["n_samples", "created_at"], kind="stable")
        kept.append(ordered.iloc[-1])
        if len(group) > 1:
            notes.append(
                f"{'/'.join(key)}: {len(group)} forced runs; used the largest, newest "
                f"({ordered.iloc[-1]['run_name']}), left out {', '.join(ordered['run_name'].iloc[:-1])}"
            )
    return pd.DataFrame(kept).reset_index(drop=True)


def load_positions(run) -> pd.DataFrame:
    """One forced run's positions, prepared (see `prepare`), with pair, benchmark and source."""
    trace = load_tokens(run, TOKEN_COLUMNS)
    missing = [c for c in TOKEN_COLUMNS if c not in trace]
    if missing:
        raise ValueError(f"{run['run_dir']}: tokens.parquet lacks {', '.join(missing)} (not a forced trace?)")
    trace = prepare(trace, load_samples(run))
    return trace.assign(pair=run["pair"], benchmark=run["benchmark"], source=run["source"])


def cells(runs: pd.DataFrame, notes: list | None = None) -> list[tuple[tuple, pd.DataFrame]]:
    """((pair, benchmark, source), positions) per run, plus each pair's pool over its benchmarks
    (reference-answer runs, when the pair has more than one benchmark)."""
    notes = [] if notes is None else notes
    out: list = []
    by_pair: dict = {}
    for _, run in runs.iterrows():
        pos = load_positions(run)
        unknown = int((pos["kind"] == "unknown").sum())
        if unknown:
            notes.append(
                f"{run['pair']}/{run['benchmark']}: {unknown} positions without text offsets or output: "
                "kind unknown (left out of the kind splits)"
            )
        out.append(((run["pair"], run["benchmark"], run["source"]), pos))
        if run["source"] == "reference":
            by_pair.setdefault(run["pair"], []).append(pos)
    for pair, frames in by_pair.items():
        if len(frames) > 1:
            out.append(((pair, POOLED, "reference"), pd.concat(frames, ignore_index=True)))
    order = {p: i for i, p in enumerate(labels.order_pairs([k[0] for k, _ in out]))}
    bench = {b: i for i, b in enumerate(labels.order_benchmarks([k[1] for k, _ in out if k[1] != POOLED]))}
    return sorted(
        out, key=lambda kv: (order[kv[0][0]], kv[0][2] != "reference", kv[0][2], bench.get(kv[0][1], len(bench)))
    )


# ---- statistics of one cell --------------------------------------------------------------------------


def scope_name(tau: float) -> str:
    return f"u<{tau:g}"


def _row(key, scope, split, metric, value, ci=(math.nan, math.nan), n_positions=0, n_samples=0) -> dict:
    pair, benchmark, source = key
    return dict(
        pair=pair,
        benchmark=benchmark,
        source=source,
        scope=scope,
        split=split,
        metric=metric,
        value=value,
        ci_low=ci[0],
        ci_high=ci[1],
        n_positions=int(n_positions),
        n_samples=int(n_samples),
    )


def subset_rows(
    pos: pd.DataFrame, cluster: np.ndarray, weights: np.ndarray, key, scope: str, split: str, full: bool = True
) -> list[dict]:
    """Every metric of one subset of positions (see the module docstring); [] when it is empty."""
    n_clusters = weights.shape[1]
    n = len(pos)
    if n == 0:
        return []
    base, guide = pos["base_correct"].to_numpy(bool), pos["guide_correct"].to_numpy(bool)
    den = np.bincount(cluster, minlength=n_clusters).astype(float)
    n_samples = int((den > 0).sum())
    columns = {}
    for name, (col, _) in CHOICES.items():
        columns[f"acc_{name}"] = (base | guide) if col is None else pos[col].to_numpy(bool)
    columns.update(
        share_guidance_only=guide & ~base,
        share_base_only=base & ~guide,
        share_both_right=base & guide,
        share_both_wrong=~base & ~guide,
    )
    blend = pos["blend_correct_auto"].to_numpy(float)
    columns["diff_blend_auto_minus_nudging"] = blend - guide
    columns["diff_blend_auto_minus_base"] = blend - base
    if full:
        columns["conf_base"] = pos["base_top_prob"].to_numpy(float)
        for w in ADAPTIVE:
            columns[f"mean_alpha_{w}"] = pos[f"alpha_{w}"].to_numpy(float)
    names = list(columns)
    values = np.stack([np.asarray(columns[c], float) for c in names], axis=1)
    finite = np.isfinite(values)
    nums = np.stack(
        [np.bincount(cluster, np.where(finite[:, j], values[:, j], 0.0), n_clusters) for j in range(len(names))], axis=1
    )
    dens = np.stack([np.bincount(cluster, finite[:, j].astype(float), n_clusters) for j in range(len(names))], axis=1)
    rows = []
    all_draws = stats.ratio_draws(weights, nums, dens)
    for j, name in enumerate(names):
        point = nums[:, j].sum() / dens[:, j].sum() if dens[:, j].sum() else math.nan
        draws = all_draws[:, j]
        rows.append(
            _row(key, scope, split, name, float(point), stats.percentile_ci(draws), dens[:, j].sum(), n_samples)
        )
    rows.append(
        _row(key, scope, split, "count_guidance_only", int((guide & ~base).sum()), n_positions=n, n_samples=n_samples)
    )
    rows.append(
        _row(key, scope, split, "count_base_only", int((base & ~guide).sum()), n_positions=n, n_samples=n_samples)
    )
    if not full:
        return rows
    for model, conf_col, hit in (("base", "base_top_prob", base), ("guidance", "guide_top_prob", guide)):
        conf = pos[conf_col].to_numpy(float)
        ok = np.isfinite(conf)
        # ECE is biased upward in small samples, and its resamples more so: their percentile interval can lie
        # above the estimate. The plain ECE gets no interval; ece_bc_ is bias-corrected, with one that fits it.
        plain = stats.ece(conf[ok], hit[ok])
        corrected, interval = stats.bias_corrected(plain, ece_draws(weights, cluster[ok], conf[ok], hit[ok]), lower=0)
        for metric, value, ci in (
            (f"ece_{model}", plain, (math.nan, math.nan)),
            (f"ece_bc_{model}", corrected, interval),
        ):
            rows.append(_row(key, scope, split, metric, value, ci, ok.sum(), len(np.unique(cluster[ok]))))
        if model == "guidance":
            draws = stats.ratio_draws(
                weights, np.bincount(cluster[ok], conf[ok], n_clusters), np.bincount(cluster[ok], minlength=n_clusters)
            )[:, 0]
            rows.append(
                _row(
                    key,
                    scope,
                    split,
                    "conf_guidance",
                    float(conf[ok].mean()) if ok.any() else math.nan,
                    stats.percentile_ci(draws),
                    ok.sum(),
                    len(np.unique(cluster[ok])),
                )
            )
    one_right = base != guide
    for w in ADAPTIVE:
        alpha = pos[f"alpha_{w}"].to_numpy(float)
        tests = [(f"auroc_alpha_{w}", one_right & np.isfinite(alpha), guide)]
        if split == "all":  # the all-positions variant only for the whole cell (it costs the most)
            tests.append((f"auroc_all_alpha_{w}", np.isfinite(alpha), guide & ~base))
        for metric, mask, label in tests:
            value = stats.auroc(alpha[mask], label[mask])
            draws = (
                stats.auroc_draws(weights, cluster[mask], alpha[mask], label[mask])
                if np.isfinite(value)
                else np.array([])
            )
            rows.append(
                _row(
                    key,
                    scope,
                    split,
                    metric,
                    value,
                    stats.percentile_ci(draws),
                    mask.sum(),
                    len(np.unique(cluster[mask])),
                )
            )
    return rows


def ece_draws(weights: np.ndarray, cluster: np.ndarray, conf: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """ECE of each resample of samples (rows of `weights`), bins as `stats.ece`."""
    n_clusters, n_bins = weights.shape[1], stats.ECE_BINS
    if len(conf) == 0:
        return np.array([])
    index = cluster * n_bins + stats.confidence_bins(conf, n_bins)
    size = n_clusters * n_bins
    count = np.bincount(index, minlength=size).reshape(n_clusters, n_bins)
    conf_sum = np.bincount(index, conf, size).reshape(n_clusters, n_bins)
    hit_sum = np.bincount(index, np.asarray(hit, float), size).reshape(n_clusters, n_bins)
    total = weights @ count.sum(axis=1)
    gap = np.abs(weights @ hit_sum - weights @ conf_sum).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, gap / np.where(total > 0, total, 1.0), np.nan)


def splits(pos: pd.DataFrame) -> list[tuple[str, np.ndarray, bool]]:
    """(name, mask, full metrics?) of every split of a cell's positions."""
    out = [("all", np.ones(len(pos), bool), True)]
    out += [(f"kind={k}", (pos["kind"] == k).to_numpy(), True) for k in KINDS]
    out += [(f"position={p}", (pos["position"] == p).to_numpy(), True) for p in POSITIONS]
    out += [(f"relpos={t}", (pos["third"] == t).to_numpy(), True) for t in THIRDS]
    edges = np.linspace(0, 1, ALPHA_BINS + 1)
    for w in ADAPTIVE:
        alpha = pos[f"alpha_{w}"].to_numpy(float)
        bins = stats.confidence_bins(alpha, ALPHA_BINS)
        for b in range(ALPHA_BINS):
            out.append((f"alpha_{w}={edges[b]:.1f}-{edges[b + 1]:.1f}", np.isfinite(alpha) & (bins == b), False))
    return out


def cell_rows(key, pos: pd.DataFrame, tau: float, n_boot: int = N_BOOT, seed: int = 0) -> tuple[list, list]:
    """(metric rows, reliability rows) of one cell; resamples its samples once for every statistic."""
    cluster = pd.factorize(pos["benchmark"].astype(str) + "\x1f" + pos["sample_id"].astype(str), sort=True)[0]
    weights = stats.cluster_weights(int(cluster.max()) + 1 if len(cluster) else 0, n_boot, seed)
    unsure = pos["base_top_prob"].to_numpy(float) < tau
    rows, bins = [], []
    for scope, scope_mask in (("all", np.ones(len(pos), bool)), (scope_name(tau), unsure)):
        for split, mask, full in splits(pos):
            m = scope_mask & mask
            rows += subset_rows(pos[m], cluster[m], weights, key, scope, split, full)
        sub = pos[scope_mask]
        for model, conf_col, hit_col in (
            ("base", "base_top_prob", "base_correct"),
            ("guidance", "guide_top_prob", "guide_correct"),
        ):
            conf = sub[conf_col].to_numpy(float)
            ok = np.isfinite(conf)
            rel = stats.reliability(conf[ok], sub[hit_col].to_numpy(bool)[ok])
            for b in range(stats.ECE_BINS):
                bins.append(
                    dict(
                        pair=key[0],
                        benchmark=key[1],
                        source=key[2],
                        scope=scope,
                        model=model,
                        bin=b,
                        bin_low=rel["low"][b],
                        bin_high=rel["high"][b],
                        n_positions=int(rel["count"][b]),
                        mean_confidence=rel["confidence"][b],
                        accuracy=rel["accuracy"][b],
                    )
                )
    return rows, bins


def compute(
    frame: pd.DataFrame,
    tau: float = TAU,
    n=None,
    protocol=None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    notes: list | None = None,
    settings: list | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(calibration.csv, calibration_reliability.csv) of every forced run of `frame`."""
    notes = [] if notes is None else notes
    runs = choose_runs(frame, n, protocol, notes)
    if settings is not None and len(runs):
        settings += sorted(
            {
                f"{r['pair']}/{r['benchmark']} ({r['source']}): {r['setting']}; forced with {r['params']}"
                for _, r in runs.iterrows()
            }
        )
    other_tau = (
        sorted({f"{t:g}" for t in runs["tau"] if np.isfinite(t) and not np.isclose(t, tau)}) if len(runs) else []
    )
    if other_tau:
        notes.append(
            f"some forced runs recorded `consulted` at tau {', '.join(other_tau)}; this analysis splits every "
            f"run at u < {tau:g} from base_top_prob (the blend choices do not depend on tau)"
        )
    rows, bins = [], []
    for key, pos in cells(runs, notes):
        r, b = cell_rows(key, pos, tau, n_boot, seed)
        rows += r
        bins += b
    return pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(bins, columns=RELIABILITY_COLUMNS)


# ---- reading the table back ----------------------------------------------------------------------------


def lookup(table: pd.DataFrame, key, scope: str, split: str, metric: str) -> dict:
    """The row of one statistic as a dict (value NaN, n 0 when absent)."""
    hit = table[
        (table["pair"] == key[0])
        & (table["benchmark"] == key[1])
        & (table["source"] == key[2])
        & (table["scope"] == scope)
        & (table["split"] == split)
        & (table["metric"] == metric)
    ]
    if hit.empty:
        return dict(value=math.nan, ci_low=math.nan, ci_high=math.nan, n_positions=0, n_samples=0)
    return hit.iloc[0].to_dict()


def cell_keys(table: pd.DataFrame) -> list[tuple]:
    return list(dict.fromkeys(zip(table["pair"], table["benchmark"], table["source"])))


def verdict(row: dict, n_pos: int, n_neg: int) -> str:
    """'held' (95% interval above 0.5), 'not shown' (contains it), 'reversed' (below it), or
    'not measurable' (fewer than MIN_CASES positions of either kind, or no interval)."""
    if min(n_pos, n_neg) < MIN_CASES or not np.isfinite(row["ci_low"]) or not np.isfinite(row["ci_high"]):
        return "not measurable"
    if row["ci_low"] > 0.5:
        return "held"
    if row["ci_high"] < 0.5:
        return "reversed"
    return "not shown"


VERDICT_TEXT = {
    "held": "**held** (the interval lies above 0.5)",
    "not shown": "was **not shown** (the interval contains 0.5)",
    "reversed": "was **reversed** (the interval lies below 0.5: alpha favoured the wrong model)",
    "not measurable": f"**could not be judged** (fewer than {MIN_CASES} positions of one kind)",
}


def _pct(row: dict, ci: bool = True) -> str:
    if not np.isfinite(row["value"]):
        return write.MISSING
    text = f"{100 * row['value']:.1f}%"
    if ci and np.isfinite(row["ci_low"]):
        text += f" [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"
    return text


def _num(row: dict) -> str:
    return write.fmt_ci(row["value"], row["ci_low"], row["ci_high"], 2)


def _points(row: dict) -> str:
    if not np.isfinite(row["value"]):
        return write.MISSING
    text = f"{100 * row['value']:+.1f} points"
    return text + (f" [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]" if np.isfinite(row["ci_low"]) else "")


def _cell_name(key, pair_labels: dict) -> str:
    pair, benchmark, source = key
    bench = "pooled over benchmarks" if benchmark == POOLED else labels.benchmark_label(benchmark)
    return f"{pair_labels.get(pair, pair)}, {bench}" + ("" if source == "reference" else f" ({source})")


def cell_verdict(table: pd.DataFrame, key, tau: float) -> tuple[str, dict]:
    scope = scope_name(tau)
    auc = lookup(table, key, scope, "all", "auroc_alpha_auto")
    n1 = lookup(table, key, scope, "all", "count_guidance_only")["value"]
    n0 = lookup(table, key, scope, "all", "count_base_only")["value"]
    n1, n0 = (0 if not np.isfinite(n1) else int(n1)), (0 if not np.isfinite(n0) else int(n0))
    return verdict(auc, n1, n0), dict(auc=auc, n1=n1, n0=n0)


def paragraph(table: pd.DataFrame, key, tau: float, pair_labels: dict) -> str:
    """The summary paragraph of one cell, every number read from `table`."""
    scope = scope_name(tau)
    get = functools.partial(lookup, table, key, scope)  # get(split, metric)
    name = _cell_name(key, pair_labels)
    acc = get("all", "acc_base")
    if acc["n_positions"] == 0:
        return f"**{name}.** No position had u < {tau:g}: nothing to judge."
    kind, facts = cell_verdict(table, key, tau)
    text = (
        f"**{name}.** At u < {tau:g} ({acc['n_positions']} positions of {acc['n_samples']} samples), the "
        f"guidance was right where the base was wrong at {_pct(get('all', 'share_guidance_only'), False)} of "
        f"positions and the base right where the guidance was wrong at "
        f"{_pct(get('all', 'share_base_only'), False)} ({facts['n1']} vs {facts['n0']} positions). "
        f"Alpha (Eq. 3) ranked the first kind above the second with AUROC {_num(facts['auc'])}: the premise "
        f"{VERDICT_TEXT[kind]}. Without the lambda term: AUROC {_num(get('all', 'auroc_alpha_nolambda'))}; "
        f"the entropy weight: {_num(get('all', 'auroc_alpha_entropy'))}. "
    )
    diff = get("all", "diff_blend_auto_minus_nudging")
    relation = (
        "no different from"
        if not (np.isfinite(diff["ci_low"]) and (diff["ci_low"] > 0 or diff["ci_high"] < 0))
        else "better than"
        if diff["ci_low"] > 0
        else "worse than"
    )
    text += (
        f"BlendIn's choice was right at {_pct(get('all', 'acc_blend_auto'))} vs NUDGING "
        f"{_pct(get('all', 'acc_nudging'))} vs base {_pct(get('all', 'acc_base'))} (either model right: "
        f"{_pct(get('all', 'acc_oracle'), False)}); BlendIn minus NUDGING {_points(diff)}, {relation} NUDGING "
        "at this n. "
    )
    shares = [(p, get(f"position={p}", "share_guidance_only")) for p in POSITIONS]
    shares = [(p, r) for p, r in shares if r["n_positions"] > 0]
    if len(shares) > 1:
        text += (
            "Guidance-only-right positions by place in the answer: "
            + ", ".join(f"{_pct(r, False)} of {p} (n={r['n_positions']})" for p, r in shares)
            + ". "
        )
    ece = {
        (m, s): lookup(table, key, s, "all", f"ece_{m}")["value"] for m in ("base", "guidance") for s in ("all", scope)
    }
    text += (
        f"Calibration of the top-1 probability (ECE, 10 bins): base {write.fmt(ece['base', 'all'], 3)} over "
        f"all positions and {write.fmt(ece['base', scope], 3)} at u < {tau:g}; guidance "
        f"{write.fmt(ece['guidance', 'all'], 3)} and {write.fmt(ece['guidance', scope], 3)}."
    )
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summary(table: pd.DataFrame, tau: float, pair_labels: dict | None = None, n_boot: int = N_BOOT) -> str:
    """calibration_summary.md: the verdict over all cells, then one paragraph per cell."""
    pair_labels = pair_labels or {}
    lines = ["# Does alpha's premise hold?", ""]
    keys = cell_keys(table)
    if not keys:
        return "\n".join(
            lines
            + [
                f"No teacher-forced runs are stored yet. Make them with `{MAKE_COMMAND}`, then "
                "run `python -m analysis.calibration` again.",
                "",
            ]
        )
    single = [k for k in keys if k[1] != POOLED]
    verdicts = [cell_verdict(table, k, tau)[0] for k in single]
    phrase = {
        "held": "held",
        "not shown": "was not shown",
        "reversed": "was reversed",
        "not measurable": "could not be judged",
    }
    counts = [f"{phrase[v]} in {verdicts.count(v)}" for v in VERDICT_TEXT if verdicts.count(v)]
    pairs = sorted({k[0] for k in single})
    lines += [
        f"The premise: where the base is unsure (u < {tau:g}), alpha = p_g / (p_b + p_g) (+ lambda P_b(t_g), "
        "Eq. 3) is higher where the guidance is right than where the base is. Over the "
        f"{_plural(len(single), 'pair x benchmark cell')} measured ({_plural(len(pairs), 'pair')}), the premise "
        + (", ".join(counts[:-1]) + " and " + counts[-1] if len(counts) > 1 else counts[0])
        + ".",
        "",
    ]
    for key in keys:
        lines += [paragraph(table, key, tau, pair_labels), ""]
    lines += [
        "Definitions: accuracy = share of positions whose choice equals the reference token; AUROC over the "
        "positions where exactly one model is right (positive: guidance right and base wrong; negative: base "
        "right and guidance wrong), 0.5 = no ranking; verdict from its 95% interval (above 0.5: held; "
        "containing 0.5: not shown; below: reversed; fewer than "
        f"{MIN_CASES} positions of one kind: not judged). Intervals: percentile bootstrap over samples "
        f"({n_boot} resamples), not tokens, because the tokens of one answer are correlated. ECE: 10 "
        "equal-width bins of the top-1 probability over [0, 1]; it is biased upward when bins hold few "
        "positions (calibration.csv's `ece_bc_*` rows: bias-corrected by the bootstrap, with a 95% interval). "
        "Oracle: base or guidance right, the upper bound of any per-token chooser between the two.",
        "",
    ]
    return "\n".join(lines)


def key_table(table: pd.DataFrame, tau: float, pair_labels: dict | None = None) -> str:
    """calibration_table.md: accuracy at u < tau per choice, and AUROC / ECE per cell."""
    pair_labels = pair_labels or {}
    scope = scope_name(tau)
    acc_rows, blend_rows, auc_rows = [], [], []
    for key in cell_keys(table):

        def get(metric, s=scope, key=key):
            return lookup(table, key, s, "all", metric)

        name = _cell_name(key, pair_labels)
        n = get("acc_base")
        acc_rows.append(
            {
                "cell": name,
                "positions": n["n_positions"],
                "samples": n["n_samples"],
                "base": _pct(get("acc_base")),
                "guidance = NUDGING": _pct(get("acc_nudging")),
                "BlendIn (auto)": _pct(get("acc_blend_auto")),
                "oracle": _pct(get("acc_oracle"), False),
                "BlendIn - NUDGING": _points(get("diff_blend_auto_minus_nudging")),
            }
        )
        blend_rows.append(
            {
                "cell": name,
                **{f"alpha {w}": _pct(get(f"acc_blend_{w}")) for w in ADAPTIVE},
                **{f"alpha {v}": _pct(get(f"acc_blend_{v}")) for v in FIXED.values()},
            }
        )
        kind, facts = cell_verdict(table, key, tau)
        auc_rows.append(
            {
                "cell": name,
                "guidance-only / base-only": f"{facts['n1']} / {facts['n0']}",
                **{f"AUROC {w}": _num(get(f"auroc_alpha_{w}")) for w in ADAPTIVE},
                "verdict (auto)": kind,
                "AUROC auto, all u<tau": _num(get("auroc_all_alpha_auto")),
                "ECE base (all / u<tau)": f"{write.fmt(get('ece_base', 'all')['value'], 3)} / "
                f"{write.fmt(get('ece_base')['value'], 3)}",
                "ECE guidance (all / u<tau)": f"{write.fmt(get('ece_guidance', 'all')['value'], 3)} / "
                f"{write.fmt(get('ece_guidance')['value'], 3)}",
            }
        )
    lines = [
        f"# Calibration: key tables (u < {tau:g})",
        "",
        f"## Accuracy at u < {tau:g}: share of positions whose choice equals the reference token",
        "",
        write.markdown_table(pd.DataFrame(acc_rows)),
        "",
        f"## BlendIn's choice at u < {tau:g} under each blend weight",
        "",
        write.markdown_table(pd.DataFrame(blend_rows)),
        "",
        f"## AUROC of the adaptive weights at u < {tau:g}, and ECE of the top-1 probability",
        "",
        write.markdown_table(pd.DataFrame(auc_rows)),
        "",
        "95% intervals in brackets: percentile bootstrap over samples. AUROC: positions where exactly one model "
        "is right (positive: guidance right, base wrong); 'all u<tau': every position at u < tau, positive = "
        "guidance right and base wrong. Fixed weights rank nothing, so they have accuracy only. The full "
        "split by token kind, position and alpha bin is in calibration.csv.",
        "",
    ]
    return "\n".join(lines)


# ---- figures ---------------------------------------------------------------------------------------------

MAX_ROWS = 8


def figure_keys(table: pd.DataFrame) -> list[tuple]:
    """The cells drawn: all, or only each pair's pool (or single benchmark) when there are too many."""
    keys = cell_keys(table)
    if len(keys) <= MAX_ROWS:
        return keys
    pooled = {k[0] for k in keys if k[1] == POOLED}
    keys = [k for k in keys if k[2] == "reference" and (k[1] == POOLED or k[0] not in pooled)]
    return keys[:MAX_ROWS]


COLOURS = {"base": write.OKABE_ITO[0], "guidance": write.OKABE_ITO[1], "blend": write.OKABE_ITO[2], "oracle": "0.55"}
MIN_BIN = 10  # a reliability bin with fewer positions than this is drawn hollow: its accuracy is a guess


def plot_reliability(table: pd.DataFrame, bins: pd.DataFrame, tau: float, pair_labels: dict | None = None):
    """One row per cell, columns all positions / u < tau: accuracy vs mean confidence per bin."""
    pair_labels = pair_labels or {}
    keys = figure_keys(table)
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 4.6 * len(keys)), squeeze=False, layout="constrained")
    for row, key in zip(axes, keys):
        for ax, scope in zip(row, ("all", scope_name(tau))):
            ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
            total = 0
            for model in ("base", "guidance"):
                b = bins[
                    (bins["pair"] == key[0])
                    & (bins["benchmark"] == key[1])
                    & (bins["source"] == key[2])
                    & (bins["scope"] == scope)
                    & (bins["model"] == model)
                    & (bins["n_positions"] > 0)
                ]
                total = max(total, int(b["n_positions"].sum()))
                e = lookup(table, key, scope, "all", f"ece_{model}")
                bc = lookup(table, key, scope, "all", f"ece_bc_{model}")
                size = 25 + 400 * b["n_positions"] / max(1, b["n_positions"].sum())
                ax.plot(
                    b["mean_confidence"],
                    b["accuracy"],
                    color=COLOURS[model],
                    lw=1.6,
                    label=f"{model}: ECE {write.fmt(e['value'], 3)}, bias-corrected "
                    f"{write.fmt_ci(bc['value'], bc['ci_low'], bc['ci_high'], 3)}",
                )
                sparse = (b["n_positions"] < MIN_BIN).to_numpy()
                for mask, face in ((~sparse, COLOURS[model]), (sparse, "white")):
                    ax.scatter(
                        b["mean_confidence"][mask],
                        b["accuracy"][mask],
                        s=size[mask],
                        facecolor=face,
                        edgecolor=COLOURS[model] if face == "white" else "white",
                        lw=1.3,
                        zorder=3,
                    )
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("mean top-1 probability in the bin")
            ax.set_ylabel("share where top-1 = reference")
            where = "all positions" if scope == "all" else f"positions with u < {tau:g}"
            ax.set_title(f"{_cell_name(key, pair_labels)}\n{where} (n = {total})", fontsize=11)
            ax.grid(alpha=0.25)
            ax.legend(loc="upper left", frameon=False, fontsize=8.5)
    fig.suptitle(
        "Reliability of each model's top-1 probability (10 equal-width bins; marker area ~ positions in the bin;\n"
        f"hollow: fewer than {MIN_BIN} positions; base confidence is below tau at u < tau by definition;\n"
        "ECE is biased upward with few positions per bin: the bias-corrected value and its 95% interval are "
        "bootstrap estimates over samples)",
        fontsize=11,
    )
    return fig


def plot_alpha(table: pd.DataFrame, tau: float, pair_labels: dict | None = None):
    """Per cell at u < tau: accuracy by alpha (auto) bin, and where the one-model-right cases fall."""
    pair_labels = pair_labels or {}
    keys = figure_keys(table)
    scope = scope_name(tau)
    edges = np.linspace(0, 1, ALPHA_BINS + 1)
    names = [f"alpha_auto={edges[b]:.1f}-{edges[b + 1]:.1f}" for b in range(ALPHA_BINS)]
    centres = (edges[:-1] + edges[1:]) / 2
    fig, axes = plt.subplots(len(keys), 2, figsize=(13, 5.0 * len(keys)), squeeze=False, layout="constrained")
    for (left, right), key in zip(axes, keys):
        get = functools.partial(lookup, table, key, scope)  # get(split, metric)
        for metric, label, colour, style in (
            ("acc_oracle", "oracle (either right)", COLOURS["oracle"], ":"),
            ("acc_guidance", "guidance = NUDGING", COLOURS["guidance"], "-"),
            ("acc_base", "base", COLOURS["base"], "-"),
            ("acc_blend_auto", "BlendIn (alpha auto)", COLOURS["blend"], "--"),
        ):
            rows = [get(s, metric) for s in names]
            y = np.array([r["value"] for r in rows], float)
            lo = np.array([r["ci_low"] for r in rows], float)
            hi = np.array([r["ci_high"] for r in rows], float)
            ok = np.isfinite(y)
            left.plot(centres[ok], y[ok], style, marker="o", color=colour, lw=1.8, label=label)
            if metric != "acc_oracle":
                left.fill_between(centres[ok], lo[ok], hi[ok], color=colour, alpha=0.12, lw=0)
        for c, s in zip(centres, names):
            n = get(s, "acc_base")["n_positions"]
            left.text(c, 1.03, f"n={n}", ha="center", va="bottom", fontsize=8.5, color="0.3")
        left.set_xlim(0, 1)
        left.set_ylim(-0.02, 1.12)
        left.set_xticks(edges)
        left.set_xlabel("alpha (Eq. 3) bin: weight given to the guidance")
        left.set_ylabel(f"share right at u < {tau:g}")
        left.set_title(
            f"{_cell_name(key, pair_labels)}\naccuracy by alpha bin (bands: 95% CI over samples)", fontsize=11
        )
        left.grid(alpha=0.25)
        left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), frameon=False, fontsize=9, ncol=4)
        n1 = np.array([get(s, "count_guidance_only")["value"] for s in names], float)
        n0 = np.array([get(s, "count_base_only")["value"] for s in names], float)
        n1, n0 = np.nan_to_num(n1), np.nan_to_num(n0)
        width = 0.08
        right.bar(
            centres - width / 2,
            100 * n1 / max(1, n1.sum()),
            width,
            color=COLOURS["guidance"],
            label=f"only the guidance right (n={int(n1.sum())})",
        )
        right.bar(
            centres + width / 2,
            100 * n0 / max(1, n0.sum()),
            width,
            color=COLOURS["base"],
            label=f"only the base right (n={int(n0.sum())})",
        )
        right.set_xlim(0, 1)
        right.set_xticks(edges)
        right.set_xlabel("alpha (Eq. 3) bin")
        right.set_ylabel("% of the cases of each kind")
        auc = get("all", "auroc_alpha_auto")
        kind, _ = cell_verdict(table, key, tau)
        right.set_title(f"where alpha puts the one-model-right cases\nAUROC {_num(auc)} -> premise {kind}", fontsize=11)
        right.grid(alpha=0.25, axis="y")
        right.set_ylim(
            0, 1.3 * max(5.0, float((100 * n1 / max(1, n1.sum())).max()), float((100 * n0 / max(1, n0.sum())).max()))
        )
        right.legend(loc="upper left", frameon=False, fontsize=9, ncol=2)
    fig.suptitle(f"Alpha against correctness at u < {tau:g} (teacher-forced references)", fontsize=12)
    return fig


# ---- command ---------------------------------------------------------------------------------------------


@cli.command("calibration")
def main(argv=None) -> int:
    parser = cli.parser("calibration", __doc__)
    parser.add_argument("--tau", type=float, default=TAU, help=f"uncertainty threshold u < tau (default {TAU})")
    parser.add_argument(
        "--n-boot", type=cli.positive_int, default=N_BOOT, help=f"bootstrap resamples (default {N_BOOT})"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = parser.parse_args(argv)
    frame = cli.load(args)
    cli.require(
        select.filter_runs(frame[teacher_forced(frame)], args.n, args.protocol),
        "teacher-forced run (method forced)",
        frame,
        args,
        f"Make them with: {MAKE_COMMAND}",
    )
    notes: list[str] = []
    settings: list[str] = []
    pair_labels = dict(zip(frame["pair"], frame["pair_label"]))
    table, bins = compute(frame, args.tau, args.n, args.protocol, args.n_boot, args.seed, notes, settings)
    out: Path = args.out
    footer = textwrap.fill("Runs: " + select.with_short_settings("; ".join(settings), frame), 180)
    figures = {
        "calibration_reliability": plot_reliability(table, bins, args.tau, pair_labels),
        "calibration_alpha": plot_alpha(table, args.tau, pair_labels),
    }
    write.write_csv(table, out / "calibration.csv")
    write.write_csv(bins, out / "calibration_reliability.csv")
    write.write_text(out / "calibration_summary.md", summary(table, args.tau, pair_labels, args.n_boot))
    write.write_text(out / "calibration_table.md", key_table(table, args.tau, pair_labels))
    for stem, fig in figures.items():
        fig.text(0.01, -0.005, footer, fontsize=7, color="0.35", va="top")
        write.save_figure(fig, out, stem)
    write.write_notes(out, "calibration", "Calibration (teacher-forced runs)", settings, notes)
    write.report_notes("calibration", settings, notes)
    print(
        f"[calibration] wrote {out / 'calibration.csv'} ({len(table)} rows, {len(cell_keys(table))} cells) and "
        f"{out / 'calibration_summary.md'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
