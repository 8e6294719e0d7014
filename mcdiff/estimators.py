"""Estimates, standard errors, confidence intervals and relative efficiency.

Every design is estimated by one formula. Its evaluations fall into G equally sized groups
(an evaluation for MC, a pair for antithetic sampling, a replicate for RQMC) whose means
``g_1 .. g_G`` are independent and identically distributed, so::

    estimate  = mean(g)
    std_error = s_g / sqrt(G)                       s_g: sample std of the g_k
    CI        = estimate ± t_{G-1, (1+c)/2} · std_error

The per-evaluation variance ``sigma^2 = Var f(z)`` is estimated from the pooled draws of any
design, because every draw is marginally N(0, I). Within-group dependence biases the plain
sample variance, since ``E sum_i (x_i - xbar)^2 = N sigma^2 - N Var(xbar)``; adding back the
design's own ``Var(xbar)`` estimate removes that bias::

    sigma^2 = (1/N) sum_i (x_i - xbar)^2 + std_error^2      (equals s^2 exactly for MC)

Relative efficiency is how many times fewer evaluations the design needs than plain MC for
the same standard error: ``sigma^2 / (N · std_error^2)`` (1 for MC). When MC ran side by side
at the same N, the paper's measure ``(width_MC / width_D)^2`` is reported too. Relative
efficiency per network function evaluation (NFE) compares at equal cost instead; for one
sampler it equals the per-evaluation figure, and multi-fidelity estimators (below) report it
against plain MC at their finest step count.

Multi-fidelity estimators (:mod:`mcdiff.multifidelity`) add independent *levels*, each a design
run on its own noise stream and summarized by the same formula; :func:`combine_levels` sums
them, :func:`control_variate_coefficient` and :func:`level_allocation` choose their weights
and sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from mcdiff.moments import GroupMoments
from mcdiff.validation import check_confidence

SUMMARY_FIELDS = (
    "estimate",
    "std_error",
    "ci_lower",
    "ci_upper",
    "ci_width",
    "variance_per_eval",
    "relative_efficiency",
    "relative_efficiency_per_nfe",
    "relative_efficiency_vs_mc",
    "relative_efficiency_corrected",
)
"""Labels of the ``summary`` coordinate of a result, in order."""


def t_interval(estimate: np.ndarray, std_error: np.ndarray, dof, confidence: float) -> dict[str, np.ndarray]:
    """The two-sided interval ``estimate ± t_{dof, (1+c)/2} · std_error`` and its width."""
    half = stats.t.ppf(0.5 + confidence / 2, dof) * std_error
    return {"ci_lower": estimate - half, "ci_upper": estimate + half, "ci_width": 2 * half}


def group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Means ``(G, *own_shape)`` of ``values`` ``(N, *own_shape)`` over equally sized groups, in label order."""
    order, size = _group_order(values, groups)
    return values[order].reshape(len(order) // size, size, *values.shape[1:]).mean(axis=1)


def _group_order(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, int]:
    """The row order that puts groups in label order (rows of a group in their order), and the group size."""
    groups = np.asarray(groups)
    if len(values) != len(groups):
        raise ValueError(f"{len(values)} values but {len(groups)} group ids")
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if counts.min() != counts.max():
        raise ValueError(f"groups must be equally sized, got sizes {counts.min()} to {counts.max()}")
    return np.argsort(inverse, kind="stable"), int(counts[0])


def moments_of(values: np.ndarray, groups: np.ndarray) -> GroupMoments:
    """The :class:`~mcdiff.moments.GroupMoments` of ``values`` ``(N, *own_shape)`` with group ids ``(N,)``.

    Groups are folded in label order; for a design's contiguous groups that is address order,
    so this equals the runner's streaming accumulation bit for bit.
    """
    values = np.asarray(values, dtype=np.float64)
    order, size = _group_order(values, groups)
    return GroupMoments.from_values(values[order], size)


def summarize(values: np.ndarray, groups: np.ndarray, confidence: float = 0.95) -> dict[str, np.ndarray]:
    """Estimate, standard error, t-interval, per-evaluation variance and relative efficiency.

    Parameters
    ----------
    values : array (N, *own_shape)
        One row per evaluation.
    groups : array (N,)
        Group id of each evaluation (at least 2 groups, equally sized).
    confidence : float
        Level of the two-sided interval, in (0, 1).

    Returns
    -------
    dict
        As :func:`summarize_moments`.
    """
    confidence = check_confidence(confidence)
    return summarize_moments(moments_of(values, groups), confidence)


def summarize_moments(moments: GroupMoments, confidence: float = 0.95) -> dict[str, np.ndarray]:
    """The fields of :data:`SUMMARY_FIELDS` from a design's accumulated group moments.

    Returns
    -------
    dict
        ``{field: array (*own_shape)}`` for every field of :data:`SUMMARY_FIELDS`;
        ``relative_efficiency_per_nfe`` equals ``relative_efficiency`` (MC on the same sampler
        costs the same per evaluation); ``relative_efficiency_vs_mc`` is NaN here (see
        :func:`relative_efficiency_vs_mc`); ``relative_efficiency_corrected`` removes the
        ``nu / (nu - 2)`` bias of the raw figure (:func:`corrected_relative_efficiency`). Where
        every group mean is equal (``std_error = 0``: a discrete statistic under RQMC, a
        constant pixel) the interval has width 0 and the efficiencies are NaN, not inf;
        :func:`~mcdiff.results.build_result` warns about it.
    """
    confidence = check_confidence(confidence)
    n_groups, n_evals = moments.n_groups, moments.n_evals
    std_error = np.sqrt(moments.group_variance() / n_groups)
    estimate = moments.mean()
    variance = moments.pooled_variance() + std_error**2
    with np.errstate(divide="ignore", invalid="ignore"):
        efficiency = np.where(std_error > 0, variance / (n_evals * std_error**2), np.nan)
    return {
        "estimate": estimate,
        "std_error": std_error,
        **t_interval(estimate, std_error, n_groups - 1, confidence),
        "variance_per_eval": variance,
        "relative_efficiency": efficiency,
        "relative_efficiency_per_nfe": efficiency,
        "relative_efficiency_vs_mc": np.full_like(estimate, np.nan),
        "relative_efficiency_corrected": corrected_relative_efficiency(efficiency, n_groups, moments.group_size),
    }


VARIANCE_FIELDS = ("estimate", "std_error", "ci_lower", "ci_upper", "ci_width")
"""Fields of :func:`variance_interval`."""


def variance_interval(
    values: np.ndarray, groups: np.ndarray, confidence: float = 0.95
) -> dict[str, np.ndarray]:
    """The per-evaluation variance ``sigma^2 = Var f(z)`` with a delta-method t-interval.

    Parameters
    ----------
    values : array (N, *own_shape)
    groups : array (N,)
        Group id of each evaluation (at least 2 groups, equally sized).
    confidence : float

    Returns
    -------
    dict
        As :func:`spread_interval`.
    """
    confidence = check_confidence(confidence)
    return spread_interval(moments_of(values, groups), confidence)


def spread_interval(moments: GroupMoments, confidence: float = 0.95) -> dict[str, np.ndarray]:
    """The per-evaluation variance ``sigma^2`` with a delta-method t-interval, from group moments.

    The estimate is :func:`summarize_moments`' ``variance_per_eval``. It is a smooth function
    of the design's means of ``x`` and ``x^2``; linearized at the true mean ``mu`` (where the
    derivative in the mean vanishes) it is the design's mean of ``h_i = (x_i - mu)^2`` up to
    ``O(1/N)``. So, with ``h_i = (x_i - xbar)^2`` and its group means ``g^h_k``
    (:meth:`~mcdiff.moments.GroupMoments.spread_group_variance`)::

        std_error = s_{g^h} / sqrt(G)
        CI        = sigma^2 ± t_{G-1, (1+c)/2} · std_error

    The interval is asymptotic: ``h`` is skewed (a scaled chi-square for Gaussian ``x``), so
    with few groups it covers a little less than ``c``. A design that narrows the interval of
    the mean need not narrow this one: antithetic partners of a near-affine sampler have
    nearly equal ``h``, so their pairs are worth about one evaluation each here.

    Returns
    -------
    dict
        ``{field: array (*own_shape)}`` for every field of :data:`VARIANCE_FIELDS`.
    """
    confidence = check_confidence(confidence)
    estimate = summarize_moments(moments, confidence)["variance_per_eval"]
    std_error = np.sqrt(moments.spread_group_variance() / moments.n_groups)
    return {
        "estimate": estimate,
        "std_error": std_error,
        **t_interval(estimate, std_error, moments.n_groups - 1, confidence),
    }


def convergence_rate(half_variance: float, variance: float) -> float:
    """``log2(s_{P/2}^2 / s_P^2)``: how fast RQMC replicate means converge as their points double.

    Plain Monte Carlo gives 1 on average, a smooth integrand under scrambled nets up to 3;
    ``inf`` where only the half-means vary, NaN where neither does.
    """
    if not half_variance > 0:
        return math.nan
    return math.inf if variance == 0 else math.log2(half_variance / variance)


def rqmc_growth(rates: Sequence[float], replicates: int, confidence: float = 0.95) -> str:
    r"""How an RQMC run that doubles should grow: ``"points"`` (extend every replicate) or ``"replicates"``.

    With ``R`` replicates of ``P`` points the interval's half-width is ``t_{R-1} s_P / sqrt(R)``,
    ``s_P^2`` the variance of a replicate mean. Both ways double the cost. Doubling the points
    keeps ``R`` and divides ``s_P^2`` by ``2^alpha``, the rate at which the replicates converge;
    doubling the replicates keeps ``s_P`` and halves ``1/R``, and the t quantile falls to
    ``t_{2R-1}``. The squared half-width is smaller after extending the points when

    .. math:: 2^{\alpha} > 2 \left(\frac{t_{R-1}}{t_{2R-1}}\right)^2

    (16 replicates at 95%: ``alpha > 1.13``), so points are extended unless the replicates
    converge no faster than Monte Carlo by that margin. ``alpha`` is the mean of ``rates``, the
    :func:`convergence_rate` of every round so far (one round's, from 16 replicates, has a
    standard deviation of about 0.5), each capped at 8 so that one infinite rate does not
    decide alone; with no rate (every half-mean equal) the replicates are doubled.
    """
    confidence = check_confidence(confidence)
    q = (1 + confidence) / 2
    threshold = math.log2(2 * (stats.t.ppf(q, replicates - 1) / stats.t.ppf(q, 2 * replicates - 1)) ** 2)
    known = [r for r in rates if not math.isnan(r)]
    if not known:
        return "replicates"
    return "points" if np.mean(np.minimum(known, 8.0)) > threshold else "replicates"


def corrected_relative_efficiency(efficiency: np.ndarray, n_groups: int, group_size: int) -> np.ndarray:
    """Relative efficiency with the ``nu / (nu - 2)`` bias of ``1 / std_error^2`` removed.

    :func:`summarize`'s ``sigma^2 / (N std_error^2)`` divides by an estimate of the variance of
    the mean, and ``1 / s^2`` is biased high: for normal group means
    ``s_g^2 ~ sigma_g^2 chi^2_nu / nu`` with ``nu = G - 1``, so ``E[1 / s_g^2] = nu / (nu - 2) /
    sigma_g^2``. When the group size ``m > 1`` the numerator ``sigma^2`` comes mostly from the
    spread *within* groups, nearly independent of ``s_g^2`` (its relative error is
    ``O(N^-1/2)`` against ``s_g^2``'s ``sqrt(2 / nu)``), so::

        corrected = (nu - 2) / nu · efficiency          (m > 1, nu > 2; NaN for nu <= 2)

    is unbiased up to ``O(1 / N)`` and the non-normality of the group means. RQMC with 16
    replicates has ``nu = 15`` and a bias of 15%; antithetic pairs have ``nu = N/2 - 1`` and
    a negligible one. For plain MC (``m = 1``) numerator and denominator are the same sample
    variance and the raw efficiency is exactly 1: it is returned unchanged. The correction
    makes the *mean* right; a single run's efficiency still scatters by about
    ``sqrt(2 / (nu - 4))`` (49% at ``nu = 15``), so read it as an order of magnitude.

    Parameters
    ----------
    efficiency : array
        Raw relative efficiency (:func:`summarize`'s ``relative_efficiency``).
    n_groups, group_size : int
        ``G`` and ``m = N / G`` of the design.

    Returns
    -------
    array, the shape of ``efficiency``
    """
    efficiency = np.asarray(efficiency, dtype=np.float64)
    if group_size == 1:
        return efficiency
    nu = n_groups - 1
    return efficiency * ((nu - 2) / nu) if nu > 2 else np.full_like(efficiency, np.nan)


def relative_efficiency_vs_mc(width_mc: np.ndarray, width: np.ndarray) -> np.ndarray:
    """The paper's measure at equal evaluations: ``(width_MC / width_D)^2``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.asarray(width_mc) / np.asarray(width)) ** 2


def combine_levels(
    estimates: np.ndarray,
    std_errors: np.ndarray,
    n_groups: np.ndarray,
    weights: np.ndarray,
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """Weighted sum of independent level estimates with a Welch–Satterthwaite t-interval.

    With level means ``m_l`` (each from :func:`summarize` over ``G_l`` groups, standard error
    ``e_l``) and weights ``w_l``::

        estimate  = sum_l w_l m_l
        std_error = sqrt(sum_l w_l^2 e_l^2)
        nu        = (sum_l w_l^2 e_l^2)^2 / sum_l (w_l^2 e_l^2)^2 / (G_l - 1)
        CI        = estimate ± t_{nu, (1+c)/2} · std_error

    Multilevel Monte Carlo has ``w_l = 1`` and level values ``f_l - f_{l-1}`` (telescoping
    sum, ``E f_L = E f_0 + sum_l E[f_l - f_{l-1}]``); a two-fidelity control variate has
    ``w = (beta, 1)`` and level values ``(f_0, f_1 - beta f_0)``. With one level this is the
    single-design t-interval; where every ``e_l = 0``, ``nu`` is infinite.

    Parameters
    ----------
    estimates, std_errors : array (L, *own_shape)
    n_groups : array (L,)
        Groups ``G_l >= 2`` behind each level's standard error.
    weights : array (L,) or (L, *own_shape)
    confidence : float
        Level of the two-sided interval, in (0, 1).

    Returns
    -------
    dict
        ``estimate``, ``std_error``, ``ci_lower``, ``ci_upper``, ``ci_width``, ``dof``, each
        ``(*own_shape)``.

    References
    ----------
    M. B. Giles, "Multilevel Monte Carlo path simulation", Oper. Res. 56(3), 2008.
    B. L. Welch, "The generalization of Student's problem when several different population
    variances are involved", Biometrika 34, 1947.
    """
    confidence = check_confidence(confidence)
    estimates, std_errors = np.asarray(estimates, dtype=np.float64), np.asarray(std_errors, dtype=np.float64)
    n_groups = np.asarray(n_groups)
    if n_groups.ndim != 1 or len(n_groups) != len(estimates) or (n_groups < 2).any():
        raise ValueError(f"n_groups must give >= 2 groups for each of {len(estimates)} levels, got {n_groups}")
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights.reshape(weights.shape + (1,) * (estimates.ndim - weights.ndim))
    parts = (weights * std_errors) ** 2
    variance = parts.sum(axis=0)
    dof_shape = (len(n_groups), *[1] * (estimates.ndim - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = variance**2 / (parts**2 / (n_groups.reshape(dof_shape) - 1)).sum(axis=0)
    dof = np.where(variance > 0, dof, np.inf)
    estimate = (weights * estimates).sum(axis=0)
    std_error = np.sqrt(variance)
    return {
        "estimate": estimate,
        "std_error": std_error,
        **t_interval(estimate, std_error, dof, confidence),
        "dof": dof,
    }


def control_variate_coefficient(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Coefficient of a control variate: the regression slope of fine on coarse values.

    For paired values ``x^F_i`` of the fine statistic and ``x^C_i`` of the coarse one on the
    same noise::

        beta = sum_i (x^F_i - mean x^F)(x^C_i - mean x^C) / sum_i (x^C_i - mean x^C)^2

    (0 where the coarse values do not vary). Estimate it on a pilot run independent of the
    final one, so that the final estimator is unbiased given ``beta``.

    Multi-fidelity estimation passes *per-evaluation* values, the slope that minimizes
    ``Var(f_1 - beta f_0)`` under plain MC, whatever the level's design. The slope of group
    means would minimize the level's variance under its own design, but for antithetic pairs
    it regresses the even parts of ``f_1`` and ``f_0``; it cancels their leading (quadratic)
    term and leaves a small, heavy-tailed residual. On the analytic model's pixels (2 and 20
    steps) that slope is 13-17 against 4-6 per evaluation, and the residual's pair means have
    kurtosis 40-140: the level's t-interval over 16 to 256 pairs covered 0.83-0.92, and the
    pixel-wise intervals of the coverage study 0.89-0.90, against 0.94-0.95 with the
    per-evaluation slope (``statistics/results/multifidelity_coverage.md``).

    Parameters
    ----------
    fine, coarse : array (N, *own_shape)
        Paired values (or group means), one coefficient per component; ``N >= 2``.

    Returns
    -------
    array (*own_shape)

    References
    ----------
    A. B. Owen, "Monte Carlo theory, methods and examples", sec. 8.9 (2013).
    """
    fine, coarse = np.asarray(fine, dtype=np.float64), np.asarray(coarse, dtype=np.float64)
    if fine.shape != coarse.shape or len(fine) < 2:
        raise ValueError(f"fine and coarse need the same shape (N >= 2, ...), got {fine.shape} and {coarse.shape}")
    df, dc = fine - fine.mean(axis=0), coarse - coarse.mean(axis=0)
    covariance, variance = (df * dc).sum(axis=0), (dc**2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(variance > 0, covariance / variance, 0.0)


def level_allocation(
    variances: np.ndarray, costs: np.ndarray, budget: float, rates: np.ndarray | None = None
) -> np.ndarray:
    """Evaluations per level that minimize the variance of a sum of levels at a given cost.

    Minimizing ``sum_l V_l / n_l`` subject to ``sum_l n_l C_l = B`` (Lagrange) gives::

        n_l = B sqrt(V_l / C_l) / sum_k sqrt(V_k C_k)

    ``V_l`` is the level's variance per evaluation *under its design*
    (``n · std_error^2`` from a pilot), ``C_l`` its cost per evaluation in NFE. The result is
    real-valued; round it to each design's allowed counts. The formula takes ``V_l`` to be the
    same at every ``n``; under RQMC it falls as ``n`` grows (the variance of the mean faster
    than ``1/n``), so a small pilot overstates the variance of the levels where RQMC works
    best, and the allocation is off the optimum for them.

    With ``rates``, the variance of level ``l``'s mean is modelled as ``V_l n_l^(-alpha_l)``
    (``alpha_l = 1`` for MC and antithetic pairs, up to 3 for RQMC on smooth integrands, Owen
    1997). Minimizing ``sum_l V_l n_l^(-alpha_l)`` subject to ``sum_l n_l C_l = B`` is convex;
    its stationarity condition ``alpha_l V_l n_l^(-alpha_l - 1) = lambda C_l`` gives::

        n_l(lambda) = (alpha_l V_l / (lambda C_l))^(1 / (1 + alpha_l))

    with ``lambda`` found by bisection on ``log lambda`` so that the budget is spent (the
    cost ``sum_l C_l n_l(lambda)`` falls monotonically in ``lambda``). All ``alpha_l = 1``
    is the formula above.

    Parameters
    ----------
    variances, costs : array (L,)
        ``V_l >= 0``, ``C_l > 0``.
    budget : float
        Total cost ``B > 0``.
    rates : array (L,), optional
        Decay rates ``alpha_l > 0`` of each level's variance; ``None`` for ``1``.

    Returns
    -------
    array (L,)

    References
    ----------
    M. B. Giles, "Multilevel Monte Carlo path simulation", Oper. Res. 56(3), 2008, sec. 2.
    A. B. Owen, "Scrambled net variance for integrals of smooth functions", Ann. Statist. 25(4), 1997.
    """
    variances, costs = np.asarray(variances, dtype=np.float64), np.asarray(costs, dtype=np.float64)
    if variances.shape != costs.shape or variances.ndim != 1:
        raise ValueError(f"variances and costs must be (L,) arrays, got {variances.shape} and {costs.shape}")
    if not (np.isfinite(variances).all() and (variances >= 0).all() and (costs > 0).all()):
        raise ValueError(f"variances must be finite and >= 0 and costs > 0, got {variances} and {costs}")
    if not budget > 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    rates = np.ones_like(costs) if rates is None else np.asarray(rates, dtype=np.float64)
    if rates.shape != costs.shape or not (np.isfinite(rates).all() and (rates > 0).all()):
        raise ValueError(f"rates must be an (L,) array of finite values > 0, got {rates}")
    total = np.sqrt(variances * costs).sum()
    if total == 0:
        return budget * np.full(len(costs), 1.0 / costs.sum())
    if (rates == 1).all():
        return budget * np.sqrt(variances / costs) / total
    active = variances > 0

    def counts(log_lambda: float) -> np.ndarray:
        n = np.zeros_like(costs)
        a = rates[active]
        n[active] = np.exp((np.log(a * variances[active] / costs[active]) - log_lambda) / (1 + a))
        return n

    low, high = -400.0, 400.0
    with np.errstate(over="ignore"):
        for _ in range(100):
            middle = (low + high) / 2
            low, high = (middle, high) if (counts(middle) * costs).sum() > budget else (low, middle)
    n = counts(high)
    return n * budget / (n * costs).sum()
