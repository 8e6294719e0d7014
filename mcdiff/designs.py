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
component)`` (:func:`mcdiff.noise.standard_normal`); RQMC's Sobol' coordinates, the small part
(at most :data:`SOBOL_MAX_DIM` per evaluation), are computed once per batch: the Sobol' points
and their inverse normal CDF on the CPU, their nested scrambling (integer hashing, the dear
part) on the sampler's device.

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

import functools
import math
import warnings
from abc import ABC, abstractmethod
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import qmc

from mcdiff.noise import (
    Noise,
    NoiseSpec,
    _mix64,
    _shift_right,
    as_words,
    component_id,
    key_words,
    standard_normal,
    stream_keys,
)

SOBOL_MAX_DIM = 21201
"""The largest dimension of scipy's Sobol' direction numbers."""

_SOBOL_BITS = 30

CHUNK_VALUES = {"cpu": 2**18, "accelerator": 2**23}
"""How many values one pass of elementwise integer work covers, by device.

:class:`DesignNoise` generates this many noise values per batch at once when a sampler steps
through time, and :func:`_nested_scramble` hashes this many tree nodes (30 levels of a piece
of Sobol' coordinates) at once. On the CPU a chunk's integer work stays in the L2 cache
(``2^16`` Philox blocks, 512 KiB per word; ``2^18`` values generated an evaluation's DDPM-1000
noise 10-15% faster than ``2^17`` at a batch of 16, by fewer tensor operations, and ``2^19``
no faster); on a GPU (any other device type) each of the generator's ~130 tensor operations
is a kernel launch, so a chunk spans several steps of a large batch (``2^23`` values, 32 MiB
in float32; about 250 MiB at the generator's peak, measured on the CPU) and the launches are
paid once a chunk, not once a step. The values do not depend on the chunk (every operation
is elementwise).
"""


def _chunk_values(device: torch.device) -> int:
    return CHUNK_VALUES["cpu" if device.type == "cpu" else "accelerator"]


_TAGS = {"mc": 0, "amc": 1, "rqmc": 2, "amc-rqmc": 3}
_STREAM_KEY = 1 << 16
_SCRAMBLE_WORDS = {"nested": "nested-scrambled", "lms": "LMS+shift-scrambled"}


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent stream for ``(seed, *key)``: the single place that seeds randomness."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


SEED_LIMIT = 2**63
"""Seeds are integers in ``[0, 2^63)``: a result records its seed as a NetCDF attribute, which
holds a signed 64-bit integer at most (numpy's ``SeedSequence`` and torch take any such seed)."""


def check_seed(seed: int) -> int:
    """Return ``seed`` as an ``int`` if it is an integer in ``[0, 2^63)``, else raise ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(
            f"seed must be a non-negative integer below 2**63 (a NetCDF int64 attribute), got {seed!r}"
        )
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
    def _streams(self, seed: int, addresses: np.ndarray, n_evals: int) -> Streams:
        """The pseudo-random streams of ``addresses`` (:class:`Streams`)."""

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
        return DesignNoise(self, spec, seed, start, stop, n_evals, torch.device(device), dtype, ahead)

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

    def _basis(self, dim: int) -> str:
        return self._resolved_basis(dim)

    def _points(self, addresses: np.ndarray, n_evals: int) -> tuple[np.ndarray, np.ndarray]:
        """Global point numbers of ``addresses`` (``replicate · 2^m + k``), and which are reflections."""
        return addresses // self.unit, (addresses % 2 == 1) & self.antithetic

    def _streams(self, seed, addresses, n_evals):
        points, reflected = self._points(addresses, n_evals)
        first = int(points[0]) if len(points) else 0
        unique = np.arange(first, first + len(np.unique(points)))
        per_replicate = self.points_per_replicate(n_evals)
        keys = stream_keys(seed, _TAGS[self.name], unique // per_replicate, 1, unique % per_replicate)
        return Streams(keys, points - first, reflected)

    def _leading(self, dim, seed, addresses, n_evals, device):
        tag = _TAGS[self.name]
        lead = min(dim, self.max_dim)
        per_replicate = self.points_per_replicate(n_evals)
        points, reflected = self._points(addresses, n_evals)
        out = np.empty((len(addresses), lead))
        for r in np.unique(points // per_replicate):
            rows = np.flatnonzero(points // per_replicate == r)
            k = points[rows] - r * per_replicate
            u = self._unit_points(lead, _rng(seed, tag, int(r), 0), int(k[0]), int(k[-1] - k[0] + 1), device)
            out[rows] = ndtri(u)[k - k[0]]
        out[reflected] *= -1.0
        return out

    def _unit_points(
        self, dim: int, rng: np.random.Generator, first: int, count: int, device: torch.device
    ) -> np.ndarray:
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
                u = _nested_scramble(ints, key, device) * 2.0**-_SOBOL_BITS
        return u + 2.0 ** -(_SOBOL_BITS + 1)


def _nested_scramble(points: np.ndarray, key: int, device: torch.device) -> np.ndarray:
    r"""Owen's nested uniform scramble of ``bits``-bit integer points, one keyed hash per node.

    Write coordinate ``j`` of a point as ``x = sum_k a_k 2^(b-k)`` with ``b = _SOBOL_BITS``
    bits ``a_1 .. a_b`` (most significant first). The scrambled point has bits

    .. math:: a'_k = a_k \oplus \pi_{j,k}(a_1, \dots, a_{k-1}),

    where every node ``(j, k, a_1 .. a_{k-1})`` of the binary tree gets its own random bit
    ``pi``: the top bit of ``splitmix64(splitmix64((j, k, prefix)) ^ key)``. Distinct nodes
    hash distinct 64-bit words, so for a uniform random ``key`` the bits behave as the
    independent fair coins of nested uniform scrambling, truncated at ``b`` bits (the
    randomisation below ``2^-b`` is the cell centring of the caller).

    The hashes (about 900 integer operations per coordinate) run as torch integer operations
    on ``device``, all levels of a piece of :data:`CHUNK_VALUES` nodes at once: on a GPU this
    is the cheap part of a batch. The words are the same on every device.

    Parameters
    ----------
    points : array (n, d) of uint64
        Unscrambled points, each coordinate an integer in ``[0, 2^b)``.
    key : int
        Random 64-bit key of the replicate.
    device : torch.device
        Where to hash.

    Returns
    -------
    array (n, d) of uint64
        The scrambled integers.
    """
    bits = _SOBOL_BITS
    words = as_words(points).to(device).reshape(-1)
    level = torch.arange(1, bits + 1, device=device, dtype=torch.int64)[:, None]  # k, on axis 0
    key64 = int(as_words(key))
    size = max(1, _chunk_values(device) // bits)
    out = torch.empty_like(words)
    for first in range(0, len(words), size):  # every level of `size` coordinates at once: (bits, size) nodes
        x = words[first : first + size]
        column = torch.arange(first, first + len(x), device=device, dtype=torch.int64) % max(1, points.shape[1])
        node = (x >> (bits + 1 - level)) | (level << bits) | (column << (bits + 5))
        coin = _shift_right(_mix64(_mix64(node) ^ key64), 63)
        out[first : first + size] = x ^ (coin << (bits - level)).sum(0)  # distinct bits: the sum is an OR
    return np.ascontiguousarray(out.reshape(points.shape).cpu().numpy()).view(np.uint64)


@dataclass(frozen=True)
class Streams:
    """The pseudo-random streams of a batch: evaluation ``b`` reads stream ``index[b]``, negated if ``negate[b]``.

    ``keys`` ``(U,)`` are the 64-bit Philox keys of the distinct streams (an antithetic pair
    shares one); ``index`` ``(B,)`` defaults to one stream per evaluation, ``negate`` to none.
    """

    keys: np.ndarray
    index: np.ndarray | None = None
    negate: np.ndarray | None = None


def _frame_layout(shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Per-step frame shape and frame count of a component: frames are its last three axes.

    A component ``(T, C, H, W)`` is ``T`` frames ``(C, H, W)``, drawn one at a time; one of
    three axes or fewer is a single frame.
    """
    frame = tuple(shape[-3:])
    return frame, math.prod(shape[:-3])


def _coordinate_ranks(shape: tuple[int, ...], basis: str) -> tuple[np.ndarray, np.ndarray]:
    """Rank of every coordinate of frame ``f`` in the component's coordinate order: ``base + f · stride``.

    ``"pixel"``: the flat index. ``"dct"``: the position of the coefficient when the
    component's coefficients are listed lowest spatial frequency ``h + w`` first (over its
    last two axes), ties in flat order (step, channel, h). With ``P`` positions before the
    spatial axes and ``N(f)``, ``M(f)`` the numbers of ``(h, w)`` with ``h + w < f``,
    ``h + w = f``, coefficient ``(o, h, w)`` has rank ``P N(h + w) + o M(h + w) + h - h_min``.

    Returns
    -------
    base, stride : int64 arrays of the frame's shape
    """
    frame, _ = _frame_layout(shape)
    size = math.prod(frame)
    if basis == "pixel" or len(shape) < 2:
        return np.arange(size).reshape(frame), np.full(frame, size)
    height, width = shape[-2:]
    h, w = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    frequency = (h + w).ravel()
    per_frequency = np.bincount(frequency, minlength=height + width - 1)
    below = np.concatenate([[0], np.cumsum(per_frequency)[:-1]])
    h_min = np.maximum(0, np.arange(height + width - 1) - (width - 1))
    outer, outer_per_frame = math.prod(shape[:-2]), math.prod(frame[:-2])
    within = (h.ravel() - h_min[frequency]).reshape(height, width)
    count, first = per_frequency[frequency].reshape(height, width), below[frequency].reshape(height, width)
    channel = np.arange(outer_per_frame).reshape(*frame[:-2], 1, 1)
    return outer * first + channel * count + within, np.broadcast_to(outer_per_frame * count, frame).copy()


def _inverse_dct(coefficients: torch.Tensor, axes: int) -> torch.Tensor:
    """Orthonormal inverse DCT-II of the last ``axes`` (1 or 2) axes: maps N(0, I) to N(0, I).

    ``x_n = sum_k s_k c_k cos(pi (2n + 1) k / 2N)`` with ``s_0 = sqrt(1/N)``, ``s_k = sqrt(2/N)``.
    Since ``cos(pi (2(N-1-n) + 1) k / 2N) = (-1)^k cos(pi (2n + 1) k / 2N)``, the even-``k`` and
    odd-``k`` sums ``E_n``, ``O_n`` over the first half of the positions give both halves,
    ``x_n = E_n + O_n`` and ``x_{N-1-n} = E_n - O_n``: half the arithmetic of the direct sum. Each
    sum runs term by term in ``k`` order with elementwise operations on the tensor's own
    device, so that each value is the same whatever the batch (a matrix product's summation
    order may depend on its shape). The coefficients are laid out ``k`` first, so that a term
    is one contiguous slab times one basis value per position ``n``.
    """
    for axis in range(-axes, 0):
        moved = torch.movedim(coefficients, axis, 0)
        n, rest, half = moved.shape[0], moved.shape[1:], (moved.shape[0] + 1) // 2
        terms = moved.reshape(n, 1, -1).contiguous()  # (k, 1, everything else)
        basis = _dct_matrix(n, terms.device, terms.dtype)[:, :half, None]  # (k, n, 1)
        even, odd = (terms.new_zeros((half, terms.shape[-1])) for _ in range(2))
        for k in range(n):
            (odd if k % 2 else even).addcmul_(terms[k], basis[k])
        mirrored = (even - odd)[: n // 2].flip(0)
        coefficients = torch.movedim(torch.cat([even.add_(odd), mirrored]).reshape(n, *rest), 0, axis)
    return coefficients


@functools.lru_cache(maxsize=16)
def _dct_matrix(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``(k, n)``: row ``k`` is ``s_k cos(pi (2n + 1) k / 2N)``."""
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    basis[0] /= np.sqrt(2)
    return torch.from_numpy(basis).to(device=device, dtype=dtype)


class DesignNoise(Noise):
    """The noise of a batch of addresses under one design, generated when a sampler asks for it.

    Made by :meth:`Design.noise`. Pseudo-random values come from Philox streams keyed by the
    design (:class:`Streams`); the leading Sobol' coordinates of RQMC designs, computed when
    this object is made, replace their share of them; the DCT basis is undone last.

    ``noise.step("steps", i)`` generates the frames of steps ``i, i + 1, ...`` together, as
    many whole steps as fill :data:`CHUNK_VALUES` values for the batch on its device (one
    step when a step alone is larger), keeps them until a step outside them is asked for,
    and hands out step ``i``: memory is bounded by two chunks, whatever the number of steps,
    and small batches pay the per-operation cost of the generator once a chunk instead of
    once a step. With an executor ``ahead``, the chunk after the one in use is generated on
    its thread while the sampler runs, so that where a processor is free (or the device
    queues the work) the sampler does not wait for its noise; the values are the same.
    """

    def __init__(self, design, spec, seed, start, stop, n_evals, device, dtype, ahead: Executor | None = None):
        if not dtype.is_floating_point:
            raise ValueError(f"noise dtype must be floating point, got {dtype}")
        self.spec = {name: tuple(int(s) for s in shape) for name, shape in spec.items()}
        self.device, self.dtype, self.batch = device, dtype, stop - start
        dim = noise_dim(self.spec)
        addresses = np.arange(start, stop)
        self.streams = design._streams(seed, addresses, n_evals)
        self.basis = design._basis(dim)
        self._leading_values = design._leading(dim, seed, addresses, n_evals, device)
        self._leading_tensor: torch.Tensor | None = None
        self._ranks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        offsets = np.cumsum([0] + [math.prod(s) for s in self.spec.values()])
        self._offsets = dict(zip(self.spec, offsets.tolist()))
        self._key = key_words(self.streams.keys, device)
        self._chunk: tuple[str, int, torch.Tensor] | None = None
        self._ahead, self._pending = ahead, None
        self._index = None if self.streams.index is None else torch.from_numpy(self.streams.index).to(device)
        self._sign = (
            None
            if self.streams.negate is None or not self.streams.negate.any()
            else torch.from_numpy(np.where(self.streams.negate, -1.0, 1.0)).to(device=device, dtype=dtype)
        )

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self._shape(name)
        _, count = _frame_layout(shape)
        return self._frames(name, np.arange(count)).reshape(self.batch, *shape)

    def step(self, name: str, index: int) -> torch.Tensor:
        shape = self._step_shape(name, index)
        if len(shape) < 4:
            return super().step(name, index)
        per_step = math.prod(shape[1:-3])
        first, last = index * per_step, (index + 1) * per_step
        held, start, frames = self._chunk or (None, 0, None)
        if held != name or not start <= first < last <= start + frames.shape[1]:
            start, frames = first, self._chunk_from(name, first)
            self._chunk = (name, start, frames)
            following = start + frames.shape[1]
            if self._ahead is not None and following < _frame_layout(shape)[1]:
                self._pending = (name, following, self._ahead.submit(self._make_chunk, name, following))
        return frames[:, first - start : last - start].reshape(self.batch, *shape[1:])

    def _chunk_from(self, name: str, first: int) -> torch.Tensor:
        """The chunk that starts at frame ``first``: the one made ahead if it is that one."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[:2] == (name, first) and not pending[2].cancel():
            return pending[2].result()  # running or done: its work is the work needed
        return self._make_chunk(name, first)

    def _make_chunk(self, name: str, first: int) -> torch.Tensor:
        """As many whole steps from frame ``first`` as fill :data:`CHUNK_VALUES` (at least one)."""
        shape = self.spec[name]
        per_step, (frame, count) = math.prod(shape[1:-3]), _frame_layout(shape)
        steps = max(1, _chunk_values(self.device) // (self.batch * math.prod(frame) * per_step))
        return self._frames(name, np.arange(first, min(count, first + steps * per_step)))

    def _frames(self, name: str, frames: np.ndarray) -> torch.Tensor:
        """Frames ``frames`` of component ``name``: ``(B, len(frames), *frame)``."""
        shape = self.spec[name]
        frame, _ = _frame_layout(shape)
        size = math.prod(frame)
        lead = 0 if self._leading_values is None else self._leading_values.shape[1]
        rank = chosen = None
        if lead:
            if name not in self._ranks:
                self._ranks[name] = tuple(r.reshape(1, -1) for r in _coordinate_ranks(shape, self.basis))
            base, stride = self._ranks[name]
            rank = self._offsets[name] + base + frames[:, None] * stride
            chosen = rank < lead  # the coordinates that get Sobol' values
        if chosen is not None and chosen.all():
            z = torch.empty((self.batch, len(frames), size), device=self.device, dtype=self.dtype)
        else:
            z = standard_normal(self._key, component_id(name), torch.from_numpy(frames), size, self.dtype)
            if self._index is not None:
                z = z[self._index]
            if self._sign is not None:
                z = z * self._sign[:, None, None]
        if chosen is not None and chosen.any():
            sobol = self._leading()[:, torch.from_numpy(rank[chosen]).to(self.device)]
            z[:, torch.from_numpy(chosen).to(self.device)] = sobol
        z = z.reshape(self.batch, len(frames), *frame)
        if self.basis == "dct" and len(shape):
            z = _inverse_dct(z, min(len(shape), 2))
        return z

    def _leading(self) -> torch.Tensor:
        """The leading Sobol' coordinates ``(B, lead)`` on the device, moved there on first use."""
        if self._leading_tensor is None:
            self._leading_tensor = torch.from_numpy(self._leading_values).to(device=self.device, dtype=self.dtype)
        return self._leading_tensor


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
