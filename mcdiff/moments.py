"""Streaming sufficient statistics of a design's groups: what the mean, its interval and the spread need.

A design's evaluations fall into ``G`` equally sized, contiguous groups of ``m`` evaluations
(``m = 1`` for MC, 2 for antithetic pairs, the replicate size for RQMC). Everything the
estimators report (:mod:`mcdiff.estimators`) is a function of six arrays of the statistic's
own shape, accumulated group by group in address order. With the shift ``c`` (the mean of
the first group), ``y_i = x_i - c`` and, per group ``k``, ``a_k = mean_k(y)`` and
``b_k = mean_k(y^2)``::

    sum_a  = sum_k a_k          sum_aa = sum_k a_k^2
    sum_b  = sum_k b_k          sum_bb = sum_k b_k^2          sum_ab = sum_k a_k b_k

The shift keeps the sums of squares free of cancellation (they are of the order of the
variance, not of the squared mean). Memory is six times the statistic's size, whatever the
number of evaluations.

**Determinism.** Group means are summed over the group's rows in address order, and the sums
over groups are strictly sequential in address order (one group's terms added at a time,
carried from block to block), so the accumulated values do not depend on how the
evaluations were cut into blocks or batches, on the order in which blocks finished, or on a
resume from a stored prefix: folding the same values in address order gives the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MOMENT_FIELDS = ("shift", "sum_a", "sum_aa", "sum_b", "sum_bb", "sum_ab")
"""The accumulated arrays, in the order of a result's ``moment`` coordinate."""


class GroupMoments:
    """The sums above for one statistic under one design, folded group by group in address order.

    Parameters
    ----------
    group_size : int
        Evaluations per group ``m``.

    Examples
    --------
    >>> import numpy as np
    >>> moments = GroupMoments(2)
    >>> moments.fold(np.array([1.0, 3.0, 2.0, 6.0]))
    >>> moments.n_groups, float(moments.mean())
    (2, 3.0)
    """

    def __init__(self, group_size: int):
        if group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
        self.group_size = int(group_size)
        self.n_groups = 0
        self.sums: dict[str, np.ndarray] | None = None

    @classmethod
    def from_values(cls, values: np.ndarray, group_size: int) -> GroupMoments:
        """The moments of ``values`` ``(G · m, *own_shape)``, rows in address order."""
        moments = cls(group_size)
        moments.fold(values)
        return moments

    @classmethod
    def from_state(cls, group_size: int, n_groups: int, sums: Mapping[str, np.ndarray]) -> GroupMoments:
        """Moments restored from :attr:`n_groups` and :attr:`sums` (a store's or a result's)."""
        moments = cls(group_size)
        missing = set(MOMENT_FIELDS) - set(sums)
        if missing:
            raise ValueError(f"moments lack {sorted(missing)}")
        moments.n_groups = int(n_groups)
        moments.sums = {f: np.array(sums[f], dtype=np.float64) for f in MOMENT_FIELDS} if n_groups else None
        return moments

    @property
    def n_evals(self) -> int:
        """Evaluations folded so far."""
        return self.n_groups * self.group_size

    def fold(self, values: np.ndarray) -> None:
        """Add whole groups ``(k · m, *own_shape)``: the next evaluations in address order."""
        values = np.asarray(values, dtype=np.float64)
        m = self.group_size
        if len(values) % m:
            raise ValueError(f"{len(values)} values do not fill whole groups of {m}")
        if len(values) == 0:
            return
        rows = values.reshape(len(values) // m, m, *values.shape[1:])
        if self.sums is None:
            shift = _sequential_mean(rows[:1])[0]
            self.sums = {"shift": shift, **{f: np.zeros_like(shift) for f in MOMENT_FIELDS[1:]}}
        elif rows.shape[2:] != self.sums["shift"].shape:
            raise ValueError(f"values of shape {rows.shape[2:]} after values of shape {self.sums['shift'].shape}")
        y = rows - self.sums["shift"]
        a, b = _sequential_mean(y), _sequential_mean(y * y)
        del y
        for field, terms in (("sum_a", a), ("sum_aa", a * a), ("sum_b", b), ("sum_bb", b * b), ("sum_ab", a * b)):
            self.sums[field] = _add_in_order(self.sums[field], terms)
        self.n_groups += len(rows)

    def _checked(self) -> tuple[int, dict[str, np.ndarray]]:
        if self.n_groups < 2:
            raise ValueError(f"at least 2 groups are needed for a standard error, got {self.n_groups}")
        return self.n_groups, self.sums

    def mean(self) -> np.ndarray:
        """``c + sum_a / G``: the design's estimate of the mean."""
        g, s = self.n_groups, self.sums
        if not g:
            raise ValueError("no evaluations folded yet")
        return s["shift"] + s["sum_a"] / g

    def group_variance(self) -> np.ndarray:
        """Sample variance of the group means ``a_k`` (``ddof = 1``), clipped at 0."""
        g, s = self._checked()
        return np.maximum((s["sum_aa"] - s["sum_a"] * (s["sum_a"] / g)) / (g - 1), 0.0)

    def pooled_variance(self) -> np.ndarray:
        """``(1/N) sum_i (x_i - xbar)^2 = sum_b / G - (sum_a / G)^2``, clipped at 0."""
        g, s = self._checked()
        return np.maximum(s["sum_b"] / g - (s["sum_a"] / g) ** 2, 0.0)

    def spread_group_variance(self) -> np.ndarray:
        """Sample variance over groups of the group means of ``h_i = (x_i - xbar)^2``.

        With ``ybar = sum_a / G`` the group mean of ``h`` is ``b_k - 2 ybar a_k + ybar^2``, so its
        variance is ``var(b) - 4 ybar cov(a, b) + 4 ybar^2 var(a)``, each over groups, ``ddof = 1``.
        """
        g, s = self._checked()
        ybar = s["sum_a"] / g
        var_a = (s["sum_aa"] - s["sum_a"] * ybar) / (g - 1)
        var_b = (s["sum_bb"] - s["sum_b"] * (s["sum_b"] / g)) / (g - 1)
        cov_ab = (s["sum_ab"] - s["sum_a"] * (s["sum_b"] / g)) / (g - 1)
        return np.maximum(var_b - 4 * ybar * cov_ab + 4 * ybar**2 * var_a, 0.0)


_NARROW = 64
"""Values per evaluation up to which :func:`_add_in_order` adds along rows with ``cumsum``."""


def _add_in_order(total: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """``(((total + terms[0]) + terms[1]) + ...)``: the rows of ``terms`` ``(G, *shape)`` added one at a time.

    Narrow values go through ``numpy.cumsum`` along a contiguous row (one C loop, strictly
    sequential); wide ones through one vector addition per row. Both give the same bits.
    """
    if total.size <= _NARROW:
        rows = np.empty((total.size, len(terms) + 1))
        rows[:, 0] = total.ravel()
        rows[:, 1:] = terms.reshape(len(terms), -1).T
        return np.cumsum(rows, axis=1)[:, -1].reshape(total.shape)
    total = total.copy()
    for row in terms:
        total += row
    return total


def _sequential_mean(rows: np.ndarray) -> np.ndarray:
    """Means over axis 1 of ``(G, m, ...)``, adding the ``m`` rows one at a time in order."""
    total = rows[:, 0].copy()
    for j in range(1, rows.shape[1]):
        total += rows[:, j]
    return total / rows.shape[1]
