"""Streaming sufficient statistics of a design's groups: what the mean, its interval and the spread need.

A design's evaluations fall into ``G`` equally sized, contiguous groups of ``m`` evaluations
(``m = 1`` for MC, 2 for antithetic pairs, the replicate size for RQMC). Everything the
estimators report (:mod:`mcdiff.estimators`) is a function of seven arrays of the statistic's
own shape, accumulated group by group in address order. With the shift ``c`` (the first
evaluation's value), ``y_i = x_i - c``, per group ``k`` ``b_k = mean_k(y^2)`` and
``a_k = mean_k(y) - d``, ``d`` the first group's ``mean_k(y)`` (``group_shift``)::

    sum_a  = sum_k a_k          sum_aa = sum_k a_k^2
    sum_b  = sum_k b_k          sum_bb = sum_k b_k^2          sum_ab = sum_k a_k b_k

The shifts keep the sums of squares free of cancellation: those of evaluations are of the
order of their variance, those of group means of the (much smaller, under RQMC) variance of
the group means, not of the squared mean. Memory is seven times the statistic's size, plus two for
a group not yet complete (an RQMC replicate arrives over many blocks), whatever the number of
evaluations and the size of a group.

**Determinism.** Group means are summed over the group's rows in address order, and the sums
over groups are strictly sequential in address order (one group's terms added at a time,
carried from block to block), so the accumulated values do not depend on how the
evaluations were cut into blocks or batches, on the order in which blocks finished, or on a
resume from a stored prefix: folding the same values in address order gives the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mcdiff.designs import InterleavedLayout

MOMENT_FIELDS = ("shift", "group_shift", "sum_a", "sum_aa", "sum_b", "sum_bb", "sum_ab")
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
        self.open_count = 0
        self.open_sums: list[np.ndarray] | None = None

    @classmethod
    def from_values(cls, values: np.ndarray, group_size: int) -> GroupMoments:
        """The moments of ``values`` ``(G · m, *own_shape)``, rows in address order."""
        moments = cls(group_size)
        moments.fold(values)
        return moments

    @classmethod
    def from_state(
        cls, group_size: int, n_groups: int, sums: Mapping[str, np.ndarray], open_count: int = 0, open_sums=None
    ) -> GroupMoments:
        """Moments restored from :attr:`n_groups` and :attr:`sums` (a store's or a result's), and an open group."""
        moments = cls(group_size)
        missing = set(MOMENT_FIELDS) - set(sums)
        if missing:
            raise ValueError(f"moments lack {sorted(missing)}")
        if not 0 <= open_count < group_size or (open_count > 0) != (open_sums is not None):
            raise ValueError(f"an open group of {open_count} evaluations does not fit groups of {group_size}")
        moments.n_groups, moments.open_count = int(n_groups), int(open_count)
        started = n_groups or open_count
        moments.sums = {f: np.array(sums[f], dtype=np.float64) for f in MOMENT_FIELDS} if started else None
        moments.open_sums = None if open_sums is None else [np.array(v, dtype=np.float64) for v in open_sums]
        return moments

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to continue folding, as arrays (:meth:`from_arrays` restores it)."""
        out = {"group_size": np.array(self.group_size), "n_groups": np.array(self.n_groups),
               "open_count": np.array(self.open_count), **(self.sums or {})}
        if self.open_sums is not None:
            out["open_y"], out["open_yy"] = self.open_sums
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> GroupMoments:
        """The accumulator :meth:`state` described."""
        n_groups, open_count = int(arrays["n_groups"]), int(arrays["open_count"])
        sums = {f: arrays[f] for f in MOMENT_FIELDS} if (n_groups or open_count) else dict.fromkeys(MOMENT_FIELDS, 0.0)
        open_sums = (arrays["open_y"], arrays["open_yy"]) if open_count else None
        return cls.from_state(int(arrays["group_size"]), n_groups, sums, open_count, open_sums)

    def groups(self) -> GroupMoments:
        """The accumulator as :class:`GroupMoments` (itself)."""
        return self

    @property
    def n_evals(self) -> int:
        """Evaluations folded so far (those of an open group included)."""
        return self.n_groups * self.group_size + self.open_count

    def fold(self, values: np.ndarray) -> None:
        """Add the next evaluations ``(k, *own_shape)`` in address order; a group may be split across calls.

        The rows of a group that is not complete yet are summed into an *open group*
        (:attr:`open_sums`, the running sums of ``y`` and ``y^2`` over its rows) in the order a
        whole group's rows are summed, so splitting a group between calls gives the same bits.
        """
        values = np.asarray(values, dtype=np.float64)
        if len(values) == 0:
            return
        m = self.group_size
        if self.sums is None:
            shift = values[0].copy()
            self.sums = {"shift": shift, **{f: np.zeros_like(shift) for f in MOMENT_FIELDS[1:]}}
        elif values.shape[1:] != self.sums["shift"].shape:
            raise ValueError(f"values of shape {values.shape[1:]} after values of shape {self.sums['shift'].shape}")
        y = values - self.sums["shift"]
        i = 0
        if self.open_count:
            i = min(m - self.open_count, len(y))
            self._extend_open(y[:i])
        whole = (len(y) - i) // m
        if whole:
            rows = y[i : i + whole * m].reshape(whole, m, *y.shape[1:])
            self._close(_sequential_mean(rows), _sequential_mean(rows * rows))
            i += whole * m
        if i < len(y):
            self._extend_open(y[i:])

    def _extend_open(self, rows: np.ndarray) -> None:
        """Add rows to the open group (opening it with the first), closing it once it has ``m`` rows."""
        for row in rows:
            if self.open_sums is None:
                self.open_sums = [row.copy(), row * row]
            else:
                self.open_sums[0] += row
                self.open_sums[1] += row * row
            self.open_count += 1
        if self.open_count == self.group_size:
            total, squares = self.open_sums
            self.open_sums, self.open_count = None, 0
            self._close((total / self.group_size)[None], (squares / self.group_size)[None])

    def _close(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add complete groups with means ``a`` of ``y`` and ``b`` of ``y^2``, ``(k, *own_shape)``, in order."""
        if self.n_groups == 0:
            self.sums["group_shift"] = a[0].copy()
        a = a - self.sums["group_shift"]
        for field, terms in (("sum_a", a), ("sum_aa", a * a), ("sum_b", b), ("sum_bb", b * b), ("sum_ab", a * b)):
            self.sums[field] = _add_in_order(self.sums[field], terms)
        self.n_groups += len(a)

    def _checked(self) -> tuple[int, dict[str, np.ndarray]]:
        if self.open_count:
            raise ValueError(f"the last group is incomplete ({self.open_count} of {self.group_size} evaluations)")
        if self.n_groups < 2:
            raise ValueError(f"at least 2 groups are needed for a standard error, got {self.n_groups}")
        return self.n_groups, self.sums

    def mean(self) -> np.ndarray:
        """``c + sum_a / G``: the design's estimate of the mean."""
        g, s = self.n_groups, self.sums
        if not g or self.open_count:
            raise ValueError(f"no complete groups folded ({self.n_groups} groups, {self.open_count} open evaluations)")
        return s["shift"] + s["group_shift"] + s["sum_a"] / g

    def group_variance(self) -> np.ndarray:
        """Sample variance of the group means ``a_k`` (``ddof = 1``), clipped at 0."""
        g, s = self._checked()
        return np.maximum((s["sum_aa"] - s["sum_a"] * (s["sum_a"] / g)) / (g - 1), 0.0)

    def pooled_variance(self) -> np.ndarray:
        """``(1/N) sum_i (x_i - xbar)^2 = sum_b / G - (sum_a / G)^2``, clipped at 0."""
        g, s = self._checked()
        return np.maximum(s["sum_b"] / g - (s["group_shift"] + s["sum_a"] / g) ** 2, 0.0)

    def spread_group_variance(self) -> np.ndarray:
        """Sample variance over groups of the group means of ``h_i = (x_i - xbar)^2``.

        With ``ybar = sum_a / G`` the group mean of ``h`` is ``b_k - 2 ybar a_k + ybar^2``, so its
        variance is ``var(b) - 4 ybar cov(a, b) + 4 ybar^2 var(a)``, each over groups, ``ddof = 1``.
        """
        g, s = self._checked()
        ybar = s["group_shift"] + s["sum_a"] / g
        var_a = (s["sum_aa"] - s["sum_a"] * (s["sum_a"] / g)) / (g - 1)
        var_b = (s["sum_bb"] - s["sum_b"] * (s["sum_b"] / g)) / (g - 1)
        cov_ab = (s["sum_ab"] - s["sum_a"] * (s["sum_b"] / g)) / (g - 1)
        return np.maximum(var_b - 4 * ybar * cov_ab + 4 * ybar**2 * var_a, 0.0)


class ReplicateMoments:
    """Running sums of ``y`` and ``y^2`` per replicate, for groups interleaved in address order.

    An interleaved RQMC design (``SobolRQMC(grow="points")`` or ``"adaptive"``) spreads each
    replicate over the addresses (:class:`~mcdiff.designs.InterleavedLayout`; ``grow="points"``
    puts point ``k`` of replicate ``r`` at point number ``k R + r``), so every replicate grows
    as the run grows. Each replicate's sums are added one evaluation at a time in address
    order (the same bits however the evaluations were cut into blocks); :meth:`groups` turns
    the replicate means into :class:`GroupMoments` when every replicate has the same number
    of points. With ``halves`` the sum over the first half of each replicate's points is
    kept too (:meth:`level_variances`, for the adaptive rule); :meth:`regrow` follows the
    layout as it doubles. Memory is ``2 R + 1`` (with halves ``3 R + 1``) times the
    statistic's size.
    """

    def __init__(self, layout: InterleavedLayout, unit: int = 1, halves: bool = False):
        self.layout, self.unit, self.halves = layout, int(unit), bool(halves)
        self.n_evals = 0
        self.shift: np.ndarray | None = None
        self.sums: dict[str, np.ndarray] = {}

    def _fields(self) -> tuple[str, ...]:
        return ("sum_y", "sum_yy", "half_y") if self.halves else ("sum_y", "sum_yy")

    def fold(self, values: np.ndarray) -> None:
        """Add the next evaluations ``(k, *own_shape)`` in address order."""
        values = np.asarray(values, dtype=np.float64)
        if len(values) == 0:
            return
        if self.shift is None:
            self.shift = values[0].copy()
            self.sums = {f: np.zeros((self.layout.replicates, *values.shape[1:])) for f in self._fields()}
        y = values - self.shift
        replicates, index = self.layout.locate(np.arange(self.n_evals, self.n_evals + len(y)) // self.unit)
        sum_y, sum_yy, half_y = self.sums["sum_y"], self.sums["sum_yy"], self.sums.get("half_y")
        half = self.layout.points // 2 if self.halves else 0
        for r, k, row in zip(replicates, index, y):
            sum_y[r] += row
            sum_yy[r] += row * row
            if k < half:
                half_y[r] += row
        self.n_evals += len(y)

    def regrow(self, layout: InterleavedLayout) -> None:
        """Follow the design's layout, doubled by one rectangle after the evaluations folded so far.

        A layout this accumulator already follows (a resumed state ahead of the run's round)
        changes nothing; any other is refused.
        """
        if self.layout.extends(layout):
            return
        if layout.rectangles[:-1] != self.layout.rectangles or self.n_evals != self.layout.size * self.unit:
            raise ValueError(f"layout {layout.describe()} does not extend {self.layout.describe()} at {self.n_evals} evaluations")
        grown = layout.replicates - self.layout.replicates
        self.layout = layout
        if self.shift is None:
            return
        if grown:
            self.sums = {f: np.concatenate([v, np.zeros((grown, *v.shape[1:]))]) for f, v in self.sums.items()}
        elif self.halves:
            self.sums["half_y"] = self.sums["sum_y"].copy()

    def _counts(self) -> tuple[int, int]:
        """Replicates and evaluations per replicate, when every replicate has as many."""
        replicates, _ = self.layout.locate(np.arange(self.n_evals // self.unit))
        counts = np.bincount(replicates, minlength=len(self.sums.get("sum_y", ())))
        size = self.n_evals // len(counts) if len(counts) else 0
        if not size or self.n_evals % self.unit or (counts * self.unit != size).any():
            raise ValueError(f"{self.n_evals} evaluations do not give each of {len(counts)} replicates the same points")
        return len(counts), size

    def groups(self) -> GroupMoments:
        """:class:`GroupMoments` of the replicate means (all replicates complete and equally long)."""
        _, size = self._counts()
        moments = GroupMoments(size)
        moments.sums = {"shift": self.shift.copy(), **{f: np.zeros_like(self.shift) for f in MOMENT_FIELDS[1:]}}
        moments._close(self.sums["sum_y"] / size, self.sums["sum_yy"] / size)
        return moments

    def level_variances(self) -> tuple[np.ndarray, np.ndarray]:
        """Sample variances over replicates of the means of their first half and of all their points.

        Needs ``halves`` and at least two points per replicate.
        """
        _, size = self._counts()
        if not self.halves or self.layout.points < 2:
            raise ValueError("level variances need halves=True and at least two points per replicate")
        half = size // 2
        return (np.var(self.sums["half_y"] / half, axis=0, ddof=1), np.var(self.sums["sum_y"] / size, axis=0, ddof=1))

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to continue folding, as arrays (:meth:`from_arrays` restores it)."""
        out = {
            "layout": np.array(self.layout.rectangles),
            "unit": np.array(self.unit),
            "halves": np.array(self.halves),
            "n_evals": np.array(self.n_evals),
        }
        if self.shift is not None:
            out.update(shift=self.shift, **self.sums)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ReplicateMoments:
        """The accumulator :meth:`state` described."""
        layout = InterleavedLayout(tuple(tuple(int(v) for v in row) for row in np.asarray(arrays["layout"])))
        moments = cls(layout, int(arrays["unit"]), bool(arrays["halves"]))
        moments.n_evals = int(arrays["n_evals"])
        if moments.n_evals:
            moments.shift = np.array(arrays["shift"], dtype=np.float64)
            moments.sums = {f: np.array(arrays[f], dtype=np.float64) for f in moments._fields()}
        return moments


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
