"""A score's 95% interval, in one place: `metrics.json` (`ci95`) and the analysis both use it, so one
run gets one interval wherever it is shown.

Percentile bootstrap of the mean over samples (items), with numpy's default_rng and a fixed seed, so
the numbers are reproducible.
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95


def clean(values) -> np.ndarray:
    """The finite values as a float array (None and NaN, a sample without a score, are left out)."""
    values = np.asarray([np.nan if v is None else v for v in values] if isinstance(values, list) else values, float)
    return values[np.isfinite(values)]


def bootstrap_means(
    values, n_resamples: int = 2000, seed: int = 0, size: int | None = None, replace: bool = True
) -> np.ndarray:
    """Means of `n_resamples` resamples of `size` (default: all) values, in memory-bounded chunks.

    replace=False draws subsets without replacement (what a random n-sample subset of a benchmark is)."""
    values = clean(values)
    size = len(values) if size is None else size
    rng = np.random.default_rng(seed)
    if not replace:  # one subset per draw; Generator.choice without replacement costs O(size)
        return np.array([values[rng.choice(len(values), size, replace=False)].mean() for _ in range(n_resamples)])
    chunk = max(1, 2_000_000 // max(size, 1))  # bounded memory: chunk x size indices at a time
    means = []
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        means.append(values[rng.integers(0, len(values), size=(k, size))].mean(axis=1))
    return np.concatenate(means) if means else np.array([])


def bootstrap_ci(values, n_resamples: int = 2000, seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; (nan, nan) for no values."""
    values = clean(values)
    if len(values) == 0:
        return math.nan, math.nan
    means = bootstrap_means(values, n_resamples, seed)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
