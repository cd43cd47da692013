"""Hypothesis tests for behaviour rates, as the paper uses them (plus intervals it did not give).

* `two_proportion_ztest(k1, n1, k2, n2)`: pooled two-proportion z-test; returns z, the two-sided
  p and the one-sided p for "arm 1's rate is higher".
* `fisher_exact_test(k1, n1, k2, n2)`: Fisher's exact test on the 2x2 table, same two p-values;
  used instead of the z-test when an expected count is below 5 (`needs_exact`).
* `difference_interval(k1, n1, k2, n2, conf)`: rate1 - rate2 with Newcombe's hybrid score
  interval (built from the two Wilson intervals; Newcombe 1998, method 10).
* `binomial_greater(k, n, p0)`: one-sided exact binomial test of "rate > p0" (near-zero rate).
* `fisher_combine(pvalues)`: Fisher's method over independent p-values (cells are independent).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats

from analysis.stats import wilson_interval


def _check(k: int, n: int) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")


def two_proportion_ztest(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float]:
    """(z, p two-sided, p one-sided for rate1 > rate2). Identical arms at 0% or 100% give
    z = nan and p = 1 (no variance, no evidence of a difference)."""
    _check(k1, n1)
    _check(k2, n2)
    if n1 == 0 or n2 == 0:
        raise ValueError("both arms need at least one trial")
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return math.nan, 1.0, 1.0
    z = (k1 / n1 - k2 / n2) / se
    return z, float(2 * stats.norm.sf(abs(z))), float(stats.norm.sf(z))


def fisher_exact_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """(p two-sided, p one-sided for rate1 > rate2)."""
    _check(k1, n1)
    _check(k2, n2)
    table = [[k1, n1 - k1], [k2, n2 - k2]]
    two = stats.fisher_exact(table, alternative="two-sided").pvalue
    greater = stats.fisher_exact(table, alternative="greater").pvalue
    return float(two), float(greater)


def needs_exact(k1: int, n1: int, k2: int, n2: int) -> bool:
    """True when some expected count of the 2x2 table is below 5 (the z-test's normal
    approximation is then poor)."""
    total = n1 + n2
    if total == 0:
        return True
    successes, failures = k1 + k2, total - k1 - k2
    return min(n * m / total for n in (n1, n2) for m in (successes, failures)) < 5


def difference_interval(k1: int, n1: int, k2: int, n2: int, conf: float = 0.95) -> tuple[float, float, float]:
    """(rate1 - rate2, low, high) with Newcombe's hybrid score interval."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, conf)
    l2, u2 = wilson_interval(k2, n2, conf)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def binomial_greater(k: int, n: int, p0: float) -> float:
    """One-sided exact binomial p-value of observing k or more of n when the rate is p0."""
    _check(k, n)
    if not 0 < p0 < 1:
        raise ValueError(f"p0 must be in (0, 1), got {p0}")
    if n == 0:
        return 1.0
    return float(stats.binomtest(k, n, p0, alternative="greater").pvalue)


def fisher_combine(pvalues: Sequence[float]) -> tuple[float, float]:
    """(chi-square statistic with 2m degrees of freedom, combined p)."""
    if not pvalues:
        raise ValueError("no p-values to combine")
    res = stats.combine_pvalues(list(pvalues), method="fisher")
    return float(res.statistic) + 0.0, float(res.pvalue)  # + 0.0: no -0.0 when every p is 1
