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
at the same N, the paper's measure ``(width_MC / width_D)^2`` is reported too.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

SUMMARY_FIELDS = (
    "estimate",
    "std_error",
    "ci_lower",
    "ci_upper",
    "ci_width",
    "variance_per_eval",
    "relative_efficiency",
    "relative_efficiency_vs_mc",
)
"""Labels of the ``summary`` coordinate of a result, in order."""


def check_confidence(confidence: float) -> float:
    """Return ``confidence`` if it lies in (0, 1), else raise ``ValueError``."""
    if not isinstance(confidence, (int, float, np.floating)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    return float(confidence)


def group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Means ``(G, *own_shape)`` of ``values`` ``(N, *own_shape)`` over equally sized groups."""
    labels, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(values) != len(groups):
        raise ValueError(f"{len(values)} values but {len(groups)} group ids")
    if counts.min() != counts.max():
        raise ValueError(f"groups must be equally sized, got sizes {counts.min()} to {counts.max()}")
    order = np.argsort(inverse, kind="stable")
    return values[order].reshape(len(labels), counts[0], *values.shape[1:]).mean(axis=1)


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
        ``{field: array (*own_shape)}`` for every field of :data:`SUMMARY_FIELDS`;
        ``relative_efficiency_vs_mc`` is NaN here (see :func:`relative_efficiency_vs_mc`).
    """
    confidence = check_confidence(confidence)
    values = np.asarray(values, dtype=np.float64)
    g = group_means(values, np.asarray(groups))
    n_groups, n_evals = len(g), len(values)
    if n_groups < 2:
        raise ValueError(f"at least 2 groups are needed for a standard error, got {n_groups}")
    estimate = g.mean(axis=0)
    std_error = g.std(axis=0, ddof=1) / np.sqrt(n_groups)
    half = stats.t.ppf(0.5 + confidence / 2, n_groups - 1) * std_error
    variance = ((values - values.mean(axis=0)) ** 2).mean(axis=0) + std_error**2
    with np.errstate(divide="ignore", invalid="ignore"):
        efficiency = variance / (n_evals * std_error**2)
    return {
        "estimate": estimate,
        "std_error": std_error,
        "ci_lower": estimate - half,
        "ci_upper": estimate + half,
        "ci_width": 2 * half,
        "variance_per_eval": variance,
        "relative_efficiency": efficiency,
        "relative_efficiency_vs_mc": np.full_like(estimate, np.nan),
    }


def relative_efficiency_vs_mc(width_mc: np.ndarray, width: np.ndarray) -> np.ndarray:
    """The paper's measure at equal evaluations: ``(width_MC / width_D)^2``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.asarray(width_mc) / np.asarray(width)) ** 2
