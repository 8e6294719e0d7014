"""Targets beyond the mean: exceedance probabilities, quantiles, spread and functions of means.

A target turns one statistic's per-evaluation values ``(N, *own_shape)`` and the design's
group ids ``(N,)`` into one estimand with an interval. Every target here works under every
design because it is built from the design's independent, identically distributed group
means (:mod:`mcdiff.estimators`), and each returns the fields of :data:`TARGET_FIELDS`:

- :func:`mean`: ``E f``, with the t-interval or a finite-sample interval for bounded
  values (:mod:`mcdiff.intervals`);
- :func:`exceedance`: ``P(f > c)`` or ``P(f < c)``, the mean of an indicator;
- :func:`quantiles`: ``q_p``, by inverting the pooled empirical CDF of all draws, with
  the interval from the CDF estimate's variability over the groups;
- :func:`spread`: ``Var f`` and ``sd f`` over generated images;
- :func:`function_of_means`, :func:`ratio`, :func:`correlation`: smooth functions of
  several means by the delta method, the gradient by autograd.

Relative efficiency reads as the mean's: how many times fewer evaluations the design needs
than plain MC for the same standard error of the quantity the interval is built on (the
indicator's mean for exceedances and quantiles, ``(x - mean)^2`` for the variance, the
linearised function for functions of means). ``relative_efficiency_corrected`` removes the
``nu / (nu - 2)`` bias of the raw figure (:func:`~mcdiff.estimators.corrected_relative_efficiency`).
Where the group means are all equal (``std_error = 0``: an indicator that every group
splits the same way, frequent under RQMC) the efficiency is NaN and a ``RuntimeWarning``
names the target; the t-interval then has width 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from mcdiff.estimators import corrected_relative_efficiency, summarize, t_interval, variance_interval
from mcdiff.functionals import check_levels
from mcdiff.intervals import betting_interval, bernstein_interval, check_bounds
from mcdiff.validation import check_confidence

TARGET_FIELDS = (
    "estimate",
    "std_error",
    "ci_lower",
    "ci_upper",
    "ci_width",
    "relative_efficiency",
    "relative_efficiency_corrected",
)
"""Fields every target returns, each an array of the target's shape."""

INTERVALS = ("t", "bernstein", "betting")
"""Intervals of :func:`mean` and :func:`exceedance`: the t-interval (default), and the
finite-sample empirical Bernstein and hedged betting intervals for bounded values."""

QUANTILE_METHODS = ("pooled", "order")
"""Intervals of :func:`quantiles`: CDF inversion over groups (any design), or the
distribution-free order-statistic interval (independent draws only)."""


def _design_shape(groups: np.ndarray, n_evals: int) -> tuple[int, int]:
    """``(G, m)``: the number of groups and their size."""
    n_groups = len(np.unique(groups))
    return n_groups, n_evals // n_groups


def _finish(fields: dict, groups: np.ndarray, n_evals: int, target: str) -> dict[str, np.ndarray]:
    """Fill in ``ci_width``, the corrected efficiency, NaN efficiency where ``std_error = 0``, and warn there."""
    n_groups, size = _design_shape(groups, n_evals)
    fields["ci_width"] = fields["ci_upper"] - fields["ci_lower"]
    flat = np.asarray(fields["std_error"]) == 0
    efficiency = np.where(flat, np.nan, fields["relative_efficiency"])
    if flat.any():
        warnings.warn(
            f"{target}: the group means are all equal at {int(flat.sum())} of {flat.size} components "
            f"(std_error 0 over {n_groups} groups): relative_efficiency is NaN there and a t-interval "
            "built on that standard error has width 0; use a bounded interval (interval='bernstein' or 'betting') or more groups",
            RuntimeWarning,
            stacklevel=3,
        )
    fields["relative_efficiency"] = efficiency
    fields["relative_efficiency_corrected"] = corrected_relative_efficiency(efficiency, n_groups, size)
    return {key: np.asarray(fields[key], dtype=np.float64) for key in TARGET_FIELDS}


def mean(
    values: np.ndarray,
    groups: np.ndarray,
    confidence: float = 0.95,
    interval: str = "t",
    bounds=None,
    name: str = "statistic",
    target: str | None = None,
) -> dict[str, np.ndarray]:
    """The mean ``E f`` with the interval of choice.

    ``estimate``, ``std_error`` and ``relative_efficiency`` are :func:`~mcdiff.estimators.summarize`'s.
    ``interval="t"`` is its t-interval (clipped to ``bounds`` when given); ``"bernstein"`` and
    ``"betting"`` are :func:`~mcdiff.intervals.bernstein_interval` and
    :func:`~mcdiff.intervals.betting_interval` over the group means, valid at any number of
    groups, and need ``bounds``.

    Parameters
    ----------
    values : array (N, *own_shape)
    groups : array (N,)
        Group id of each evaluation (at least 2 groups, equally sized).
    confidence : float
        Level of the two-sided interval, in (0, 1).
    interval : {"t", "bernstein", "betting"}
    bounds : (lo, hi), optional
        The statistic's declared range; values outside it raise ``ValueError``.
    name : str
        The statistic's name, for messages.
    target : str, optional
        How messages name the target (``"mean of {name!r}"`` by default).

    Returns
    -------
    dict
        ``{field: array (*own_shape)}`` for every field of :data:`TARGET_FIELDS`.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    values, groups = np.asarray(values, dtype=np.float64), np.asarray(groups)
    if bounds is not None or interval != "t":
        lo, hi = check_bounds(name, values, bounds)
    summary = summarize(values, groups, confidence)
    fields = {key: summary[key] for key in ("estimate", "std_error", "ci_lower", "ci_upper", "relative_efficiency")}
    if interval == "t" and bounds is not None:
        fields["ci_lower"], fields["ci_upper"] = np.clip(fields["ci_lower"], lo, hi), np.clip(fields["ci_upper"], lo, hi)
    elif interval != "t":
        bounded = (bernstein_interval if interval == "bernstein" else betting_interval)(
            values, groups, (lo, hi), confidence, name=name
        )
        fields["ci_lower"], fields["ci_upper"] = bounded["ci_lower"], bounded["ci_upper"]
    return _finish(fields, groups, len(values), target or f"mean of {name!r}")


def exceedance(
    values: np.ndarray,
    groups: np.ndarray,
    threshold,
    above: bool = True,
    confidence: float = 0.95,
    interval: str = "t",
    name: str = "statistic",
) -> dict[str, np.ndarray]:
    """The exceedance probability ``P(f > c)`` (``above``) or ``P(f < c)``: the mean of an indicator.

    The indicator ``1{f_i > c}`` lies in [0, 1], so every interval of :data:`INTERVALS`
    applies; the t-interval is clipped to [0, 1]. For a rare event (``p ~ 0.01``) or few
    groups the t-interval covers less than its level (it is 0 wide when no group sees the
    event); ``"betting"`` holds at any ``G`` and is the narrowest of the two bounded ones.

    Parameters
    ----------
    values : array (N, *own_shape)
    groups : array (N,)
    threshold : float or array broadcastable to ``own_shape``
        ``c``, one per component (or one for all).
    above : bool
        ``P(f > c)`` if true, else ``P(f < c)``.
    confidence, interval, name
        As for :func:`mean`.

    Returns
    -------
    dict
        ``{field: array (*own_shape)}`` for every field of :data:`TARGET_FIELDS`.
    """
    values = np.asarray(values, dtype=np.float64)
    threshold = np.asarray(threshold, dtype=np.float64)
    if not np.isfinite(threshold).all():
        raise ValueError(f"the threshold of an exceedance of {name!r} must be finite, got {threshold!r}")
    indicator = (values > threshold) if above else (values < threshold)
    label = f"P({name} {'>' if above else '<'} {f'{float(threshold):g}' if threshold.ndim == 0 else 'c'})"
    return mean(indicator.astype(np.float64), groups, confidence, interval, (0.0, 1.0), name=label,
                target=f"exceedance {label}")


def _inverse_cdf(ordered: np.ndarray, u: np.ndarray, strict: bool) -> np.ndarray:
    """The pooled empirical CDF's inverse at ``u`` ``(L, *own_shape)`` from sorted values ``(N, *own_shape)``.

    ``inf {x : F(x) >= u} = x_(ceil(N u))`` (``strict``: ``inf {x : F(x) > u} = x_(floor(N u) + 1)``),
    ``-inf`` where that rank is below 1 and ``+inf`` above ``N``. ``N u`` is rounded to 9
    decimals first, so that ``N p`` for a decimal ``p`` is not nudged across an integer.
    """
    n = len(ordered)
    scaled = np.round(n * u, 9)
    rank = (np.floor(scaled) + 1 if strict else np.ceil(scaled)).astype(np.int64)
    index = np.clip(rank - 1, 0, n - 1)
    taken = np.take_along_axis(ordered[None], index[:, None], axis=1)[:, 0]
    return np.where(rank < 1, -np.inf, np.where(rank > n, np.inf, taken))


def quantiles(
    values: np.ndarray,
    groups: np.ndarray,
    levels,
    confidence: float = 0.95,
    method: str = "pooled",
    name: str = "statistic",
) -> dict[str, np.ndarray]:
    """Quantiles ``q_p`` of a statistic at several levels, from the design's pooled draws.

    All ``N`` draws form one empirical CDF ``F(x) = (1/N) sum_i 1{x_i <= x}``, which is
    unbiased at every ``x`` under every design (each draw has the model's marginal law), and::

        q_p   = inf {x : F(x) >= p} = x_(ceil(N p))       (numpy's "inverted_cdf")

    Averaging per-group quantiles instead is biased (Kaplan et al. 2019). The interval inverts
    a t-test of the CDF: ``s_F`` is the group-level standard error of ``F(q_p)``, from the
    group means of ``1{x_i <= q_p}``, and with ``h = t_{G-1, (1+c)/2} s_F``::

        CI = [inf {x : F(x) >= p - h},  inf {x : F(x) > p + h}]

    the closure of ``{q : |F(q) - p| <= h}`` (the strict inequality on the right keeps the
    next order statistic: ``F`` is a step function, and under antithetic pairs of a
    symmetric statistic ``F(q_0.5)`` has no variance at all, ``s_F = 0``, while ``x_(N/2)``
    misses the median). An end beyond the data is ``-inf`` or ``inf``. ``std_error`` is the
    half-width over ``t``, the standard error the interval implies; ``relative_efficiency``
    is that of the CDF at ``q_p``, :func:`~mcdiff.estimators.summarize`'s of the indicator,
    ``(F (1 - F) + s_F^2) / (N s_F^2) ~ p (1 - p) / (N s_F^2)`` (exactly 1 for MC).

    ``method="order"`` (plain MC only: independent draws, groups of one) replaces the
    interval by the distribution-free one of the order statistics, ``[x_(k), x_(l)]`` with
    ``k`` the largest and ``l`` the smallest rank such that ``P(B < k) <= a/2`` and
    ``P(B >= l) <= a/2`` for ``B ~ Binomial(N, p)`` (scipy's ``quantile_test`` interval).

    Parameters
    ----------
    values : array (N, *own_shape)
    groups : array (N,)
    levels : float or sequence of float
        Levels ``p`` in (0, 1).
    confidence : float
    method : {"pooled", "order"}
    name : str

    Returns
    -------
    dict
        ``{field: array (L, *own_shape)}`` for every field of :data:`TARGET_FIELDS`.

    References
    ----------
    P. Kaplan, D. Li, M. K. Nakayama and B. Tuffin, "Randomized quasi-Monte Carlo for quantile
    estimation", Winter Simulation Conference 2019.
    A. N. Avramidis and J. R. Wilson, "Correlation-induction techniques for estimating
    quantiles in simulation experiments", Oper. Res. 46(4), 1998.
    """
    confidence = check_confidence(confidence)
    if method not in QUANTILE_METHODS:
        raise ValueError(f"method must be one of {QUANTILE_METHODS}, got {method!r}")
    levels = check_levels(levels)
    values, groups = np.asarray(values, dtype=np.float64), np.asarray(groups)
    n_groups, size = _design_shape(groups, len(values))
    if method == "order" and size != 1:
        raise ValueError(
            f"the order-statistic interval needs independent draws (groups of one, plain MC); "
            f"these {len(values)} evaluations fall into {n_groups} groups of {size}: use method='pooled'"
        )
    ordered = np.sort(values, axis=0)
    shape = (len(levels),) + (1,) * (values.ndim - 1)
    p = np.broadcast_to(levels.reshape(shape), (len(levels), *values.shape[1:]))
    estimate = _inverse_cdf(ordered, p, strict=False)
    indicator = values[:, None] <= estimate[None]  # (N, L, *own_shape)
    cdf = summarize(indicator.astype(np.float64), groups, confidence)
    band = t_interval(p, cdf["std_error"], n_groups - 1, confidence)
    if method == "pooled":
        lower = _inverse_cdf(ordered, band["ci_lower"], strict=False)
        upper = _inverse_cdf(ordered, band["ci_upper"], strict=True)
    else:
        n, alpha = len(values), 1 - confidence
        cdf_b = stats.binom.cdf(np.arange(-1, n + 1)[:, None], n, levels[None])  # P(B <= j), j = -1 .. N
        low_rank = (cdf_b <= alpha / 2).sum(axis=0) - 1  # largest k with P(B <= k - 1) <= a/2
        high_rank = (cdf_b < 1 - alpha / 2).sum(axis=0)  # smallest l with P(B <= l - 1) >= 1 - a/2
        low_rank, high_rank = low_rank.reshape(shape), high_rank.reshape(shape)
        lower = np.where(low_rank >= 1, ordered[np.clip(low_rank.ravel() - 1, 0, n - 1)], -np.inf)
        upper = np.where(high_rank <= n, ordered[np.clip(high_rank.ravel() - 1, 0, n - 1)], np.inf)
    t = stats.t.ppf(0.5 + confidence / 2, n_groups - 1)
    fields = {
        "estimate": estimate,
        "std_error": np.where(cdf["std_error"] > 0, (upper - lower) / (2 * t), 0.0),
        "ci_lower": lower,
        "ci_upper": upper,
        "relative_efficiency": cdf["relative_efficiency"],
    }
    return _finish(fields, groups, len(values), f"quantiles of {name!r}")


def spread(values: np.ndarray, groups: np.ndarray, confidence: float = 0.95) -> dict[str, dict[str, np.ndarray]]:
    """Variance and standard deviation of a statistic over generated images.

    The variance is :func:`~mcdiff.estimators.variance_interval` (``summarize``'s
    ``variance_per_eval``, a delta-method t-interval from the group means of
    ``h_i = (x_i - xbar)^2``); its efficiency is that of the mean of ``h``. The standard
    deviation ``sigma = sqrt(sigma^2)`` has ``std_error = SE(sigma^2) / (2 sigma)`` (delta
    method) and the interval ``[sqrt(max(lower, 0)), sqrt(upper)]``: the square roots of the
    variance's bounds, which cover exactly when those do (a monotone map), unlike
    ``sigma ± t SE``. Both are asymptotic (``h`` is skewed: a few dozen groups cover a
    little less than the level).

    Returns
    -------
    dict
        ``{"variance": fields, "std": fields}``, each ``{field: array (*own_shape)}`` for
        every field of :data:`TARGET_FIELDS`.
    """
    values, groups = np.asarray(values, dtype=np.float64), np.asarray(groups)
    variance = variance_interval(values, groups, confidence)
    efficiency = summarize((values - values.mean(axis=0)) ** 2, groups, confidence)["relative_efficiency"]
    var_fields = {**{key: variance[key] for key in ("estimate", "std_error", "ci_lower", "ci_upper")},
                  "relative_efficiency": efficiency}
    sigma = np.sqrt(variance["estimate"])
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma_se = np.where(sigma > 0, variance["std_error"] / (2 * sigma), variance["std_error"] * 0)
    std_fields = {
        "estimate": sigma,
        "std_error": sigma_se,
        "ci_lower": np.sqrt(np.maximum(variance["ci_lower"], 0)),
        "ci_upper": np.sqrt(np.maximum(variance["ci_upper"], 0)),
        "relative_efficiency": efficiency,
    }
    return {
        "variance": _finish(var_fields, groups, len(values), "variance"),
        "std": _finish(std_fields, groups, len(values), "standard deviation"),
    }


def function_of_means(
    values_by_stat: Mapping[str, np.ndarray],
    groups: np.ndarray,
    fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    confidence: float = 0.95,
    name: str = "function of means",
) -> dict[str, np.ndarray]:
    """A smooth function ``phi(mu_1 .. mu_K)`` of several statistics' means, by the delta method.

    With pooled means ``mubar`` (the mean of the group means), the gradient
    ``grad = nabla phi(mubar)`` by torch autograd and ``Sigma`` the covariance of the group
    means across statistics::

        estimate  = phi(mubar)
        std_error = sqrt(grad^T Sigma grad / G)
        CI        = estimate ± t_{G-1, (1+c)/2} · std_error

    computed as :func:`~mcdiff.estimators.summarize` of the linearised values
    ``h_i = grad · x_i`` (its group means are ``grad · g_k``), which also gives the relative
    efficiency. The plug-in estimate has an ``O(1/N)`` bias (``phi`` is not linear); the
    interval is asymptotic.

    Parameters
    ----------
    values_by_stat : mapping str -> array (N,)
        Per-evaluation values of each scalar statistic, on the same evaluations.
    groups : array (N,)
    fn : callable
        ``fn({name: 0-d float64 tensor}) -> 0-d tensor``, differentiable by autograd.
    confidence : float
    name : str
        The function's name, for messages.

    Returns
    -------
    dict
        ``{field: 0-d array}`` for every field of :data:`TARGET_FIELDS`.
    """
    if not values_by_stat:
        raise ValueError(f"{name}: at least one statistic is needed")
    names = list(values_by_stat)
    columns = [np.asarray(values_by_stat[k], dtype=np.float64) for k in names]
    if any(c.ndim != 1 or len(c) != len(columns[0]) for c in columns):
        shapes = {k: np.shape(values_by_stat[k]) for k in names}
        raise ValueError(f"{name}: every statistic needs values (N,) on the same N evaluations, got {shapes}")
    x = np.stack(columns, axis=1)  # (N, K)
    groups = np.asarray(groups)
    point = torch.tensor(x.mean(axis=0), dtype=torch.float64, requires_grad=True)
    value = fn({k: point[i] for i, k in enumerate(names)})
    if not torch.is_tensor(value) or value.numel() != 1:
        raise ValueError(f"{name}: fn must return a scalar tensor, got {value!r}")
    (gradient,) = torch.autograd.grad(value.reshape(()), point, allow_unused=True)
    gradient = np.zeros(len(names)) if gradient is None else gradient.detach().numpy()
    estimate = float(value.detach())
    if not (np.isfinite(estimate) and np.isfinite(gradient).all()):
        at = ", ".join(f"{k}={v:.6g}" for k, v in zip(names, x.mean(axis=0)))
        raise ValueError(
            f"{name} is not finite at the estimated means ({at}): value {estimate}, gradient {gradient.tolist()}"
        )
    linear = summarize(x @ gradient, groups, confidence)
    n_groups, _ = _design_shape(groups, len(x))
    fields = {
        "estimate": estimate,
        "std_error": linear["std_error"],
        **t_interval(estimate, linear["std_error"], n_groups - 1, confidence),
        "relative_efficiency": linear["relative_efficiency"],
    }
    return _finish(fields, groups, len(x), name)


def ratio(
    numerator: np.ndarray, denominator: np.ndarray, groups: np.ndarray, confidence: float = 0.95
) -> dict[str, np.ndarray]:
    """``E[a] / E[b]`` of two scalar statistics by the delta method (:func:`function_of_means`)."""
    return function_of_means(
        {"numerator": numerator, "denominator": denominator}, groups,
        lambda m: m["numerator"] / m["denominator"], confidence, name="ratio of means",
    )


def correlation(x: np.ndarray, y: np.ndarray, groups: np.ndarray, confidence: float = 0.95) -> dict[str, np.ndarray]:
    """Correlation of two scalar statistics over generated images, by the delta method.

    A function of five means::

        rho = (E[xy] - E[x] E[y]) / sqrt((E[x^2] - E[x]^2) (E[y^2] - E[y]^2))

    (:func:`function_of_means`); the estimate is the pooled sample correlation. The interval
    is not clipped to [-1, 1].
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def rho(m: dict[str, torch.Tensor]) -> torch.Tensor:
        cov = m["xy"] - m["x"] * m["y"]
        return cov / torch.sqrt((m["xx"] - m["x"] ** 2) * (m["yy"] - m["y"] ** 2))

    return function_of_means(
        {"x": x, "y": y, "xx": x * x, "yy": y * y, "xy": x * y}, groups, rho, confidence, name="correlation"
    )


# ---- target specifications: what a run estimates beyond the means (mcdiff.estimate(targets=...))


@dataclass(frozen=True)
class Target:
    """A target of a run: ``kind`` of the ``statistics`` (by name), computed per design after the run.

    Use the constructors :func:`Quantiles`, :func:`Exceedance`, :func:`Spread`, :func:`Mean`,
    :func:`Ratio`, :func:`Correlation` and :func:`FunctionOfMeans`. A target reads one scalar
    per evaluation of each statistic: a multi-component statistic needs ``component`` (its
    flattened index). The runner keeps those statistics' values in memory for it, checks
    the target before the first evaluation (:meth:`check`) and stores the result under
    ``/targets/{name}`` (:meth:`compute`).
    """

    kind: str
    statistics: tuple[str, ...]
    name: str
    options: tuple = ()
    component: int | None = None

    def option(self, key: str, default=None):
        return dict(self.options).get(key, default)

    def check(self, sizes: Mapping[str, int]) -> None:
        """``ValueError`` before any evaluation: an unknown statistic, or a component missing or out of range.

        ``sizes`` gives each statistic of the run its number of values per evaluation.
        """
        for stat in self.statistics:
            if stat not in sizes:
                raise ValueError(f"target {self.name!r} needs statistic {stat!r}, which the run does not compute: add it")
            if self.component is None and sizes[stat] > 1:
                raise ValueError(
                    f"target {self.name!r}: statistic {stat!r} has {sizes[stat]} components; name one with "
                    f"component=INDEX (flattened, 0 .. {sizes[stat] - 1})"
                )
            if self.component is not None and not 0 <= self.component < sizes[stat]:
                raise ValueError(f"target {self.name!r}: component {self.component} is not in 0 .. {sizes[stat] - 1}")

    @property
    def levels(self) -> tuple | None:
        """The target's own coordinate (quantile levels, ``("variance", "std")``), or ``None``."""
        return self.option("levels")

    def compute(self, values: Mapping[str, np.ndarray], groups: np.ndarray, confidence: float) -> dict[str, np.ndarray]:
        """``{field: array}`` of :data:`TARGET_FIELDS` (with a leading axis along :attr:`levels` where it has one)."""
        picked = {
            s: np.asarray(values[s], dtype=np.float64).reshape(len(values[s]), -1)[:, self.component or 0]
            for s in self.statistics
        }
        first = picked[self.statistics[0]]
        if self.kind == "quantiles":
            return quantiles(first, groups, self.levels, confidence, self.option("method"), name=self.statistics[0])
        if self.kind == "exceedance":
            return exceedance(first, groups, self.option("threshold"), self.option("above"), confidence,
                              self.option("interval"), name=self.statistics[0])
        if self.kind == "spread":
            both = spread(first, groups, confidence)
            return {f: np.stack([both[k][f] for k in self.levels]) for f in TARGET_FIELDS}
        if self.kind == "mean":
            return mean(first, groups, confidence, self.option("interval"), self.option("bounds"), name=self.statistics[0])
        if self.kind == "ratio":
            return ratio(*picked.values(), groups, confidence)
        if self.kind == "correlation":
            return correlation(*picked.values(), groups, confidence)
        return function_of_means(picked, groups, self.option("fn"), confidence, name=self.name)


def _label(number: float) -> str:
    return f"{number:g}"


def _of(statistic: str, component: int | None) -> str:
    """``"brightness"`` or ``"inpainting_error_1"``: how a target's name refers to its statistic (and component)."""
    return statistic if component is None else f"{statistic}_{component}"


def Quantiles(statistic: str, levels, method: str = "pooled", component: int | None = None) -> Target:  # noqa: N802
    """Quantiles ``q_p`` of ``statistic`` at ``levels`` (:func:`quantiles`); ``/targets/{statistic}_quantiles``."""
    levels = tuple(float(p) for p in check_levels(levels))
    if method not in QUANTILE_METHODS:
        raise ValueError(f"quantile method must be one of {QUANTILE_METHODS}, got {method!r}")
    return Target("quantiles", (statistic,), f"{_of(statistic, component)}_quantiles", (("levels", levels), ("method", method)), component)


def Exceedance(  # noqa: N802
    statistic: str, threshold: float, above: bool = True, interval: str = "t", component: int | None = None
) -> Target:
    """``P(f > c)`` (``above``) or ``P(f < c)`` (:func:`exceedance`); ``/targets/P_{statistic}_gt_{c}``."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    if not np.isfinite(threshold):
        raise ValueError(f"an exceedance threshold must be a finite number, got {threshold!r}")
    name = f"P_{_of(statistic, component)}_{'gt' if above else 'lt'}_{_label(threshold)}"
    options = (("threshold", float(threshold)), ("above", bool(above)), ("interval", interval))
    return Target("exceedance", (statistic,), name, options, component)


def Spread(statistic: str, component: int | None = None) -> Target:  # noqa: N802
    """Variance and standard deviation of ``statistic`` over generated images (:func:`spread`)."""
    return Target("spread", (statistic,), f"{_of(statistic, component)}_spread", (("levels", ("variance", "std")),), component)


def Mean(statistic: str, interval: str = "t", bounds=None, component: int | None = None) -> Target:  # noqa: N802
    """The mean with a chosen interval (:func:`mean`; ``"bernstein"`` or ``"betting"`` need ``bounds``)."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    if interval != "t" and bounds is None:
        raise ValueError(
            f"the {interval} interval holds for bounded values only: give bounds=(lo, hi) for statistic {statistic!r}"
        )
    bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
    return Target("mean", (statistic,), f"{_of(statistic, component)}_mean_{interval}", (("interval", interval), ("bounds", bounds)), component)


def Ratio(numerator: str, denominator: str) -> Target:  # noqa: N802
    """``E[numerator] / E[denominator]`` of two scalar statistics (:func:`ratio`)."""
    return Target("ratio", (numerator, denominator), f"{numerator}_per_{denominator}")


def Correlation(x: str, y: str) -> Target:  # noqa: N802
    """The correlation of two scalar statistics over generated images (:func:`correlation`)."""
    return Target("correlation", (x, y), f"correlation_{x}_{y}")


def FunctionOfMeans(name: str, statistics, fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> Target:  # noqa: N802
    """``fn({statistic: mean})`` of scalar statistics' means, by the delta method (:func:`function_of_means`)."""
    return Target("function", tuple(statistics), name, (("fn", fn),))


def parse_exceedance(text: str, interval: str = "t") -> Target:
    """An :func:`Exceedance` from the CLI's ``"brightness>0.35"`` or ``"inpainting_error[0]<0.01"``."""
    import re

    match = re.fullmatch(r"\s*([A-Za-z_][\w]*)(?:\[(\d+)\])?\s*([<>])\s*([-+0-9.eE]+)\s*", text)
    if not match:
        raise ValueError(f"an exceedance is STATISTIC>VALUE or STATISTIC[COMPONENT]<VALUE, got {text!r}")
    statistic, component, sign, value = match.groups()
    return Exceedance(statistic, float(value), sign == ">", interval, None if component is None else int(component))
