"""Designs: marginal N(0, I), purity in (seed, design, address), pairs, Sobol' structure."""

import numpy as np
import pytest
import torch
from scipy import stats

import mcdiff.noise.chunks
from mcdiff.designs import Antithetic, InterleavedLayout, MonteCarlo, SobolRQMC, get_design, noise_dim

SPEC = {"x_T": (1, 2, 2), "steps": (3, 1, 2, 2)}
DESIGNS = [
    MonteCarlo(),
    Antithetic(),
    SobolRQMC(replicates=4),
    SobolRQMC(replicates=4, antithetic=True),
    SobolRQMC(replicates=4, max_dim=5),  # DCT basis with pseudo-random padding
    SobolRQMC(replicates=4, antithetic=True, max_dim=5),
    SobolRQMC(replicates=4, antithetic=True, scramble="lms"),
]
IDS = [repr(d) for d in DESIGNS]


def flat(noise):
    return np.concatenate([z.reshape(len(z), -1) for z in noise.values()], axis=1)


@pytest.mark.parametrize("design", DESIGNS, ids=IDS)
def test_every_evaluation_is_marginally_standard_normal(design):
    """Evaluation at a fixed address over 1000 seeds is an iid sample of its marginal.

    KS test of every coordinate at 3 addresses (48 tests per design) at alpha = 1e-4:
    family-wise false-failure rate below 0.5% per design (the 5-SE moment checks add
    under 0.01%); fixed seeds make the outcome deterministic.
    """
    n_evals = 32
    for address in (0, 1, n_evals - 1):
        z = np.stack([flat(design.draw(SPEC, seed, address, address + 1, n_evals))[0] for seed in range(1000)])
        for k in range(z.shape[1]):
            assert stats.kstest(z[:, k], "norm").pvalue > 1e-4, (address, k)
        # moments: 5 standard errors (SE of a mean 1/sqrt(1000), of a variance sqrt(2/1000))
        assert np.abs(z.mean(axis=0)).max() < 5 / np.sqrt(1000)
        assert np.abs(z.var(axis=0) - 1).max() < 5 * np.sqrt(2 / 1000)


@pytest.mark.parametrize("design", DESIGNS, ids=IDS)
def test_noise_is_a_pure_function_of_seed_design_address(design):
    n_evals = 32
    whole = flat(design.draw(SPEC, 7, 0, n_evals, n_evals))
    for step in (design.unit, 6, 10):
        pieces = [flat(design.draw(SPEC, 7, a, min(a + step, n_evals), n_evals)) for a in range(0, n_evals, step)]
        np.testing.assert_array_equal(np.concatenate(pieces), whole)
    assert not np.array_equal(flat(design.draw(SPEC, 8, 0, n_evals, n_evals)), whole)


@pytest.mark.parametrize("design", [d for d in DESIGNS if d.unit == 2], ids=lambda d: repr(d))
def test_antithetic_partners_negate_the_whole_noise_path(design):
    z = flat(design.draw(SPEC, 3, 0, 32, 32))
    np.testing.assert_array_equal(z[1::2], -z[0::2])
    assert np.abs(z[0::2]).min() > 0


def test_designs_differ_from_each_other():
    draws = [flat(d.draw(SPEC, 0, 0, 32, 32)) for d in DESIGNS[:4]]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(draws[i], draws[j])


@pytest.mark.parametrize("antithetic", [False, True])
def test_each_rqmc_replicate_is_stratified_like_a_sobol_net(antithetic):
    """A (0, m, 1)-net per coordinate: Phi(z) puts one point in each of 2^m equal intervals."""
    design = SobolRQMC(replicates=2, antithetic=antithetic)
    points = 16
    n_evals = 2 * points * design.unit
    z = flat(design.draw({"x_T": (6,)}, 11, 0, n_evals, n_evals))
    u = stats.norm.cdf(z)
    groups = design.group_ids(n_evals)
    for r in (0, 1):
        block = u[groups == r][:: design.unit]
        for k in range(u.shape[1]):
            assert sorted(np.floor(block[:, k] * points).astype(int)) == list(range(points))


def _splitmix64(x: int) -> int:
    mask = 2**64 - 1
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_nested_scramble_is_its_definition_in_exact_integers():
    """Bit k of coordinate j flips by the top bit of splitmix64(splitmix64(node) ^ key), node
    = (j << 35) | (k << 30) | prefix: the torch integer words equal Python's exact integers,
    chunked or not."""
    from mcdiff.noise.sobol import SOBOL_BITS, nested_scramble

    rng = np.random.default_rng(7)
    points = rng.integers(0, 2**SOBOL_BITS, size=(5, 9), dtype=np.uint64)
    key = int(rng.integers(0, 2**64, dtype=np.uint64))
    expected = np.empty_like(points)
    for (i, j), x in np.ndenumerate(points):
        x, b, flips = int(x), SOBOL_BITS, 0
        for k in range(1, b + 1):
            node = (x >> (b - k + 1)) | (k << b) | (j << (b + 5))
            flips |= (_splitmix64(_splitmix64(node) ^ key) >> 63) << (b - k)
        expected[i, j] = x ^ flips
    np.testing.assert_array_equal(nested_scramble(points, key, torch.device("cpu")), expected)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(mcdiff.noise.chunks.CHUNK_VALUES, "cpu", 9)  # one coordinate at a time
        np.testing.assert_array_equal(nested_scramble(points, key, torch.device("cpu")), expected)


def test_nested_scramble_gives_nets_uniform_in_every_coordinate():
    """Nested scrambling: each replicate is a (0, m, 1)-net per coordinate, and across seeds
    a coordinate of a fixed point is uniform on [0, 1) (Kolmogorov-Smirnov)."""
    design = SobolRQMC(replicates=4, scramble="nested")
    points, dim = 32, 5
    z = flat(design.draw({"x_T": (dim,)}, 3, 0, 4 * points, 4 * points))
    u = stats.norm.cdf(z)
    for r in range(4):
        for k in range(dim):
            block = u[r * points : (r + 1) * points, k]
            assert sorted(np.floor(block * points).astype(int)) == list(range(points))
    first = np.array([stats.norm.cdf(flat(design.draw({"x_T": (dim,)}, s, 0, 8, 8))[1]) for s in range(400)])
    for k in range(dim):
        assert stats.kstest(first[:, k], "uniform").pvalue > 1e-3
    assert "nested-scrambled" in design.describe({"x_T": (dim,)})
    assert "LMS" in SobolRQMC(4, scramble="lms").describe({"x_T": (dim,)})


def test_dct_basis_gives_the_leading_low_frequency_coordinate_sobol_points():
    """With one Sobol' coordinate in the DCT basis, the image-mean of the noise is stratified."""
    design = SobolRQMC(replicates=2, basis="dct", max_dim=1)
    shape = (1, 4, 4)
    z = design.draw({"x_T": shape}, 5, 0, 32, 32)["x_T"]
    dc = z.reshape(32, -1).sum(axis=1) / np.sqrt(16)  # orthonormal DC coefficient
    u = stats.norm.cdf(dc[:16])
    assert sorted(np.floor(u * 16).astype(int)) == list(range(16))
    assert "dct basis" in design.describe({"x_T": shape})
    assert "15 are pseudo-random" in design.describe({"x_T": shape})


def test_group_ids():
    np.testing.assert_array_equal(MonteCarlo().group_ids(4), [0, 1, 2, 3])
    np.testing.assert_array_equal(Antithetic().group_ids(6), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(SobolRQMC(2).group_ids(8), [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(SobolRQMC(2, antithetic=True).group_ids(8), [0, 0, 0, 0, 1, 1, 1, 1])


def test_an_interleaved_layout_places_every_point_of_its_rectangles_once_and_in_order():
    layout = InterleavedLayout.start(4, 2).doubled("replicates").doubled("points").doubled("replicates")
    assert (layout.replicates, layout.points, layout.size) == (16, 4, 64) and layout.describe() == "4x2, +replicates, +points, +replicates"
    replicate, index = layout.locate(np.arange(layout.size))
    assert sorted(zip(replicate.tolist(), index.tolist())) == [(r, k) for r in range(16) for k in range(4)]
    for r in range(16):  # each replicate's points arrive in order 0, 1, 2, ...
        assert index[replicate == r].tolist() == list(range(4))
    np.testing.assert_array_equal(replicate[:8], [0, 1, 2, 3, 0, 1, 2, 3])  # point-major within a rectangle
    assert layout.extends(InterleavedLayout.start(4, 2).doubled("replicates")) and not layout.extends(InterleavedLayout.start(4, 4))
    points = np.arange(1000)  # past its rectangles a layout doubles points: start(R, 1) is point k of replicate r at k R + r
    np.testing.assert_array_equal(np.stack(InterleavedLayout.start(8, 1).locate(points)), np.stack([points % 8, points // 8]))
    with pytest.raises(ValueError, match="doubles its 'points' or its 'replicates'"):
        layout.doubled("both")


def test_adaptive_rqmc_evaluates_the_points_of_the_default_layout_and_grows_by_rectangles():
    spec = {"x_T": (1, 2, 2)}
    adaptive, default = SobolRQMC(4, grow="adaptive"), SobolRQMC(4)
    first = adaptive.extendable(32)
    assert first.layout == InterleavedLayout.start(4, 8) and first.extendable(64) is first
    a, b = adaptive.draw(spec, 3, 0, 32, 32)["x_T"], default.draw(spec, 3, 0, 32, 32)["x_T"]
    order = np.argsort(a[:, 0, 0, 0])
    np.testing.assert_array_equal(a[order], b[np.argsort(b[:, 0, 0, 0])])
    grown = first.grown("replicates")
    np.testing.assert_array_equal(grown.draw(spec, 3, 0, 32, 64)["x_T"], a)  # earlier addresses keep their noise
    addresses = np.arange(64)
    np.testing.assert_array_equal(grown.group_ids(64), np.where(addresses < 32, addresses % 4, 4 + addresses % 4))
    assert "8 (grown 4x8, +replicates) nested-scrambled" in grown.describe(spec)
    with pytest.raises(ValueError, match="only an extendable design with grow='adaptive'"):
        adaptive.grown("points")
    with pytest.raises(ValueError, match="a layout belongs to grow='adaptive'"):
        SobolRQMC(4, layout=InterleavedLayout.start(4, 2))


def test_names_resolve():
    assert [get_design(n).name for n in ("mc", "amc", "rqmc", "amc-rqmc")] == ["mc", "amc", "rqmc", "amc-rqmc"]
    assert noise_dim(SPEC) == 16


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: Antithetic().check_n(101), r"n_evals=101 is odd.*100 or 102"),
        (lambda: Antithetic().check_n(2), "too small"),
        (lambda: MonteCarlo().check_n(2.5), "must be an integer"),
        (lambda: SobolRQMC(16).check_n(1000), r"n_evals=1000 is not replicates·2\^m.*512 and 1024"),
        (lambda: SobolRQMC(4, antithetic=True).check_n(24), r"not 2·replicates·2\^m"),
        (lambda: SobolRQMC(1), "replicates must be >= 2"),
        (lambda: SobolRQMC(4, basis="wavelet"), "basis must be"),
        (lambda: SobolRQMC(4, max_dim=30000), "max_dim must be in"),
        (lambda: SobolRQMC(4, scramble="owen"), "scramble must be"),
        (lambda: SobolRQMC(4, grow="both"), "grow must be 'replicates', 'points' or 'adaptive'"),
        (lambda: SobolRQMC(4, grow="adaptive", points_per_replicate=4), "points_per_replicate must be None"),
        (lambda: get_design("qmc"), "unknown design 'qmc'; known: mc, amc, rqmc, amc-rqmc"),
        (lambda: MonteCarlo().draw(SPEC, -1, 0, 2, 4), "seed must be a non-negative integer"),
        (lambda: MonteCarlo().draw(SPEC, 0, 2, 6, 4), r"addresses \[2, 6\) are outside"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(call, match):
    with pytest.raises(ValueError, match=match):
        call()
