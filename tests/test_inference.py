"""Hypothesis tests against values worked out by hand (closed forms, no scipy in the expectations)."""
from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from analysis.inference import (
    binomial_greater, difference_interval, fisher_combine, fisher_exact_test, needs_exact, two_proportion_ztest)


def test_ztest_by_hand():
    # 8/10 vs 2/10: pooled 0.5, se = sqrt(0.25 * 0.2) = 0.2236068, z = 0.6 / se = 2.6832816
    z, p_two, p_greater = two_proportion_ztest(8, 10, 2, 10)
    assert z == pytest.approx(2.6832816, abs=1e-6)
    tail = 1 - NormalDist().cdf(2.6832816)
    assert p_two == pytest.approx(2 * tail, rel=1e-6)
    assert p_two == pytest.approx(0.0072903, abs=1e-6)
    assert p_greater == pytest.approx(tail, rel=1e-6)
    # the other direction: same two-sided p, one-sided p near 1
    z2, p2, p2_greater = two_proportion_ztest(2, 10, 8, 10)
    assert z2 == pytest.approx(-z) and p2 == pytest.approx(p_two) and p2_greater == pytest.approx(1 - tail)


def test_ztest_without_variance_and_bad_input():
    z, p, p1 = two_proportion_ztest(0, 5, 0, 7)
    assert math.isnan(z) and p == 1.0 and p1 == 1.0
    with pytest.raises(ValueError):
        two_proportion_ztest(3, 2, 1, 2)
    with pytest.raises(ValueError):
        two_proportion_ztest(0, 0, 1, 2)


def test_fisher_exact_by_hand():
    # [[8, 2], [2, 8]]: P(X >= 8) for a hypergeometric (20, 10 successes, 10 draws)
    # = (C(10,8)C(10,2) + C(10,9)C(10,1) + C(10,10)C(10,0)) / C(20,10) = 2126 / 184756
    p_two, p_greater = fisher_exact_test(8, 10, 2, 10)
    assert p_greater == pytest.approx(2126 / 184756, rel=1e-9)
    assert p_two == pytest.approx(2 * 2126 / 184756, rel=1e-9)   # symmetric table


def test_needs_exact():
    # expected count of a cell = row total * column total / N
    assert not needs_exact(8, 10, 2, 10)      # every expected count is 10 * 10 / 20 = 5
    assert needs_exact(8, 10, 1, 10)          # successes 9: 10 * 9 / 20 = 4.5
    assert not needs_exact(50, 100, 40, 100)
    assert needs_exact(1, 100, 0, 100)
    assert needs_exact(0, 0, 0, 0)


def test_newcombe_difference_published_example():
    # Newcombe (1998), Stat Med 17:873, example (56/70 vs 48/80): method 10 gives 0.0524 to 0.3339
    d, lo, hi = difference_interval(56, 70, 48, 80)
    assert d == pytest.approx(0.2)
    assert lo == pytest.approx(0.0524, abs=5e-4)
    assert hi == pytest.approx(0.3339, abs=5e-4)


def test_newcombe_edges_stay_in_range():
    d, lo, hi = difference_interval(10, 10, 0, 10)
    assert d == 1.0 and 0 < lo < 1 and hi == pytest.approx(1.0)
    d, lo, hi = difference_interval(0, 10, 0, 10)
    assert d == 0 and lo < 0 < hi


def test_binomial_greater_by_hand():
    # P(X >= 2 | n=10, p=0.01) = 1 - 0.99^10 - 10 * 0.01 * 0.99^9
    expected = 1 - 0.99 ** 10 - 10 * 0.01 * 0.99 ** 9
    assert binomial_greater(2, 10, 0.01) == pytest.approx(expected, rel=1e-9)
    assert binomial_greater(0, 10, 0.01) == pytest.approx(1.0)
    assert binomial_greater(10, 10, 0.5) == pytest.approx(0.5 ** 10)
    with pytest.raises(ValueError):
        binomial_greater(1, 10, 0.0)


def test_fisher_combine_by_hand():
    # two p = 0.05: X = -2 (2 ln 0.05) = 11.98293; chi-square with 4 df: sf = e^(-x/2) (1 + x/2)
    x = -4 * math.log(0.05)
    stat, p = fisher_combine([0.05, 0.05])
    assert stat == pytest.approx(x)
    assert p == pytest.approx(math.exp(-x / 2) * (1 + x / 2), rel=1e-9)
    # one p-value combines to itself; all ones give chi2 0 (not -0.0) and p 1
    assert fisher_combine([0.2])[1] == pytest.approx(0.2)
    stat, p = fisher_combine([1.0, 1.0])
    assert stat == 0.0 and math.copysign(1, stat) == 1 and p == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fisher_combine([])
