"""The statistics every analysis module uses (scipy underneath), in one place.

- Correlation of two columns over pairs (Figure 3, Table 4): Pearson r and p, a 95% interval on r by
  Fisher's z, Spearman rho and p, and a permutation p-value (exact enumeration of all n! pairings
  when n! <= the permutation budget, else a fixed-seed Monte Carlo).
- A score's 95% interval: percentile bootstrap of the mean (default) or Wald.
- Two methods on the SAME sample ids: exact McNemar for 0/1 scores (a two-sided binomial test on
  the discordant pairs), else a paired bootstrap of the mean difference; and the minimum
  detectable difference at that n (`mdd_paired_binary`, `mdd_paired_continuous`).
All random draws use numpy's default_rng with a fixed seed, so numbers are reproducible.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

from blendin.intervals import LEVEL, bootstrap_ci, bootstrap_means, clean  # noqa: F401 - re-exported


def _z(level: float = LEVEL) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


# ---- correlation over pairs ---------------------------------------------------------------------


def fisher_ci(r: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Interval on Pearson's r: tanh(atanh(r) -/+ z / sqrt(n - 3)); NaN when n < 4 or r is undefined."""
    if n < 4 or not np.isfinite(r):
        return math.nan, math.nan
    if abs(r) >= 1:
        return float(r), float(r)
    centre, half = math.atanh(r), _z(level) / math.sqrt(n - 3)
    return math.tanh(centre - half), math.tanh(centre + half)


def permutation_p(x, y, n_permutations: int = 10_000, seed: int = 0) -> float:
    """Two-sided permutation p of Pearson's r: P(|r| of a random pairing >= |r observed|).

    Exact (all n! pairings, the observed one included) when n! <= n_permutations; otherwise
    (hits + 1) / (n_permutations + 1) over random pairings drawn with `seed`. The same definition
    as scipy.stats.permutation_test with statistic |r|, permutation_type='pairings',
    alternative='greater'."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    observed = abs(stats.pearsonr(x, y).statistic)
    tolerance = abs(observed) * np.finfo(float).eps * 100  # scipy's tolerance for ties of the statistic
    exact = math.factorial(n) <= n_permutations
    if exact:
        import itertools

        orders = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        orders = np.argsort(rng.random((n_permutations, n)), axis=1)
    ys = y[orders]
    xc = x - x.mean()
    yc = ys - ys.mean(axis=1, keepdims=True)
    r = (yc @ xc) / (np.sqrt((yc**2).sum(axis=1)) * math.sqrt((xc**2).sum()))
    hits = int((np.abs(r) >= observed - tolerance).sum())
    return hits / len(orders) if exact else (hits + 1) / (n_permutations + 1)


def correlation(x, y, n_permutations: int = 10_000, seed: int = 0) -> dict:
    """Pearson (r, p, Fisher 95% CI), Spearman (rho, p) and a permutation p of x against y.

    Fewer than 3 points, or a constant column, give NaN everywhere (no fit)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    out = dict(
        n_points=n,
        pearson_r=math.nan,
        pearson_p=math.nan,
        r_ci95_low=math.nan,
        r_ci95_high=math.nan,
        spearman_rho=math.nan,
        spearman_p=math.nan,
        permutation_p=math.nan,
    )
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    pearson = stats.pearsonr(x, y)
    spearman = stats.spearmanr(x, y)
    low, high = fisher_ci(float(pearson.statistic), n)
    out.update(
        pearson_r=float(pearson.statistic),
        pearson_p=float(pearson.pvalue),
        r_ci95_low=low,
        r_ci95_high=high,
        spearman_rho=float(spearman.statistic),
        spearman_p=float(spearman.pvalue),
        permutation_p=permutation_p(x, y, n_permutations, seed),
    )
    return out


def fit_line(x, y) -> tuple[float, float]:
    """Least-squares slope and intercept (NaN with fewer than 2 distinct x)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan, math.nan
    fit = stats.linregress(x, y)
    return float(fit.slope), float(fit.intercept)


# ---- a score's interval -------------------------------------------------------------------------


def is_binary(values) -> bool:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return len(values) > 0 and bool(np.isin(values, (0.0, 1.0)).all())


_clean = clean  # the one interval helper lives in blendin.intervals (metrics.json uses it too)


def wald_ci(values, level: float = LEVEL) -> tuple[float, float]:
    """mean -/+ z * sd / sqrt(n): for 0/1 scores sd = sqrt(p (1 - p)) and the interval is clipped to
    [0, 1]; otherwise the sample sd (ddof 1). The paper's Table 2 intervals are Wald intervals."""
    values = _clean(values)
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = float(values.mean())
    if is_binary(values):
        half = _z(level) * math.sqrt(mean * (1 - mean) / n)
        return max(0.0, mean - half), min(1.0, mean + half)
    if n < 2:
        return math.nan, math.nan
    half = _z(level) * float(values.std(ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


def mean_ci(values, method: str = "bootstrap", n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) with a 95% interval by `method` ('bootstrap' or 'wald')."""
    values = _clean(values)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    if method == "wald":
        low, high = wald_ci(values)
    elif method == "bootstrap":
        low, high = bootstrap_ci(values, n_resamples, seed)
    else:
        raise ValueError(f"unknown interval method {method!r}: use 'bootstrap' or 'wald'")
    return float(values.mean()), low, high


# ---- two methods on the same sample ids ---------------------------------------------------------


def mcnemar_exact(a, b) -> dict:
    """Exact McNemar test of paired 0/1 scores: a two-sided binomial test (p = 1/2) on the discordant
    pairs, n01 = (a wrong, b right) and n10 = (a right, b wrong). No discordant pair gives p = 1."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n01, n10 = int(((a == 0) & (b == 1)).sum()), int(((a == 1) & (b == 0)).sum())
    p = 1.0 if n01 + n10 == 0 else float(stats.binomtest(n01, n01 + n10, 0.5).pvalue)
    return dict(n01=n01, n10=n10, p=p)


def paired_bootstrap(a, b, n_resamples: int = 2000, seed: int = 0, level: float = LEVEL) -> dict:
    """Mean of b - a with a percentile bootstrap interval over resampled sample ids, and a two-sided
    p-value from the bootstrap distribution shifted to a zero mean: P(|d* - mean d| >= |mean d|)."""
    d = np.asarray(b, float) - np.asarray(a, float)
    if len(d) == 0:
        return dict(diff=math.nan, ci_low=math.nan, ci_high=math.nan, p=math.nan)
    means = bootstrap_means(d, n_resamples, seed)
    observed = float(d.mean())
    tail = (1 - level) / 2 * 100
    hits = int((np.abs(means - observed) >= abs(observed) - 1e-12).sum())
    return dict(
        diff=observed,
        ci_low=float(np.percentile(means, tail)),
        ci_high=float(np.percentile(means, 100 - tail)),
        p=(hits + 1) / (n_resamples + 1) if observed != 0 else 1.0,
    )


def mdd_paired_binary(n: int, discordance: float = 0.0, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable difference of two paired 0/1 outcomes (McNemar design, Connor 1987).

    With psi = the share of discordant pairs (p10 + p01) and d = p10 - p01, the sample size that
    detects d with a two-sided test at `alpha` and the given power is
        n = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - d^2))^2 / d^2 .
    This returns the smallest d that satisfies it at the given n, with psi = max(observed
    discordance, d): a difference d needs at least a share d of discordant pairs, so a small
    observed discordance does not make every difference look undetectable. NaN for n < 4."""
    if n < 4:
        return math.nan
    za, zb = _z(1 - alpha), float(stats.norm.ppf(power))
    observed = min(max(float(discordance) if np.isfinite(discordance) else 0.0, 0.0), 1.0)

    def gap(d: float) -> float:  # > 0: d is not detectable at n
        psi = max(observed, d)
        return za * math.sqrt(psi) + zb * math.sqrt(max(psi - d * d, 0.0)) - math.sqrt(n) * d

    grid = np.linspace(1e-6, 1.0, 2001)
    values = np.array([gap(d) for d in grid])
    crossing = np.flatnonzero((values[:-1] > 0) & (values[1:] <= 0))
    if len(crossing) == 0:
        return math.nan
    i = crossing[0]
    return float(optimize.brentq(gap, grid[i], grid[i + 1]))


def mdd_paired_continuous(n: int, sd_diff: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable mean difference of paired scores (normal approximation):
    (z_{1-alpha/2} + z_{power}) * sd(differences) / sqrt(n)."""
    if n < 2 or not np.isfinite(sd_diff):
        return math.nan
    return float((_z(1 - alpha) + stats.norm.ppf(power)) * sd_diff / math.sqrt(n))


def paired_test(a, b, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Compare method b with method a on the same samples (arrays aligned by sample id).

    0/1 scores: exact McNemar; otherwise the paired bootstrap. Returns the test name, n, the mean
    difference b - a, p, and the minimum detectable difference at alpha 0.05 and power 0.8."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = len(a)
    if n == 0:
        return dict(test="none", n=0, diff=math.nan, p=math.nan, mdd=math.nan)
    if is_binary(a) and is_binary(b):
        result = mcnemar_exact(a, b)
        discordance = (result["n01"] + result["n10"]) / n
        return dict(
            test="exact McNemar",
            n=n,
            diff=float(b.mean() - a.mean()),
            p=result["p"],
            mdd=mdd_paired_binary(n, discordance),
        )
    result = paired_bootstrap(a, b, n_resamples, seed)
    sd = float(np.std(b - a, ddof=1)) if n > 1 else math.nan
    return dict(test="paired bootstrap", n=n, diff=result["diff"], p=result["p"], mdd=mdd_paired_continuous(n, sd))


# ---- calibration and ranking (analysis.calibration) ---------------------------------------------

ECE_BINS = 10


def confidence_bins(confidence, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin index 0..n_bins-1 of each confidence in equal-width bins over [0, 1]: bin i holds
    [i/n, (i+1)/n), the last bin also holds 1.0."""
    conf = np.asarray(confidence, float)
    return np.clip(np.floor(conf * n_bins), 0, n_bins - 1).astype(int)


def reliability(confidence, correct, n_bins: int = ECE_BINS) -> dict:
    """Per equal-width bin: count, mean confidence and accuracy (NaN in empty bins)."""
    conf, hit = np.asarray(confidence, float), np.asarray(correct, float)
    bins = confidence_bins(conf, n_bins)
    count = np.bincount(bins, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, conf, n_bins) / count
        accuracy = np.bincount(bins, hit, n_bins) / count
    return dict(
        low=np.arange(n_bins) / n_bins,
        high=np.arange(1, n_bins + 1) / n_bins,
        count=count,
        confidence=mean_conf,
        accuracy=accuracy,
    )


def ece(confidence, correct, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error with `n_bins` equal-width bins over [0, 1]:
    sum over bins of (n_bin / n) * |accuracy_bin - mean confidence_bin| (NaN without positions)."""
    conf, hit = np.asarray(confidence, float), np.asarray(correct, float)
    if len(conf) == 0:
        return math.nan
    bins = confidence_bins(conf, n_bins)
    gap = np.abs(np.bincount(bins, hit, n_bins) - np.bincount(bins, conf, n_bins))
    return float(gap.sum() / len(conf))


def auroc(scores, labels) -> float:
    """Area under the ROC curve of `scores` for the positives (`labels` true): the probability that a
    random positive scores above a random negative, ties counted 1/2. Rank formula (Mann-Whitney):
    (sum of the positives' average ranks - n1 (n1 + 1) / 2) / (n1 n0). NaN without both classes."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = stats.rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def cluster_weights(n_clusters: int, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap over clusters (here: samples, whose tokens are correlated): row b counts how often
    each cluster was drawn in resample b, n_clusters draws with replacement. The draws are
    `default_rng(seed).integers(0, n_clusters, (n_resamples, n_clusters))`, row by row."""
    rng = np.random.default_rng(seed)
    draws = (
        rng.integers(0, n_clusters, size=(n_resamples, n_clusters)) if n_clusters else np.zeros((n_resamples, 0), int)
    )
    weights = np.zeros((n_resamples, n_clusters))
    np.add.at(weights, (np.arange(n_resamples)[:, None], draws), 1.0)
    return weights


def ratio_draws(weights: np.ndarray, numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """Resampled ratios sum(w * num) / sum(w * den) for each row of `weights`: numerators are
    clusters x k (or a vector), denominators the same shape or one vector for all k; returns
    resamples x k, NaN where a resample drew no position."""
    n_clusters = weights.shape[1]
    num = weights @ np.asarray(numerators, float).reshape(n_clusters, -1)
    den = weights @ np.asarray(denominators, float).reshape(n_clusters, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def auroc_draws(weights: np.ndarray, cluster, scores, labels, budget: int = 4_000_000) -> np.ndarray:
    """AUROC of each resample of clusters (rows of `weights`): every position counts as often as its
    cluster was drawn. Equal to `auroc` for a row of ones.

    With H[s, t] = the number of (positive of cluster s, negative of cluster t) pairs ordered right
    (ties 1/2), a resample w has AUROC w'Hw / ((w . positives) (w . negatives)): H is built once from
    the sorted scores, so each resample costs a product with an n_clusters-square matrix."""
    from scipy import sparse

    cluster, labels = np.asarray(cluster, int), np.asarray(labels, bool)
    n_resamples, n_clusters = weights.shape
    if len(cluster) == 0:
        return np.full(n_resamples, math.nan)
    _, group = np.unique(np.asarray(scores, float), return_inverse=True)
    n_groups = int(group.max()) + 1
    pos = sparse.csr_matrix((labels.astype(float), (cluster, group)), shape=(n_clusters, n_groups))
    neg = sparse.csr_matrix(((~labels).astype(float), (cluster, group)), shape=(n_clusters, n_groups))
    pairs = np.zeros((n_clusters, n_clusters))
    step = max(1, budget // n_groups)
    for start in range(0, n_clusters, step):
        block = neg[start : start + step].toarray()  # clusters t x score groups
        below = np.cumsum(block, axis=1) - 0.5 * block  # negatives of t scoring below (ties: 1/2)
        pairs[:, start : start + step] = np.asarray(pos @ below.T)
    num = np.einsum("bs,bs->b", weights @ pairs, weights)
    den = (weights @ np.asarray(pos.sum(axis=1)).ravel()) * (weights @ np.asarray(neg.sum(axis=1)).ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bias_corrected(estimate: float, draws, level: float = LEVEL, lower: float | None = None) -> tuple:
    """(corrected estimate, (low, high)) of a biased statistic from its bootstrap draws: the estimate minus the
    bootstrap bias (mean of draws - estimate), and the basic bootstrap interval (2 estimate - the upper and
    lower percentiles of the draws), both clipped at `lower`. The percentile interval of a statistic biased
    like ECE can lie entirely above the estimate; this interval holds the corrected estimate whenever the
    draws' mean lies within their own central percentiles."""
    draws = np.asarray(draws, float)
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0 or not np.isfinite(estimate):
        return math.nan, (math.nan, math.nan)
    low, high = percentile_ci(draws, level)
    values = np.array([2 * estimate - draws.mean(), 2 * estimate - high, 2 * estimate - low])
    if lower is not None:
        values = np.maximum(values, lower)
    return float(values[0]), (float(values[1]), float(values[2]))


def percentile_ci(draws, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap draws (NaN draws ignored; NaN when none is finite)."""
    draws = np.asarray(draws, float)
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    return float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))
