"""Finite-sample and anytime-valid intervals for the mean of a bounded statistic.

Every design's group means ``g_1 .. g_G`` (an evaluation, a pair, a replicate; see
:mod:`mcdiff.estimators`) are independent and identically distributed, and the group means
of a statistic bounded in ``[lo, hi]`` are bounded in ``[lo, hi]`` too. The intervals here
hold for any ``G >= 1`` and any such distribution, without the central limit theorem that
the t-interval rests on: at a few dozen groups, for a rare event, for skewed values. They
run on ``y_i = (g_i - lo) / (hi - lo)`` in [0, 1], in address order (group id order), and
map back.

**Predictable plug-in empirical Bernstein** (PrPl-EB; Waudby-Smith & Ramdas 2024, Thm. 2)::

    mu_i      = (1/2 + sum_{j<=i} y_j) / (i + 1)                  (mu_0 = 1/2)
    s2_i      = (1/4 + sum_{j<=i} (y_j - mu_j)^2) / (i + 1)        (s2_0 = 1/4)
    lambda_i  = min(sqrt(2 log(2/a) / (s2_{i-1} i log(1 + i))), c)  sequence
              = min(sqrt(2 log(2/a) / (s2_{i-1} n)), c)             interval at n
    psi(l)    = -log(1 - l) - l,   v_i = (y_i - mu_{i-1})^2
    C_t       = sum lambda_i y_i / sum lambda_i  ±  (log(2/a) + sum v_i psi(lambda_i)) / sum lambda_i

**Hedged betting** (Waudby-Smith & Ramdas 2024, Thm. 3 and sec. 5.1): for each candidate
mean ``m`` in [0, 1] two gamblers bet for and against it with predictable bets::

    K+_t(m) = prod_{i<=t} (1 + min(ldot_i, c/m) (y_i - m))
    K-_t(m) = prod_{i<=t} (1 - min(ldot_i, c/(1-m)) (y_i - m))
    ldot_i  = the untruncated lambda_i above
    C_t     = {m : max(K+_t(m), K-_t(m)) / 2 < 1/a}

``K+ + K-`` over 2 is a non-negative martingale with mean 1 at the true mean, so by Ville's
inequality ``P(exists t: true mean not in C_t) <= a``. Each factor of ``K+`` is positive and
non-increasing in ``m`` (and of ``K-`` non-decreasing), so ``C_t = [L_t, U_t]`` with
``L_t = inf {m : K+_t(m) < 2/a}`` found by bisection (40 halvings of [0, 1], the bound kept
on its outer side) and ``U_t`` the same on ``1 - y``. Betting intervals are narrower than
Bernstein's in the paper's experiments and in the tests here, by about half on low-variance
data. Both pay for validity at small ``G``: Bernstein's half-width is at least
``log(2/a) / (G c)`` (in units of ``hi - lo``, as ``lambda_i <= c``), several times the
t-interval's when the values barely vary.

**Confidence sequences** (:func:`bernstein_sequence`, :func:`betting_sequence`): the bounds
after each group with the ``t log(1 + t)`` bets, intersected over time (``max`` of lower
bounds, ``min`` of upper bounds), so ``P(true mean in C_t for every t) >= 1 - a``: a run may
stop at any data-dependent time (e.g. when the width falls below a target at a round end)
and keep its coverage. The *intervals* (:func:`bernstein_interval`, :func:`betting_interval`)
tune the bets to the sample size at hand and report ``C_n`` alone; they are valid at that
fixed ``n`` only.

The bounds depend on the order of the group means (the bets are predictable), which here
is address order: the same run gives the same interval.

References
----------
I. Waudby-Smith and A. Ramdas, "Estimating means of bounded random variables by betting",
J. R. Stat. Soc. B 86(1), 2024 (arXiv:2010.09686).
A. Maurer and M. Pontil, "Empirical Bernstein bounds and sample variance penalization",
COLT 2009.
A. Jain, F. J. Hickernell, A. B. Owen and A. G. Sorokin, "Empirical Bernstein and betting
confidence intervals for randomized quasi-Monte Carlo", 2025 (arXiv:2504.18677).
"""

from __future__ import annotations

import numpy as np

from mcdiff.estimators import group_means
from mcdiff.validation import check_confidence, is_integer

INTERVAL_FIELDS = ("estimate", "ci_lower", "ci_upper", "ci_width")
"""Fields of :func:`bernstein_interval` and :func:`betting_interval`."""

TRUNCATION = 0.5
"""Default truncation ``c`` of the bets (the paper's 1/2; any value in (0, 1) is valid)."""

BISECTION_STEPS = 40
"""Halvings of [0, 1] that locate each betting bound: to ``2^-40 (hi - lo)``."""

_CHUNK = 1 << 22  # elements of one (times, groups, components) pass of the betting bisection


def check_bounds(name: str, values: np.ndarray, bounds) -> tuple[float, float]:
    """Return ``(lo, hi)`` as floats if ``values`` lie in them, else raise ``ValueError``.

    ``bounds`` are the declared range of statistic ``name``: a pair of finite numbers with
    ``lo < hi``. The message names the statistic and the first value outside them.
    """
    if bounds is None:
        raise ValueError(
            f"a bounded interval for statistic {name!r} needs its declared bounds (lo, hi); "
            "none were given (use interval='t', or declare bounds, e.g. (0, 1) for images in [0, 1])"
        )
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds of statistic {name!r} must be a pair (lo, hi) of numbers, got {bounds!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds of statistic {name!r} must be finite with lo < hi, got {bounds!r}")
    values = np.asarray(values, dtype=np.float64)
    outside = ~((values >= lo) & (values <= hi))  # NaN is outside
    if outside.any():
        index = np.unravel_index(np.flatnonzero(outside)[0], values.shape)
        raise ValueError(
            f"statistic {name!r} has value {float(values[index])!r} at index {tuple(int(i) for i in index)} "
            f"outside its declared bounds [{lo:g}, {hi:g}]"
        )
    return lo, hi


def _scaled(means: np.ndarray, bounds, name: str) -> tuple[np.ndarray, float, float]:
    """Group means as ``(G, D)`` in [0, 1], and ``(lo, hi)``."""
    means = np.asarray(means, dtype=np.float64)
    if means.ndim == 0 or len(means) < 1:
        raise ValueError(f"at least one group mean is needed, got shape {means.shape}")
    lo, hi = check_bounds(name, means, bounds)
    return ((means - lo) / (hi - lo)).reshape(len(means), -1), lo, hi


def _check_truncation(truncation: float) -> float:
    if not isinstance(truncation, (int, float, np.floating)) or not 0 < truncation < 1:
        raise ValueError(f"truncation must be in (0, 1), e.g. 0.5; got {truncation!r}")
    return float(truncation)


def _times(times, n_groups: int) -> np.ndarray:
    """Group counts ``1 .. G`` at which a sequence is reported (all by default), increasing."""
    if times is None:
        return np.arange(1, n_groups + 1)
    times = np.atleast_1d(np.asarray(times))
    if (
        times.ndim != 1
        or not all(is_integer(t) for t in times.tolist())
        or (times < 1).any()
        or (times > n_groups).any()
        or (np.diff(times) <= 0).any()
    ):
        raise ValueError(f"times must be increasing group counts in [1, {n_groups}], got {times.tolist()}")
    return times.astype(np.int64)


def _plug_in(y: np.ndarray, log_term: float, fixed_n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Predictable means ``mu_{i-1}`` and untruncated bets ``ldot_i``, both ``(G, D)``.

    ``log_term`` is ``log(2/a)``; ``fixed_n`` tunes the bets to one sample size (an interval),
    ``None`` to every time (a sequence).
    """
    i = np.arange(1, len(y) + 1, dtype=np.float64)[:, None]
    mu = (0.5 + np.cumsum(y, axis=0)) / (i + 1)
    s2 = (0.25 + np.cumsum((y - mu) ** 2, axis=0)) / (i + 1)
    mu_prev = np.concatenate([np.full((1, y.shape[1]), 0.5), mu[:-1]])
    s2_prev = np.concatenate([np.full((1, y.shape[1]), 0.25), s2[:-1]])
    scale = i * np.log1p(i) if fixed_n is None else float(fixed_n)
    return mu_prev, np.sqrt(2 * log_term / (s2_prev * scale))


def _bernstein_bounds(y: np.ndarray, alpha: float, truncation: float, fixed_n: int | None):
    """PrPl-EB bounds ``(G, D)`` after each group, before any intersection, in [0, 1] units."""
    log_term = np.log(2 / alpha)
    mu_prev, ldot = _plug_in(y, log_term, fixed_n)
    lam = np.minimum(ldot, truncation)
    psi = -np.log1p(-lam) - lam
    total = np.cumsum(lam, axis=0)
    centre = np.cumsum(lam * y, axis=0) / total
    margin = (log_term + np.cumsum((y - mu_prev) ** 2 * psi, axis=0)) / total
    return centre - margin, centre + margin


def _betting_lower(y: np.ndarray, ldot: np.ndarray, times: np.ndarray, threshold: float, truncation: float):
    """``L_t = inf {m : K+_t(m) < threshold}`` ``(len(times), D)`` by bisection, on its outer side.

    ``log K+_t(m) = sum_{i<=t} log(1 + min(ldot_i, c/m) (y_i - m))`` is non-increasing in m and
    ``K+_t(1) <= 1``, so the set is ``(L_t, 1]`` (or ``[0, 1]`` when ``K+_t(0)`` is below).
    """
    n_groups, n_comp = y.shape
    out = np.empty((len(times), n_comp))
    chunk = max(1, _CHUNK // max(1, len(times) * n_groups))
    mask = (np.arange(1, n_groups + 1)[None, :] <= times[:, None])[..., None]  # (Q, G, 1)
    log_threshold = np.log(threshold)
    for start in range(0, n_comp, chunk):
        yc, lc = y[None, :, start : start + chunk], ldot[None, :, start : start + chunk]

        def rejected(m: np.ndarray) -> np.ndarray:  # m (Q, d): K+_t(m) >= threshold
            with np.errstate(divide="ignore"):
                bet = np.minimum(lc, truncation / m[:, None, :])
            log_capital = np.where(mask, np.log1p(bet * (yc - m[:, None, :])), 0.0).sum(axis=1)
            return log_capital >= log_threshold

        low = np.zeros((len(times), yc.shape[2]))
        high = np.ones_like(low)
        inside = ~rejected(low)  # already accepted at m = 0: L = 0
        for _ in range(BISECTION_STEPS):
            middle = (low + high) / 2
            reject = rejected(middle)
            low, high = np.where(reject, middle, low), np.where(reject, high, middle)
        out[:, start : start + chunk] = np.where(inside, 0.0, low)
    return out


def _betting_bounds(y: np.ndarray, alpha: float, truncation: float, fixed_n: int | None, times: np.ndarray):
    """Hedged-capital bounds ``(len(times), D)`` at ``times``, in [0, 1] units, not intersected."""
    _, ldot = _plug_in(y, np.log(2 / alpha), fixed_n)  # symmetric under y -> 1 - y
    threshold = 2 / alpha  # theta = 1/2: max(K+, K-) / 2 < 1/a
    lower = _betting_lower(y, ldot, times, threshold, truncation)
    upper = 1 - _betting_lower(1 - y, ldot, times, threshold, truncation)
    empty = lower > upper  # probability <= a; report the point where the two bounds cross
    middle = (lower + upper) / 2
    return np.where(empty, middle, lower), np.where(empty, middle, upper)


def _interval(values, groups, bounds, confidence, truncation, name, method) -> dict[str, np.ndarray]:
    confidence, truncation = check_confidence(confidence), _check_truncation(truncation)
    values = np.asarray(values, dtype=np.float64)
    check_bounds(name, values, bounds)
    means = group_means(values, np.asarray(groups))
    y, lo, hi = _scaled(means, bounds, name)
    n = len(y)
    if method == "bernstein":
        lower, upper = (b[-1:] for b in _bernstein_bounds(y, 1 - confidence, truncation, n))
    else:
        lower, upper = _betting_bounds(y, 1 - confidence, truncation, n, np.array([n]))
    shape = means.shape[1:]
    lower = lo + (hi - lo) * np.clip(lower[0], 0, 1).reshape(shape)
    upper = lo + (hi - lo) * np.clip(upper[0], 0, 1).reshape(shape)
    return {"estimate": means.mean(axis=0), "ci_lower": lower, "ci_upper": upper, "ci_width": upper - lower}


def bernstein_interval(
    values: np.ndarray, groups: np.ndarray, bounds, confidence: float = 0.95, truncation: float = TRUNCATION,
    name: str = "statistic",
) -> dict[str, np.ndarray]:
    """The predictable plug-in empirical Bernstein interval (PrPl-EB) over the group means.

    Valid at the given number of groups ``G >= 1`` for any distribution on ``bounds``: the
    bets ``min(sqrt(2 log(2/a) / (G s2_{i-1})), c)`` and ``C_G`` of the module's formula,
    ``a = 1 - confidence``, clipped to ``bounds``.

    Parameters
    ----------
    values : array (N, *own_shape)
        One row per evaluation, inside ``bounds``.
    groups : array (N,)
        Group id of each evaluation (equally sized groups).
    bounds : (lo, hi)
        The statistic's declared range.
    confidence : float
        Level of the two-sided interval, in (0, 1).
    truncation : float
        ``c`` in (0, 1), the largest bet.
    name : str
        The statistic's name, for messages.

    Returns
    -------
    dict
        ``{field: array (*own_shape)}`` for every field of :data:`INTERVAL_FIELDS`;
        ``estimate`` is the plain mean of the group means (the interval need not centre on it).
    """
    return _interval(values, groups, bounds, confidence, truncation, name, "bernstein")


def betting_interval(
    values: np.ndarray, groups: np.ndarray, bounds, confidence: float = 0.95, truncation: float = TRUNCATION,
    name: str = "statistic",
) -> dict[str, np.ndarray]:
    """The hedged-capital betting interval over the group means (Waudby-Smith & Ramdas, Thm. 3).

    Valid at the given number of groups for any distribution on ``bounds``; bets tuned to
    ``G`` (``ldot_i = sqrt(2 log(2/a) / (G s2_{i-1})``), bounds by bisection to
    ``2^-40 (hi - lo)`` on their outer side. Parameters and returns as :func:`bernstein_interval`.
    Cost ``O(40 G D)`` for ``D`` components.
    """
    return _interval(values, groups, bounds, confidence, truncation, name, "betting")


def _sequence(means, bounds, confidence, times, truncation, name, method) -> dict[str, np.ndarray]:
    confidence, truncation = check_confidence(confidence), _check_truncation(truncation)
    y, lo, hi = _scaled(means, bounds, name)
    times = _times(times, len(y))
    shape = np.shape(means)[1:]
    if method == "bernstein":
        lower, upper = _bernstein_bounds(y, 1 - confidence, truncation, None)
        lower, upper = np.maximum.accumulate(lower, axis=0)[times - 1], np.minimum.accumulate(upper, axis=0)[times - 1]
    else:
        lower, upper = _betting_bounds(y, 1 - confidence, truncation, None, times)
        lower, upper = np.maximum.accumulate(lower, axis=0), np.minimum.accumulate(upper, axis=0)
    crossed = lower > upper  # the intersection ran empty (probability <= a)
    lower, upper = np.where(crossed, (lower + upper) / 2, lower), np.where(crossed, (lower + upper) / 2, upper)
    lower = lo + (hi - lo) * np.clip(lower, 0, 1).reshape(len(times), *shape)
    upper = lo + (hi - lo) * np.clip(upper, 0, 1).reshape(len(times), *shape)
    return {"times": times, "ci_lower": lower, "ci_upper": upper, "ci_width": upper - lower}


def bernstein_sequence(
    means: np.ndarray, bounds, confidence: float = 0.95, times=None, truncation: float = TRUNCATION,
    name: str = "statistic",
) -> dict[str, np.ndarray]:
    """The PrPl-EB confidence sequence after each group: valid at every time at once.

    With bets ``min(sqrt(2 log(2/a) / (s2_{i-1} i log(1 + i))), c)`` the bounds ``C_t`` of the
    module's formula hold simultaneously, ``P(mu in C_t for all t) >= 1 - a``; the running
    intersection over all ``t <= times[q]`` is reported. A stopping rule may check the width
    at any times it likes and stop when it is small enough; coverage holds at the stop.
    The width shrinks like ``sqrt(log(t) / t)``. Streams: every quantity is a running sum.

    Parameters
    ----------
    means : array (G, *own_shape)
        Group means in address order (:func:`~mcdiff.estimators.group_means`), in ``bounds``.
    bounds : (lo, hi)
    confidence : float
        ``1 - a``, in (0, 1).
    times : sequence of int, optional
        Increasing group counts in ``[1, G]`` to report; every ``1 .. G`` by default.
    truncation : float
        ``c`` in (0, 1).
    name : str
        The statistic's name, for messages.

    Returns
    -------
    dict
        ``times (Q,)`` and ``ci_lower``, ``ci_upper``, ``ci_width``, each ``(Q, *own_shape)``.
    """
    return _sequence(means, bounds, confidence, times, truncation, name, "bernstein")


def betting_sequence(
    means: np.ndarray, bounds, confidence: float = 0.95, times=None, truncation: float = TRUNCATION,
    name: str = "statistic",
) -> dict[str, np.ndarray]:
    """The hedged-capital betting confidence sequence, reported at ``times``.

    Bets ``ldot_i = sqrt(2 log(2/a) / (s2_{i-1} i log(1 + i)))`` truncated at ``c/m`` and
    ``c/(1 - m)``; ``P(mu in C_t for all t) >= 1 - a`` by Ville's inequality. The reported
    bounds are intersected over the requested ``times`` (not every ``t``: a superset of the
    full intersection, equally valid), so ask for the times a stopping rule looks at. Cost
    ``O(40 Q G D)``: each reported time re-reads the group means up to it, which must be kept.
    Parameters and returns as :func:`bernstein_sequence`.
    """
    return _sequence(means, bounds, confidence, times, truncation, name, "betting")
