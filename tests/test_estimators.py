"""Estimators: the t-interval over groups, pooled per-evaluation variance, efficiency."""

import numpy as np
import pytest
from scipy import stats

from mcdiff.estimators import convergence_rate, group_means, relative_efficiency_vs_mc, rqmc_growth, summarize


def test_mc_interval_matches_scipy():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(50,))
    out = summarize(x, np.arange(50), 0.9)
    lo, hi = stats.t.interval(0.9, 49, loc=x.mean(), scale=stats.sem(x))
    assert out["ci_lower"] == pytest.approx(lo) and out["ci_upper"] == pytest.approx(hi)
    assert out["ci_width"] == pytest.approx(hi - lo)
    assert out["variance_per_eval"] == pytest.approx(x.var(ddof=1))
    assert out["relative_efficiency"] == pytest.approx(1.0)
    assert np.isnan(out["relative_efficiency_vs_mc"])


def test_grouped_interval_uses_group_means_and_groups_minus_one_dof():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    groups = np.repeat(np.arange(10), 4)
    g = x.reshape(10, 4, 3).mean(axis=1)
    out = summarize(x, groups, 0.95)
    np.testing.assert_allclose(out["estimate"], g.mean(axis=0))
    np.testing.assert_allclose(out["std_error"], g.std(axis=0, ddof=1) / np.sqrt(10))
    half = stats.t.ppf(0.975, 9) * out["std_error"]
    np.testing.assert_allclose(out["ci_upper"] - out["estimate"], half)


def test_group_means_accepts_interleaved_groups():
    x = np.array([1.0, 10.0, 3.0, 30.0])
    np.testing.assert_allclose(group_means(x, np.array([0, 1, 0, 1])), [2.0, 20.0])


def test_pooled_variance_is_unbiased_under_antithetic_dependence():
    """Pairs with correlation -0.8: the plain pooled variance is biased low by Var(mean) and
    the corrected one is not. Over 4000 repeats of 20 pairs, the mean corrected estimate
    is within 5 standard errors of sigma^2 = 4 (false failure < 1e-6)."""
    rng = np.random.default_rng(2)
    cov = 4 * np.array([[1, -0.8], [-0.8, 1]])
    estimates = []
    for _ in range(4000):
        x = rng.multivariate_normal([1.0, 1.0], cov, size=20).ravel()
        estimates.append(summarize(x, np.repeat(np.arange(20), 2))["variance_per_eval"])
    estimates = np.array(estimates)
    assert abs(estimates.mean() - 4) < 5 * estimates.std() / np.sqrt(len(estimates))


def test_relative_efficiency_of_pairs_matches_theory():
    """Var of a pair mean is sigma^2 (1 + rho) / 2, so efficiency is 1 / (1 + rho) = 5."""
    rng = np.random.default_rng(3)
    x = rng.multivariate_normal([0, 0], [[1, -0.8], [-0.8, 1]], size=20000).ravel()
    eff = summarize(x, np.repeat(np.arange(20000), 2))["relative_efficiency"]
    assert eff == pytest.approx(5.0, rel=0.05)  # SE of the estimate ~1%: 5 SE


def test_zero_standard_error_gives_no_efficiency():
    """All group means equal: the interval is 0 wide, and no efficiency (NaN) is claimed, not inf."""
    out = summarize(np.array([1.0, -1.0, 2.0, -2.0]), np.array([0, 0, 1, 1]))
    assert out["std_error"] == 0 and out["ci_width"] == 0 and np.isnan(out["relative_efficiency"])


def test_efficiency_vs_mc_is_squared_width_ratio():
    assert relative_efficiency_vs_mc(np.array(2.0), np.array(0.5)) == pytest.approx(16.0)


@pytest.mark.parametrize("confidence", [0, 1, 1.5, -0.1, "0.95"])
def test_confidence_outside_unit_interval_is_refused(confidence):
    with pytest.raises(ValueError, match="confidence must be in"):
        summarize(np.ones(4), np.arange(4), confidence)


def test_unequal_groups_and_single_group_are_refused():
    with pytest.raises(ValueError, match="equally sized"):
        summarize(np.ones(3), np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="at least 2 groups"):
        summarize(np.ones(3), np.zeros(3))


def test_rqmc_growth_extends_points_only_where_replicates_converge_faster_than_monte_carlo_by_enough():
    """16 replicates at 95%: extend the points when the mean rate exceeds log2(2 (t_15 / t_31)^2) = 1.127."""
    threshold = np.log2(2 * (stats.t.ppf(0.975, 15) / stats.t.ppf(0.975, 31)) ** 2)
    assert threshold == pytest.approx(1.127, abs=1e-3)
    assert rqmc_growth([threshold + 0.01], 16) == "points"
    assert rqmc_growth([threshold - 0.01], 16) == "replicates"
    assert rqmc_growth([2.0, 0.2], 16) == "replicates"  # the mean over rounds decides
    assert rqmc_growth([np.nan, np.inf], 16) == "points"
    assert rqmc_growth([np.nan], 16) == "replicates"
    assert rqmc_growth([1.3], 256) == "points" and rqmc_growth([1.01], 256) == "points"
    assert convergence_rate(4.0, 1.0) == 2.0 and np.isnan(convergence_rate(0.0, 0.0))
    assert convergence_rate(1.0, 0.0) == np.inf
