"""Drift statistics: PSI, the KS statistic against a quantile sketch, chi-square, and their p-values.

numpy only: scipy is not in the drift function's layers, so the p-values are computed here too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

EPSILON = 1e-4  # the floor of a bucket's share in PSI (see the package doc)
SKETCH_POINTS = 101  # quantiles in a reference's sketch: 0%, 1%, ..., 100%


def psi(reference: Any, current: Any, epsilon: float = EPSILON) -> float:
    """Population stability index of two share vectors over the same buckets (see :mod:`pricepipe.drift`)."""
    r = np.maximum(np.asarray(reference, dtype=np.float64), epsilon)
    c = np.maximum(np.asarray(current, dtype=np.float64), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def sketch_cdf(quantiles: Any, x: Any, *, left: bool = False) -> np.ndarray:
    """The CDF a quantile sketch describes, at ``x`` (its left limit when ``left``).

    Quantile ``j`` of ``k + 1`` sits at probability ``j / k``; between two distinct quantiles the CDF
    is linear, and a run of equal quantiles is a jump, as a discrete feature's CDF has.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    points = np.asarray(x, dtype=np.float64)
    last = len(q) - 1
    # index of the last quantile <= x (right-continuous CDF) or < x (its left limit)
    k = np.searchsorted(q, points, side="left" if left else "right") - 1
    inner = np.clip(k, 0, last - 1)
    low, high = q[inner], q[inner + 1]
    span = high - low
    fraction = np.divide(points - low, span, out=np.zeros_like(points), where=span > 0)
    inside = (inner + np.clip(fraction, 0.0, 1.0)) / last
    return np.where(k < 0, 0.0, np.where(k >= last, 1.0, inside))


def ks_against_sketch(quantiles: Any, current_sorted: np.ndarray) -> float:
    """Largest gap between a sketch's CDF and the empirical CDF of sorted, non-empty current values.

    Between two consecutive current values the empirical CDF is flat and the sketch's non-decreasing,
    so the gap there is largest at an end: at a current value itself, or approached from its left.
    Those two limits at every distinct current value give the exact supremum (before the first value
    and after the last the same holds with the empirical CDF at 0 and 1).
    """
    n = len(current_sorted)
    # the ECDF at its own points from the runs of equal values, in O(n) rather than a search
    starts = np.flatnonzero(np.concatenate(([True], current_sorted[1:] != current_sorted[:-1])))
    ends = np.append(starts[1:], n)
    values = current_sorted[starts]
    at = np.abs(ends / n - sketch_cdf(quantiles, values))
    before = np.abs(starts / n - sketch_cdf(quantiles, values, left=True))
    return float(max(at.max(), before.max()))


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution (the KS statistic's limit law)."""
    if lam <= 0:
        return 1.0
    k = np.arange(1, 101, dtype=np.float64)
    if lam < 1.18:  # the alternating series below converges too slowly here; this one converges fast
        cdf = math.sqrt(2 * math.pi) / lam * float(np.sum(np.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * lam**2))))
        return float(min(1.0, max(0.0, 1.0 - cdf)))
    signs = np.where(k % 2 == 1, 1.0, -1.0)
    return float(min(1.0, max(0.0, 2 * float(np.sum(signs * np.exp(-2 * k**2 * lam**2))))))


def ks_pvalue(statistic: float, n: int, m: int | None) -> float:
    """Asymptotic two-sample KS p-value for sizes n and m (m None: a one-sample test)."""
    size = n * m / (n + m) if m else float(n)
    root = math.sqrt(size)
    return kolmogorov_sf((root + 0.12 + 0.11 / root) * statistic)


def chi2_sf(statistic: float, df: int) -> float:
    """P(X > statistic) for X chi-square with ``df`` degrees of freedom: the regularized upper
    incomplete gamma function Q(df/2, statistic/2), by its series or its continued fraction."""
    if df < 1:
        raise ValueError(f"chi-square needs at least one degree of freedom, got {df}")
    if statistic <= 0:
        return 1.0
    a, x = df / 2.0, statistic / 2.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # series for the lower function P, Q = 1 - P
        term = total = 1.0 / a
        denominator = a
        for _ in range(100_000):
            denominator += 1
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return float(min(1.0, max(0.0, 1.0 - total * math.exp(log_prefix))))
    tiny = 1e-300  # modified Lentz's method for the continued fraction of Q
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return float(min(1.0, max(0.0, math.exp(log_prefix) * h)))


def chi2_homogeneity(current_counts: Any, reference_counts: Any) -> tuple[float, int, float]:
    """Pearson's chi-square for a 2 x k table; buckets empty on both sides are left out.
    Returns (statistic, degrees of freedom, p-value)."""
    cur = np.asarray(current_counts, dtype=np.float64)
    ref = np.asarray(reference_counts, dtype=np.float64)
    total = cur + ref
    keep = total > 0
    cur, ref, total = cur[keep], ref[keep], total[keep]
    n, m = cur.sum(), ref.sum()
    if len(total) < 2 or n == 0 or m == 0:
        return 0.0, 0, 1.0
    expected_cur = total * (n / (n + m))
    expected_ref = total * (m / (n + m))
    statistic = float(
        np.sum((cur - expected_cur) ** 2 / expected_cur) + np.sum((ref - expected_ref) ** 2 / expected_ref)
    )
    df = len(total) - 1
    return statistic, df, chi2_sf(statistic, df)


def sorted_quantiles(ordered: np.ndarray, q: np.ndarray) -> np.ndarray:
    """numpy.quantile's default (linear) method on already sorted values, without partitioning again."""
    position = q * (len(ordered) - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, len(ordered) - 1)
    gamma = position - low
    a, b = ordered[low], ordered[high]
    diff = b - a
    # the same two-sided interpolation numpy uses, so both give identical bits
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
