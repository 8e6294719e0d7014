"""Noise designs: how the standard-normal noise of each model evaluation is drawn.

A design turns ``(seed, design, address, component, step)`` into the noise of one evaluation,
for every named noise component a sampler declares (``{"x_T": (C, H, W), "steps": (T, C, H, W)}``).
Noise is a pure function of those five things, so reruns, resumed runs and any split of the
work into batches or shards give bit-identical draws. Every evaluation is marginally N(0, I).

:meth:`Design.noise` hands a sampler the noise of one batch as a :class:`~mcdiff.noise.Noise`
that generates each component on the sampler's device when the sampler asks for it: the
initial noise before the first step, each step's injected noise at that step, so memory is
O(batch x one image) whatever the number of steps. Pseudo-random coordinates come from
Philox4x32-10 keyed by ``(seed, design, stream)`` with the counter ``(position, step,
component)`` (:func:`mcdiff.noise.philox.standard_normal`); RQMC's Sobol' coordinates, the small
part (at most :data:`~mcdiff.noise.sobol.SOBOL_MAX_DIM` per evaluation), are computed once per
batch: the Sobol' points and their inverse normal CDF on the CPU, their nested scrambling
(integer hashing, the dear part) on the sampler's device. A design decides which streams
and points an evaluation gets; the noise engine (:mod:`mcdiff.noise`) generates them.

What is identical where: the 32-bit Philox words are integer arithmetic and the same on every
device, and so are the scrambled Sobol' integers; the normals made from them (``log``,
``cos``, ``sin``) and the inverse DCT are bit-identical for any batch, block, executor, resume,
shard or chunk *on one device type*, and agree between CPU and GPU to a few float32 ulps
(about 1e-6), not bit for bit. Sobol' normals are computed in float64 on the CPU everywhere,
then cast.

Each evaluation also carries a *group id*: the unit the estimator averages before it forms
a confidence interval (an evaluation for plain MC, a pair for antithetic sampling, a
replicate for randomized QMC). See :mod:`mcdiff.estimators`.

=============  ===========================  ==========================================
name           class                        group
=============  ===========================  ==========================================
``mc``         :class:`MonteCarlo`          one evaluation
``amc``        :class:`Antithetic`          a pair (z, -z)
``rqmc``       :class:`SobolRQMC`           a replicate of 2^m scrambled Sobol' points
``amc-rqmc``   ``SobolRQMC(antithetic=1)``  a replicate of 2^m pairs (u, 1 - u)
=============  ===========================  ==========================================
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtri

from mcdiff.noise.batch import DesignNoise, NoiseSpec, Streams
from mcdiff.noise.philox import stream_keys
from mcdiff.noise.sobol import SOBOL_MAX_DIM, scrambled_points
from mcdiff.validation import check_seed, is_integer

_TAGS = {"mc": 0, "amc": 1, "rqmc": 2, "amc-rqmc": 3}
_STREAM_KEY = 1 << 16
_SCRAMBLE_WORDS = {"nested": "nested-scrambled", "lms": "LMS+shift-scrambled"}


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent stream for ``(seed, *key)``: the single place that seeds randomness."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def stream_seed(seed: int, *key: int) -> int:
    """Seed of an independent noise stream ``(seed, *key)``, e.g. one level of a multilevel run.

    ``SeedSequence(entropy=seed, spawn_key=(STREAM_KEY, *key))`` hashes to a 63-bit seed, so
    designs drawn with the seeds of different keys are independent (in the sense of
    :class:`numpy.random.SeedSequence`) and each stream is still a pure function of its key.
    """
    sequence = np.random.SeedSequence(entropy=check_seed(seed), spawn_key=(_STREAM_KEY, *key))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def noise_dim(spec: NoiseSpec) -> int:
    """Total number of noise coordinates of one evaluation."""
    return sum(math.prod(shape) for shape in spec.values())


class Design(ABC):
    """A rule for drawing the noise of evaluations ``0 .. n_evals - 1``.

    Subclasses define :attr:`name`, :attr:`unit` (how many consecutive evaluations must
    stay in one batch: 2 for a pair) and the three methods below.
    """

    name: str
    unit: int = 1
    interleaved: bool = False
    """Whether a group's evaluations are spread over the addresses (else each group is contiguous)."""

    @abstractmethod
    def check_n(self, n_evals: int) -> None:
        """Raise ``ValueError`` unless ``n_evals`` is a valid number of evaluations."""

    @abstractmethod
    def group_ids(self, n_evals: int) -> np.ndarray:
        """Group id of every evaluation, shape ``(n_evals,)``; groups are equally sized."""

    @abstractmethod
    def _streams(self, seed: int, addresses: np.ndarray, n_evals: int) -> Streams:
        """The pseudo-random streams of ``addresses`` (:class:`~mcdiff.noise.batch.Streams`)."""

    def _leading(
        self, dim: int, seed: int, addresses: np.ndarray, n_evals: int, device: torch.device
    ) -> np.ndarray | None:
        """Normals ``(len(addresses), lead)`` of the leading coordinates, or ``None`` (all pseudo-random).

        ``device`` is where the sampler runs: the integer work of scrambling may run there.
        """
        return None

    def _basis(self, dim: int) -> str:
        """``"pixel"`` or ``"dct"``: the coordinates :meth:`_leading` is laid on."""
        return "pixel"

    def noise(
        self,
        spec: NoiseSpec,
        seed: int,
        start: int,
        stop: int,
        n_evals: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        ahead: Executor | None = None,
    ) -> DesignNoise:
        """The noise of evaluations ``start .. stop - 1`` of a run of ``n_evals``, drawn when asked.

        Returns a :class:`~mcdiff.noise.Noise` whose components are generated on ``device``
        in ``dtype`` when a sampler reads them (``noise[name]`` or ``noise.step(name, i)``);
        only the leading Sobol' coordinates of RQMC designs are computed here. With an
        executor ``ahead``, step noise is generated one chunk ahead on its threads. The
        values depend only on ``(seed, design, address, component, step)`` and ``dtype``.
        """
        seed = check_seed(seed)
        self.check_n(n_evals)
        if not 0 <= start <= stop <= n_evals:
            raise ValueError(f"addresses [{start}, {stop}) are outside [0, {n_evals})")
        device, dim, addresses = torch.device(device), noise_dim(spec), np.arange(start, stop)
        streams = self._streams(seed, addresses, n_evals)
        leading = self._leading(dim, seed, addresses, n_evals, device)
        return DesignNoise(spec, streams, device, dtype, self._basis(dim), leading, ahead)

    def draw(
        self, spec: NoiseSpec, seed: int, start: int, stop: int, n_evals: int
    ) -> dict[str, np.ndarray]:
        """All noise of evaluations ``start .. stop - 1``: ``{name: array (stop - start, *shape)}``.

        Float64 on the CPU, the same values as :meth:`noise` gives there; for looking at
        draws, not for sampling (it holds the whole noise path).
        """
        noise = self.noise(spec, seed, start, stop, n_evals)
        return {name: noise[name].numpy() for name in spec}

    def describe(self, spec: NoiseSpec) -> str:
        """One line saying how the noise of ``spec`` is drawn (stored in results)."""
        return self.name

    def nearest_n(self, n_evals: float) -> int:
        """The allowed number of evaluations nearest to ``n_evals``, at least the smallest allowed.

        Here: a multiple of :attr:`unit` with at least 2 groups (override for other rules).
        """
        n = max(self.unit * round(n_evals / self.unit), self.unit)
        while True:
            try:
                self.check_n(n)
                return n
            except ValueError:
                n += self.unit

    def group_size(self, n_evals: int) -> int:
        """Evaluations per group (1, a pair, a replicate) in a run of ``n_evals``.

        Groups are numbered ``0 .. G - 1`` in address order and equally sized, so this is
        ``n_evals / G``. Blocks of work and stopping rounds are cut at multiples of it.
        """
        return n_evals // (int(self.group_ids(n_evals)[-1]) + 1)

    def extendable(self, n_evals: int) -> Design:
        """This design for a run of ``n_evals``, extendable past ``n_evals`` by whole groups.

        The returned design draws the same noise as ``self`` at addresses ``0 .. n_evals - 1``
        and its noise at any address does not depend on the run length, so a run can grow
        (sequential stopping) or resume without changing a single stored draw. Plain MC and
        antithetic noise never depend on the run length: they return ``self``.
        """
        self.check_n(n_evals)
        return self

    def _check_count(self, n_evals: int, minimum: int) -> None:
        if not is_integer(n_evals):
            raise ValueError(f"n_evals must be an integer, got {n_evals!r}")
        if n_evals < minimum:
            raise ValueError(
                f"n_evals={n_evals} is too small for design {self.name!r}: it needs at least "
                f"{minimum} evaluations to estimate a standard error"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MonteCarlo(Design):
    """Plain Monte Carlo: independent N(0, I) noise for every evaluation."""

    name = "mc"

    def check_n(self, n_evals: int) -> None:
        self._check_count(n_evals, 2)

    def group_ids(self, n_evals: int) -> np.ndarray:
        self.check_n(n_evals)
        return np.arange(n_evals)

    def _streams(self, seed, addresses, n_evals):
        return Streams(stream_keys(seed, _TAGS[self.name], addresses))


class Antithetic(Design):
    """Antithetic pairs: evaluations ``2j`` and ``2j + 1`` receive ``z_j`` and ``-z_j``.

    For a stochastic sampler ``z_j`` is the whole noise path (initial and injected noise),
    so the partner negates every component.
    """

    name = "amc"
    unit = 2

    def check_n(self, n_evals: int) -> None:
        self._check_count(n_evals, 4)
        if n_evals % 2:
            raise ValueError(
                f"n_evals={n_evals} is odd, but antithetic design {self.name!r} needs whole "
                f"pairs: use an even number such as {n_evals - 1} or {n_evals + 1}"
            )

    def group_ids(self, n_evals: int) -> np.ndarray:
        self.check_n(n_evals)
        return np.arange(n_evals) // 2

    def _streams(self, seed, addresses, n_evals):
        pairs = addresses // 2
        first = int(pairs[0]) if len(pairs) else 0
        keys = stream_keys(seed, _TAGS[self.name], np.arange(first, first + len(np.unique(pairs))))
        return Streams(keys, pairs - first, addresses % 2 == 1)


@dataclass(frozen=True)
class InterleavedLayout:
    """Where each point of each RQMC replicate sits in address order, for designs that grow.

    A run is a sequence of rectangles ``(r0, r1, k0, k1)``: points ``k0 .. k1 - 1`` of
    replicates ``r0 .. r1 - 1``, laid point-major (point ``k`` of replicate ``r`` at
    ``start + (k - k0)(r1 - r0) + (r - r0)``). A run starts with one rectangle ``(0, R, 0, P)``
    and every round doubles it: :meth:`doubled` appends ``(0, R, P, 2P)`` (each replicate
    extended to 2P points of the same scramble) or ``(R, 2R, 0, P)`` (R new replicates).
    Past its last rectangle a layout continues by doubling points, so ``start(R, 1)`` puts
    point ``k`` of replicate ``r`` at ``k R + r`` at every run length.
    """

    rectangles: tuple[tuple[int, int, int, int], ...]

    @classmethod
    def start(cls, replicates: int, points: int) -> InterleavedLayout:
        """``replicates`` replicates of ``points`` points."""
        return cls(((0, int(replicates), 0, int(points)),))

    @property
    def replicates(self) -> int:
        """Replicates at the end of the layout."""
        return max(r1 for _, r1, _, _ in self.rectangles)

    @property
    def points(self) -> int:
        """Points per replicate at the end of the layout (all replicates have as many)."""
        return max(k1 for _, _, _, k1 in self.rectangles)

    @property
    def size(self) -> int:
        """Points the rectangles hold."""
        return sum((r1 - r0) * (k1 - k0) for r0, r1, k0, k1 in self.rectangles)

    def doubled(self, how: str) -> InterleavedLayout:
        """The layout grown by one rectangle: ``how`` is ``"points"`` or ``"replicates"``."""
        r, p = self.replicates, self.points
        if how not in ("points", "replicates"):
            raise ValueError(f"a layout doubles its 'points' or its 'replicates', not {how!r}")
        added = (0, r, p, 2 * p) if how == "points" else (r, 2 * r, 0, p)
        return InterleavedLayout((*self.rectangles, added))

    def extends(self, other: InterleavedLayout) -> bool:
        """Whether this layout begins with every rectangle of ``other``."""
        return self.rectangles[: len(other.rectangles)] == other.rectangles

    def locate(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Replicate and point index within it of each point number (``address // unit``)."""
        points = np.asarray(points, dtype=np.int64)
        layout = self
        while points.size and layout.size <= points.max():
            layout = layout.doubled("points")
        table = np.array(layout.rectangles, dtype=np.int64)
        widths, areas = table[:, 1] - table[:, 0], (table[:, 1] - table[:, 0]) * (table[:, 3] - table[:, 2])
        ends = np.cumsum(areas)
        which = np.searchsorted(ends, points, side="right")
        offset = points - (ends - areas)[which]
        return table[which, 0] + offset % widths[which], table[which, 2] + offset // widths[which]

    def describe(self) -> str:
        """``"16x4, +points, +replicates"``: the start and each doubling."""
        _, r, _, p = self.rectangles[0]
        steps = ["+points" if r0 == 0 else "+replicates" for r0, _, _, _ in self.rectangles[1:]]
        return ", ".join([f"{r}x{p}", *steps])


class SobolRQMC(Design):
    r"""Randomized quasi-Monte Carlo: ``replicates`` independent scrambles of 2^m Sobol' points.

    Each replicate scrambles the first 2^m points of a Sobol' sequence independently, shifts
    every point to the centre of its cell of width 2^-30 so that no coordinate is 0 or 1, and
    maps it to N(0, I) by the inverse normal CDF. The replicate means are independent and
    unbiased, which is what the t-interval over replicates needs.

    ``scramble="nested"`` (the default) is Owen's nested uniform scramble, truncated at 30
    bits: bit ``k`` of coordinate ``j`` is flipped by an independent fair coin per node
    ``(j, k, a_1 .. a_{k-1})`` of the tree of leading input bits,

    .. math:: a'_k = a_k \oplus \pi_{j,k}(a_1, \dots, a_{k-1}),

    with the coins drawn by a keyed hash (see :func:`~mcdiff.noise.sobol.nested_scramble`). Each replicate is
    still a (t, m, s)-net, every point is uniform on the 2^-30 grid, and for smooth
    integrands the replicate mean is asymptotically normal (Loh 2003), so the t-interval
    over a few replicates is calibrated. ``scramble="lms"`` is scipy's linear matrix
    scramble with a digital shift (:class:`scipy.stats.qmc.Sobol`): as accurate, but its
    errors need not be normal; on the analytic model its replicate means have excess
    kurtosis about 0.25 against about 0 for nested (``statistics/rqmc_scrambling.py``).

    With ``antithetic=True`` every point ``u`` is followed by its reflection ``1 - u``; since
    the cell centres are symmetric, the partner's noise is exactly ``-z``.

    Sobol' points exist for at most :data:`~mcdiff.noise.sobol.SOBOL_MAX_DIM` coordinates. For larger noise
    (``basis="auto"`` then picks ``"dct"``) the noise is written in an orthonormal DCT-II
    basis per component, coordinates ordered low spatial frequency first and components in
    declared order; the leading ``max_dim`` coordinates get Sobol' points and the rest get
    pseudo-random (for ``antithetic``, negated with the partner) N(0, 1) noise.

    Parameters
    ----------
    replicates : int
        Number R >= 2 of independent scrambles; ``n_evals`` must be ``R * 2^m`` (times 2 with
        ``antithetic``).
    antithetic : bool
        Pair every point with its reflection.
    basis : {"auto", "pixel", "dct"}
        Coordinates the Sobol' points are laid on.
    max_dim : int
        How many leading coordinates get Sobol' points (at most :data:`~mcdiff.noise.sobol.SOBOL_MAX_DIM`).
    scramble : {"nested", "lms"}
        Owen's nested uniform scramble, or linear matrix scrambling plus a digital shift.
    points_per_replicate : int, optional
        Fix 2^m. ``n_evals`` may then be any ``k · 2^m`` (times 2 with ``antithetic``) with
        ``k >= replicates``: a longer run *adds replicates* and leaves the noise of every
        earlier address unchanged (see :meth:`extendable`). By default 2^m is
        ``n_evals / replicates`` (divided by 2 with ``antithetic``).
    grow : {"replicates", "points", "adaptive"}
        How a run that grows (sequential stopping) adds evaluations. ``"replicates"`` (the
        default) lays replicate after replicate in address order and adds replicates of the
        first round's size. ``"points"`` interleaves the replicates (point ``k`` of replicate
        ``r`` at point number ``k R + r``), so the first ``R 2^m`` addresses hold the first 2^m
        points of every replicate and a doubled run extends each replicate to 2^(m+1) points of
        the same scramble, every earlier point reused: the variance reduction of 2^(m+1)-point
        nets, not of more 2^m-point ones. ``"adaptive"`` lets each doubling either extend the
        points or double the replicates (:class:`InterleavedLayout`), whichever the interval
        needs (the runner's rule: :func:`~mcdiff.estimators.rqmc_growth`). Interleaved groups
        (replicates) are not contiguous, and the runner keeps one running sum per replicate.
        At each round the replicate means are independent and unbiased given the layout, so a
        round's t-interval is valid when the layout is fixed in advance; an adaptive layout is
        chosen from the replicates' variances, which for normal replicate means are
        independent of their average, not of the interval's standard error, so its validity
        (like the t-rule's at a data-dependent stopping time) is approximate and measured
        (``statistics/rqmc_growth.py``). The confidence sequences (which need new independent
        groups) are refused. At ``n_evals = R 2^m`` both interleaved layouts evaluate exactly
        the points of the ``"replicates"`` layout, in another order.
    layout : InterleavedLayout, optional
        The address layout of ``grow="adaptive"`` so far (the runner sets it); by default one
        rectangle of ``replicates`` replicates of ``n_evals / replicates`` points.

    References
    ----------
    A. B. Owen, "Randomly permuted (t, m, s)-nets and (t, s)-sequences", in Monte Carlo and
    Quasi-Monte Carlo Methods in Scientific Computing, Lecture Notes in Statistics 106,
    299-317 (1995).

    W.-L. Loh, "On the asymptotic distribution of scrambled net quadrature", Annals of
    Statistics 31(4), 1282-1324 (2003).

    A. B. Owen, "Monte Carlo theory, methods and examples", ch. 17 (2013).
    """

    def __init__(
        self,
        replicates: int = 16,
        antithetic: bool = False,
        basis: str = "auto",
        max_dim: int = SOBOL_MAX_DIM,
        scramble: str = "nested",
        points_per_replicate: int | None = None,
        grow: str = "replicates",
        layout: InterleavedLayout | None = None,
    ):
        if points_per_replicate is not None and (
            not is_integer(points_per_replicate)
            or points_per_replicate < 1
            or points_per_replicate & (points_per_replicate - 1)
        ):
            raise ValueError(
                f"points_per_replicate must be a power of two (1, 2, 4, ...) or None, "
                f"got {points_per_replicate!r}"
            )
        if not is_integer(replicates):
            raise ValueError(f"replicates must be an integer >= 2, got {replicates!r}")
        if replicates < 2:
            raise ValueError(f"replicates must be >= 2 to estimate a standard error, got {replicates}")
        if basis not in ("auto", "pixel", "dct"):
            raise ValueError(f"basis must be 'auto', 'pixel' or 'dct', got {basis!r}")
        if not 1 <= max_dim <= SOBOL_MAX_DIM:
            raise ValueError(f"max_dim must be in [1, {SOBOL_MAX_DIM}], got {max_dim}")
        if scramble not in ("lms", "nested"):
            raise ValueError(f"scramble must be 'lms' or 'nested', got {scramble!r}")
        if grow not in ("replicates", "points", "adaptive"):
            raise ValueError(f"grow must be 'replicates', 'points' or 'adaptive', got {grow!r}")
        if grow != "replicates" and points_per_replicate is not None:
            raise ValueError(f"grow={grow!r} extends the replicates' points: points_per_replicate must be None")
        if layout is not None and (grow != "adaptive" or layout.rectangles[0][:3] != (0, replicates, 0)):
            raise ValueError(f"a layout belongs to grow='adaptive' and starts with {replicates} replicates, got {layout}")
        self.replicates = int(replicates)
        self.antithetic = bool(antithetic)
        self.basis = basis
        self.max_dim = int(max_dim)
        self.scramble = scramble
        self.points = None if points_per_replicate is None else int(points_per_replicate)
        self.grow = grow
        self.layout = layout
        self.name = "amc-rqmc" if antithetic else "rqmc"
        self.unit = 2 if antithetic else 1

    def __repr__(self) -> str:
        return (
            f"SobolRQMC(replicates={self.replicates}, antithetic={self.antithetic}, "
            f"basis={self.basis!r}, max_dim={self.max_dim}, scramble={self.scramble!r}"
            + ("" if self.points is None else f", points_per_replicate={self.points}")
            + ("" if self.grow == "replicates" else f", grow={self.grow!r}")
            + ("" if self.layout is None else f", layout={self.layout.rectangles}")
            + ")"
        )

    def points_per_replicate(self, n_evals: int) -> int:
        """Number of Sobol' points 2^m in each replicate for a run of ``n_evals``."""
        self.check_n(n_evals)
        if self.points is not None:
            return self.points
        replicates = self.replicates if self.layout is None else self.layout.replicates
        return n_evals // (replicates * self.unit)

    @property
    def interleaved(self) -> bool:
        """Whether replicates interleave in address order (``grow`` is ``"points"`` or ``"adaptive"``)."""
        return self.grow != "replicates"

    def interleaved_layout(self, n_evals: int) -> InterleavedLayout:
        """Where the points of a run of ``n_evals`` lie (an interleaved design's)."""
        if self.layout is not None:
            return self.layout
        if self.grow == "points":
            return InterleavedLayout.start(self.replicates, 1)
        return InterleavedLayout.start(self.replicates, self.points_per_replicate(n_evals))

    def grown(self, how: str) -> SobolRQMC:
        """``grow="adaptive"``: this design with its layout doubled (``"points"`` or ``"replicates"``)."""
        if self.layout is None:
            raise ValueError("only an extendable design with grow='adaptive' (it has a layout) grows")
        return self._with_layout(self.layout.doubled(how))

    def _with_layout(self, layout: InterleavedLayout) -> SobolRQMC:
        return SobolRQMC(self.replicates, self.antithetic, self.basis, self.max_dim, self.scramble,
                         grow=self.grow, layout=layout)

    def extendable(self, n_evals: int) -> SobolRQMC:
        """This design with 2^m fixed at its value for ``n_evals``: longer runs add replicates.

        With ``grow="points"`` the design itself: longer runs extend every replicate's points;
        with ``"adaptive"`` the design with its first layout (one rectangle), grown by :meth:`grown`.
        """
        if self.interleaved:
            self.check_n(n_evals)
            if self.grow == "adaptive" and self.layout is None:
                return self._with_layout(self.interleaved_layout(n_evals))
            return self
        return SobolRQMC(
            self.replicates,
            self.antithetic,
            self.basis,
            self.max_dim,
            scramble=self.scramble,
            points_per_replicate=self.points_per_replicate(n_evals),
        )

    def check_n(self, n_evals: int) -> None:
        if self.points is not None:
            self._check_count(n_evals, self.replicates * self.points * self.unit)
            if n_evals % (self.points * self.unit):
                factor = f"{self.unit}·" if self.unit > 1 else ""
                raise ValueError(
                    f"n_evals={n_evals} is not {factor}k·{self.points} (whole replicates of "
                    f"points_per_replicate={self.points}) for design {self.name!r}"
                )
            return
        block = self.replicates * self.unit
        self._check_count(n_evals, block)
        points = n_evals // block
        if n_evals % block or points & (points - 1):
            low = block * 2 ** int(math.log2(max(n_evals // block, 1)))
            factor = f"{self.unit}·" if self.unit > 1 else ""
            raise ValueError(
                f"n_evals={n_evals} is not {factor}replicates·2^m for design {self.name!r} with "
                f"replicates={self.replicates}: the nearest allowed values are {low} and {2 * low}"
            )

    def group_ids(self, n_evals: int) -> np.ndarray:
        replicate, _, _ = self._replicate_points(np.arange(n_evals), n_evals)
        return replicate

    def nearest_n(self, n_evals: float) -> int:
        """The allowed ``replicates · 2^m`` (times 2 with ``antithetic``) nearest to ``n_evals``
        on a log scale, at least one point per replicate (with fixed ``points_per_replicate``:
        the nearest whole number of replicates)."""
        if self.points is not None:
            return super().nearest_n(n_evals)
        block = self.replicates * self.unit
        return block * 2 ** max(0, round(math.log2(max(n_evals, 1) / block)))

    def _resolved_basis(self, dim: int) -> str:
        if self.basis == "auto":
            return "pixel" if dim <= self.max_dim else "dct"
        return self.basis

    def describe(self, spec: NoiseSpec) -> str:
        dim = noise_dim(spec)
        lead = min(dim, self.max_dim)
        count = f"{self.replicates}" if self.points is None else f"{self.points}-point"
        if self.layout is not None:
            count = f"{self.layout.replicates} (grown {self.layout.describe()})"
        text = (
            f"{self.name}: {count} {_SCRAMBLE_WORDS[self.scramble]} Sobol' replicates on "
            f"the leading {lead} of {dim} coordinates in the {self._resolved_basis(dim)} basis"
        )
        if lead < dim:
            kind = "antithetic pseudo-random" if self.antithetic else "pseudo-random"
            text += f"; the other {dim - lead} are {kind}"
        return text

    def _basis(self, dim: int) -> str:
        return self._resolved_basis(dim)

    def _replicate_points(self, addresses: np.ndarray, n_evals: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Replicate ``r`` and point index ``k`` within it of each address, and which are reflections."""
        points = addresses // self.unit
        reflected = (addresses % 2 == 1) & self.antithetic
        if self.interleaved:
            return (*self.interleaved_layout(n_evals).locate(points), reflected)
        per_replicate = self.points_per_replicate(n_evals)
        return points // per_replicate, points % per_replicate, reflected

    def _streams(self, seed, addresses, n_evals):
        points = addresses // self.unit
        first = int(points[0]) if len(points) else 0
        unique = np.arange(first, first + len(np.unique(points)))
        replicate, index, _ = self._replicate_points(unique * self.unit, n_evals)
        keys = stream_keys(seed, _TAGS[self.name], replicate, 1, index)
        return Streams(keys, points - first, (addresses % 2 == 1) & self.antithetic)

    def _leading(self, dim, seed, addresses, n_evals, device):
        tag = _TAGS[self.name]
        lead = min(dim, self.max_dim)
        replicate, index, reflected = self._replicate_points(addresses, n_evals)
        out = np.empty((len(addresses), lead))
        for r in np.unique(replicate):
            rows = np.flatnonzero(replicate == r)
            k = index[rows]
            rng = _rng(seed, tag, int(r), 0)
            u = scrambled_points(lead, rng, int(k[0]), int(k[-1] - k[0] + 1), self.scramble, device)
            out[rows] = ndtri(u)[k - k[0]]
        out[reflected] *= -1.0
        return out


DESIGN_NAMES = ("mc", "amc", "rqmc", "amc-rqmc")


def get_design(design: str | Design) -> Design:
    """Resolve ``"mc"``, ``"amc"``, ``"rqmc"``, ``"amc-rqmc"`` or a :class:`Design`."""
    if isinstance(design, Design):
        return design
    factories = {
        "mc": MonteCarlo,
        "amc": Antithetic,
        "rqmc": SobolRQMC,
        "amc-rqmc": lambda: SobolRQMC(antithetic=True),
    }
    if design not in factories:
        raise ValueError(f"unknown design {design!r}; known: {', '.join(DESIGN_NAMES)}")
    return factories[design]()
