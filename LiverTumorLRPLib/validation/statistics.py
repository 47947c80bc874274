"""Rates with Wilson intervals, medians with distribution-free intervals, rank correlation."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ..necessity import spearman as necessity_spearman


def wilson_interval(hits: int, n: int, z: float = 1.959963984540054) -> list:
    """95 % Wilson score interval ``[low, high]`` of a rate ``hits / n`` (``[nan, nan]`` when ``n = 0``)."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = hits / n
    centre, denom = p + z * z / (2 * n), 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)]


def rate(flags) -> dict:
    """A rate with its count and 95 % Wilson interval."""
    flags = [bool(f) for f in flags]
    return {"hits": sum(flags), "cases": len(flags), "share": float(np.mean(flags)) if flags else float("nan"),
            "ci95": wilson_interval(sum(flags), len(flags))}


def median_interval(values, level: float = 0.95) -> list:
    """Distribution-free interval ``[low, high]`` of the median: order statistics ``x_(k)`` and ``x_(n+1-k)``
    with the largest ``k`` whose binomial coverage ``P(k <= Bin(n, 1/2) <= n - k)`` is at least ``level``
    (``[nan, nan]`` when there are too few values for that coverage)."""
    x = np.sort(np.asarray([v for v in values if not np.isnan(v)], float))
    n = len(x)
    k = 0
    while k + 1 <= n // 2 and stats.binom.cdf(n - k - 1, n, 0.5) - stats.binom.cdf(k, n, 0.5) >= level:
        k += 1
    if k == 0:
        return [float("nan"), float("nan")]
    return [float(x[k - 1]), float(x[n - k])]


def median_with_interval(values) -> dict:
    """The median with its 95 % interval (:func:`median_interval`) and the number of cases."""
    v = [x for x in values if not np.isnan(x)]
    return {"median": float(np.median(v)) if v else float("nan"), "ci95": median_interval(v), "cases": len(v)}


def spearman(a, b) -> float:
    """Spearman rank correlation (0 when either input is constant; :func:`..necessity.spearman`)."""
    rho = necessity_spearman(a, b)
    return 0.0 if rho is None else rho
