"""Noise designs: how the standard-normal noise of each model evaluation is drawn.

A design turns ``(seed, design, address)`` into the noise of one evaluation, for every named
noise component a sampler declares (``{"x_T": (C, H, W), "steps": (T, C, H, W)}``). Noise is
a pure function of those three things, so reruns, resumed runs and any split of the work
into batches or shards give bit-identical draws. Every evaluation is marginally N(0, I).

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
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np
from scipy import fft
from scipy.special import ndtri
from scipy.stats import qmc

NoiseSpec = Mapping[str, tuple[int, ...]]
"""Per-evaluation noise shapes by component name, as a sampler declares them."""

SOBOL_MAX_DIM = 21201
"""The largest dimension of scipy's Sobol' direction numbers."""

_SOBOL_BITS = 30
_TAGS = {"mc": 0, "amc": 1, "rqmc": 2, "amc-rqmc": 3}
_STREAM_KEY = 1 << 16
_SCRAMBLE_WORDS = {"nested": "nested-scrambled", "lms": "LMS+shift-scrambled"}


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent stream for ``(seed, *key)``: the single place that seeds randomness."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def check_seed(seed: int) -> int:
    """Return ``seed`` if it is a non-negative integer, else raise ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


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


def _split(flat: np.ndarray, spec: NoiseSpec) -> dict[str, np.ndarray]:
    """Cut ``(B, D)`` flat noise into components ``{name: (B, *shape)}`` in declared order."""
    out, start = {}, 0
    for name, shape in spec.items():
        size = math.prod(shape)
        out[name] = flat[:, start : start + size].reshape(len(flat), *shape)
        start += size
    return out


class Design(ABC):
    """A rule for drawing the noise of evaluations ``0 .. n_evals - 1``.

    Subclasses define :attr:`name`, :attr:`unit` (how many consecutive evaluations must
    stay in one batch: 2 for a pair) and the three methods below.
    """

    name: str
    unit: int = 1

    @abstractmethod
    def check_n(self, n_evals: int) -> None:
        """Raise ``ValueError`` unless ``n_evals`` is a valid number of evaluations."""

    @abstractmethod
    def group_ids(self, n_evals: int) -> np.ndarray:
        """Group id of every evaluation, shape ``(n_evals,)``; groups are equally sized."""

    @abstractmethod
    def _draw_flat(self, dim: int, seed: int, start: int, stop: int, n_evals: int) -> np.ndarray:
        """Flat noise ``(stop - start, dim)`` of evaluations ``start .. stop - 1``."""

    def draw(
        self, spec: NoiseSpec, seed: int, start: int, stop: int, n_evals: int
    ) -> dict[str, np.ndarray]:
        """Noise of evaluations ``start .. stop - 1`` of a run of ``n_evals``.

        Returns ``{name: array (stop - start, *shape)}`` of float64 for every component of
        ``spec``. The result depends only on ``(seed, design, address)``.
        """
        seed = check_seed(seed)
        self.check_n(n_evals)
        if not 0 <= start <= stop <= n_evals:
            raise ValueError(f"addresses [{start}, {stop}) are outside [0, {n_evals})")
        return _split(self._draw_flat(noise_dim(spec), seed, start, stop, n_evals), spec)

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
        if isinstance(n_evals, bool) or not isinstance(n_evals, (int, np.integer)):
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

    def _draw_flat(self, dim, seed, start, stop, n_evals):
        tag = _TAGS[self.name]
        return np.stack([_rng(seed, tag, a).standard_normal(dim) for a in range(start, stop)])


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

    def _draw_flat(self, dim, seed, start, stop, n_evals):
        tag = _TAGS[self.name]
        addresses = np.arange(start, stop)
        pairs = {j: _rng(seed, tag, j).standard_normal(dim) for j in np.unique(addresses // 2)}
        return np.stack([pairs[a // 2] * (1.0 if a % 2 == 0 else -1.0) for a in addresses])


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

    with the coins drawn by a keyed hash (see :func:`_nested_scramble`). Each replicate is
    still a (t, m, s)-net, every point is uniform on the 2^-30 grid, and for smooth
    integrands the replicate mean is asymptotically normal (Loh 2003), so the t-interval
    over a few replicates is calibrated. ``scramble="lms"`` is scipy's linear matrix
    scramble with a digital shift (:class:`scipy.stats.qmc.Sobol`): as accurate, but its
    errors need not be normal; on the analytic model its replicate means have excess
    kurtosis about 0.25 against about 0 for nested (``statistics/rqmc_scrambling.py``).

    With ``antithetic=True`` every point ``u`` is followed by its reflection ``1 - u``; since
    the cell centres are symmetric, the partner's noise is exactly ``-z``.

    Sobol' points exist for at most :data:`SOBOL_MAX_DIM` coordinates. For larger noise
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
        How many leading coordinates get Sobol' points (at most :data:`SOBOL_MAX_DIM`).
    scramble : {"nested", "lms"}
        Owen's nested uniform scramble, or linear matrix scrambling plus a digital shift.
    points_per_replicate : int, optional
        Fix 2^m. ``n_evals`` may then be any ``k · 2^m`` (times 2 with ``antithetic``) with
        ``k >= replicates``: a longer run *adds replicates* and leaves the noise of every
        earlier address unchanged (see :meth:`extendable`). By default 2^m is
        ``n_evals / replicates`` (divided by 2 with ``antithetic``).

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
    ):
        if points_per_replicate is not None and (
            isinstance(points_per_replicate, bool)
            or not isinstance(points_per_replicate, (int, np.integer))
            or points_per_replicate < 1
            or points_per_replicate & (points_per_replicate - 1)
        ):
            raise ValueError(
                f"points_per_replicate must be a power of two (1, 2, 4, ...) or None, "
                f"got {points_per_replicate!r}"
            )
        if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)):
            raise ValueError(f"replicates must be an integer >= 2, got {replicates!r}")
        if replicates < 2:
            raise ValueError(f"replicates must be >= 2 to estimate a standard error, got {replicates}")
        if basis not in ("auto", "pixel", "dct"):
            raise ValueError(f"basis must be 'auto', 'pixel' or 'dct', got {basis!r}")
        if not 1 <= max_dim <= SOBOL_MAX_DIM:
            raise ValueError(f"max_dim must be in [1, {SOBOL_MAX_DIM}], got {max_dim}")
        if scramble not in ("lms", "nested"):
            raise ValueError(f"scramble must be 'lms' or 'nested', got {scramble!r}")
        self.replicates = int(replicates)
        self.antithetic = bool(antithetic)
        self.basis = basis
        self.max_dim = int(max_dim)
        self.scramble = scramble
        self.points = None if points_per_replicate is None else int(points_per_replicate)
        self.name = "amc-rqmc" if antithetic else "rqmc"
        self.unit = 2 if antithetic else 1

    def __repr__(self) -> str:
        return (
            f"SobolRQMC(replicates={self.replicates}, antithetic={self.antithetic}, "
            f"basis={self.basis!r}, max_dim={self.max_dim}, scramble={self.scramble!r}"
            + ("" if self.points is None else f", points_per_replicate={self.points}")
            + ")"
        )

    def points_per_replicate(self, n_evals: int) -> int:
        """Number of Sobol' points 2^m in each replicate for a run of ``n_evals``."""
        self.check_n(n_evals)
        if self.points is not None:
            return self.points
        return n_evals // (self.replicates * self.unit)

    def extendable(self, n_evals: int) -> SobolRQMC:
        """This design with 2^m fixed at its value for ``n_evals``: longer runs add replicates."""
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
        return np.arange(n_evals) // (self.points_per_replicate(n_evals) * self.unit)

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
        text = (
            f"{self.name}: {count} {_SCRAMBLE_WORDS[self.scramble]} Sobol' replicates on "
            f"the leading {lead} of {dim} coordinates in the {self._resolved_basis(dim)} basis"
        )
        if lead < dim:
            kind = "antithetic pseudo-random" if self.antithetic else "pseudo-random"
            text += f"; the other {dim - lead} are {kind}"
        return text

    def draw(self, spec, seed, start, stop, n_evals):
        noise = super().draw(spec, seed, start, stop, n_evals)
        if self._resolved_basis(noise_dim(spec)) == "dct":
            noise = {name: _from_dct_coordinates(z) for name, z in noise.items()}
        return noise

    def _draw_flat(self, dim, seed, start, stop, n_evals):
        tag = _TAGS[self.name]
        lead = min(dim, self.max_dim)
        per_replicate = self.points_per_replicate(n_evals) * self.unit
        out = np.empty((stop - start, dim))
        a = start
        while a < stop:
            r, offset = divmod(a, per_replicate)
            b = min(stop, (r + 1) * per_replicate)
            first, last = offset // self.unit, (b - 1 - r * per_replicate) // self.unit
            u = self._unit_points(lead, _rng(seed, tag, r, 0), first, last - first + 1)
            z = np.empty((last - first + 1, dim))
            z[:, :lead] = ndtri(u)
            for k in range(first, last + 1):
                if lead < dim:
                    z[k - first, lead:] = _rng(seed, tag, r, 1, k).standard_normal(dim - lead)
            addresses = np.arange(a, b) - r * per_replicate
            points = z[addresses // self.unit - first]
            if self.antithetic:
                points[addresses % 2 == 1] *= -1.0
            out[a - start : b - start] = points
            a = b
        return out

    def _unit_points(self, dim: int, rng: np.random.Generator, first: int, count: int) -> np.ndarray:
        """Points ``first .. first + count - 1`` of one scrambled replicate, centred in their cells.

        Both scrambles keep every replicate a (t, m, s)-net; each point is moved to the centre
        of its cell of width 2^-30, so ``1 - u`` is again a cell centre.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # balance needs 2^m: we use 2^m
            engine = qmc.Sobol(d=dim, scramble=self.scramble == "lms", bits=_SOBOL_BITS, seed=rng)
            if first:
                engine.fast_forward(first)
            if self.scramble == "lms":
                u = engine.random(count)
            else:
                key = int(rng.integers(0, 2**64, dtype=np.uint64))
                ints = (engine.random(count) * 2.0**_SOBOL_BITS).astype(np.uint64)
                u = _nested_scramble(ints, key) * 2.0**-_SOBOL_BITS
        return u + 2.0 ** -(_SOBOL_BITS + 1)


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijection of uint64 that mixes every input bit into all outputs."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _nested_scramble(points: np.ndarray, key: int) -> np.ndarray:
    r"""Owen's nested uniform scramble of ``bits``-bit integer points, one keyed hash per node.

    Write coordinate ``j`` of a point as ``x = sum_k a_k 2^(b-k)`` with ``b = _SOBOL_BITS``
    bits ``a_1 .. a_b`` (most significant first). The scrambled point has bits

    .. math:: a'_k = a_k \oplus \pi_{j,k}(a_1, \dots, a_{k-1}),

    where every node ``(j, k, a_1 .. a_{k-1})`` of the binary tree gets its own random bit
    ``pi``: the top bit of ``splitmix64(splitmix64((j, k, prefix)) ^ key)``. Distinct nodes
    hash distinct 64-bit words, so for a uniform random ``key`` the bits behave as the
    independent fair coins of nested uniform scrambling, truncated at ``b`` bits (the
    randomisation below ``2^-b`` is the cell centring of the caller).

    Parameters
    ----------
    points : array (n, d) of uint64
        Unscrambled points, each coordinate an integer in ``[0, 2^b)``.
    key : int
        Random 64-bit key of the replicate.

    Returns
    -------
    array (n, d) of uint64
        The scrambled integers.
    """
    bits = np.uint64(_SOBOL_BITS)
    column = np.arange(points.shape[1], dtype=np.uint64) << np.uint64(_SOBOL_BITS + 5)
    key64 = np.uint64(key)
    flips = np.zeros_like(points)
    for k in range(1, _SOBOL_BITS + 1):
        level = np.uint64(k)
        prefix = points >> (bits - level + np.uint64(1))
        node = prefix | (level << bits) | column
        coin = _mix64(_mix64(node) ^ key64) >> np.uint64(63)
        flips |= coin << (bits - level)
    return points ^ flips


def _frequency_order(shape: tuple[int, ...]) -> np.ndarray:
    """Flat indices of a component's DCT coefficients, lowest spatial frequency first.

    The last two axes are spatial (one for 1-d noise); ties keep flat order (step, channel).
    """
    if len(shape) == 0:
        return np.zeros(1, dtype=int)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    frequency = sum(g for g in grids[-2:])
    return np.argsort(frequency.ravel(), kind="stable")


def _from_dct_coordinates(coefficients: np.ndarray) -> np.ndarray:
    """Pixel noise ``(B, *shape)`` from DCT coefficients listed low frequency first.

    ``coefficients.reshape(B, -1)[:, i]`` is the coefficient of the i-th lowest frequency;
    the inverse orthonormal DCT-II over the spatial axes maps N(0, I) to N(0, I).
    """
    batch, shape = coefficients.shape[0], coefficients.shape[1:]
    grid = np.empty((batch, math.prod(shape)))
    grid[:, _frequency_order(shape)] = coefficients.reshape(batch, -1)
    axes = tuple(range(1, len(shape) + 1))[-2:]
    return fft.idctn(grid.reshape(batch, *shape), type=2, axes=axes, norm="ortho")


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
