"""One streaming loop: accumulators folded in address order give the same bits whatever the block
size, the executor or a SIGKILL and resume; memory does not hold per-evaluation values unless
asked; multi-fidelity runs through the same loop (store, resume, Dask)."""

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_store import CountingSampler

import mcdiff
from mcdiff.estimators import summarize, variance_interval
from mcdiff.executors import DaskExecutor
from mcdiff.moments import GroupMoments
from mcdiff.store import open_draws

DESIGNS = ["mc", "amc", "rqmc", "amc-rqmc"]
MAPS = ["pixel_mean", "brightness"]
RUN = dict(statistics=MAPS, designs=DESIGNS, n_evals=256, seed=3, batch_size=32, progress=False)
RQMC = dict(statistics=["pixel_mean"], designs=["rqmc"], n_evals=1024, seed=7, batch_size=16, progress=False)
MF = dict(statistics=["pixel_mean", "brightness"], fidelities=[2, 4], designs=["mc", "amc"], method="cv",
          n_evals=[64, 32], pilot=32, seed=4, batch_size=16, progress=False)


class LevelCounter(mcdiff.GaussianSampler):
    """The probit analytic model at any step count; all its fidelities count sampler calls in one
    counter and kill the process at call ``kill_at``."""

    def __init__(self, kill_at=None, steps=4, counter=None):
        super().__init__(mean=np.linspace(0.15, 0.85, 16).reshape(1, 4, 4), std=0.25, image_shape=(1, 4, 4),
                         num_inference_steps=steps, output="probit")
        self.kill_at, self.counter = kill_at, {"calls": 0} if counter is None else counter

    def with_scheduler(self, scheduler, num_inference_steps):
        return LevelCounter(self.kill_at, num_inference_steps, self.counter)

    def sample(self, noise):
        self.counter["calls"] += 1
        if self.counter["calls"] == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().sample(noise)


def _core(result):
    """The nodes a streaming result is made of (no per-evaluation values), without where values went."""
    nodes = {name: result[name].to_dataset() for name in ("summary", "moments")}
    nodes["summary"].attrs.pop("draws")
    return nodes


def _same(a, b):
    for name, node in _core(a).items():
        assert node.identical(_core(b)[name]), name


def test_moments_do_not_depend_on_how_the_values_are_cut():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 0.01, (512, 5))
    whole = GroupMoments.from_values(values, 4)
    for cut in ([0, 4, 100, 512], [0, 3, 5, 6, 258, 512], list(range(0, 513, 8)), list(range(0, 513, 1))):
        pieces = GroupMoments(4)
        for a, b in zip(cut[:-1], cut[1:]):
            pieces.fold(values[a:b])
        for field in whole.sums:
            np.testing.assert_array_equal(pieces.sums[field], whole.sums[field])


def test_moments_agree_with_two_pass_formulas_to_1e_12():
    """Shifted sums against numpy's two-pass mean and variance, on a mean 300 times the spread."""
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 0.01, (4096, 3))
    groups = np.arange(4096) // 2
    means = values.reshape(2048, 2, 3).mean(axis=1)
    fields = summarize(values, groups)
    np.testing.assert_allclose(fields["estimate"], means.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(fields["std_error"], means.std(axis=0, ddof=1) / np.sqrt(2048), rtol=1e-9)
    h = (values - values.mean(axis=0)) ** 2
    spread = variance_interval(values, groups)
    np.testing.assert_allclose(spread["std_error"], h.reshape(2048, 2, 3).mean(1).std(0, ddof=1) / np.sqrt(2048), rtol=1e-8)


def test_pixel_maps_are_bit_identical_across_block_and_batch_sizes():
    model = CountingSampler()
    first = mcdiff.estimate(model, **RUN, draws="none")
    assert "draws" not in first.children and first["summary"].attrs["draws"] == "none"
    for batch, block in ((16, None), (32, 96), (64, 256)):
        _same(mcdiff.estimate(model, **{**RUN, "batch_size": batch}, block_size=block, draws="none"), first)
    kept = mcdiff.estimate(model, **RUN, draws="memory")
    _same(kept, first)  # keeping the values changes nothing else
    again = mcdiff.results.summarize_draws(kept["draws"].to_dataset(), 0.95, 4)
    assert again["pixel_mean"].identical(first["summary"]["pixel_mean"])  # the in-memory path: the same bits


def test_variance_map_comes_from_the_moments_and_equals_the_values_formula():
    result = mcdiff.estimate(CountingSampler(), **RUN, draws="memory")
    vmap = mcdiff.variance_map(result, "pixel_mean")
    for design in DESIGNS:
        values = result["draws"]["pixel_mean"].sel(design=design).values
        groups = result["draws"]["group"].sel(design=design).values
        direct = variance_interval(values, groups)
        np.testing.assert_array_equal(vmap.sel(design=design, summary="std_error").values, direct["std_error"])


def test_auto_keeps_small_values_and_drops_large_ones(monkeypatch):
    small = mcdiff.estimate(CountingSampler(), **RUN)
    assert small["summary"].attrs["draws"] == "memory" and "draws" in small.children
    monkeypatch.setattr(mcdiff.runner, "DRAWS_LIMIT", 256 * 16 * 8 - 1)  # just below one design's pixel map
    large = mcdiff.estimate(CountingSampler(), **RUN)
    assert large["summary"].attrs["draws"] == "none" and list(large["draws"].data_vars) == ["brightness"]
    _same(large, small)  # per statistic: the small brightness is kept, the pixel map is not
    np.testing.assert_array_equal(large["draws"]["brightness"].values, small["draws"]["brightness"].values)
    nothing = mcdiff.estimate(CountingSampler(), **RUN, draws="none")
    with pytest.raises(ValueError, match="no /draws"):
        mcdiff.to_arviz(nothing, "mc")


def test_values_kept_in_the_store_read_lazily(tmp_path):
    result = mcdiff.estimate(CountingSampler(), **RUN, store=tmp_path / "s", draws="store")
    assert "draws" not in result.children and result["summary"].attrs["draws"] == "store"
    lazy = open_draws(tmp_path / "s", "amc")
    kept = mcdiff.estimate(CountingSampler(), **RUN, draws="memory")
    assert lazy["pixel_mean"].shape == (256, 1, 4, 4) and lazy["pixel_mean"].chunks[0] == (32,) * 8
    np.testing.assert_array_equal(lazy["pixel_mean"].compute(), kept["draws"]["pixel_mean"].sel(design="amc").values)
    mcdiff.estimate(CountingSampler(), **RUN, store=tmp_path / "none", draws="none")
    with pytest.raises(ValueError, match="draws='memory' cannot be served"):
        mcdiff.estimate(CountingSampler(), **RUN, store=tmp_path / "none", draws="memory")


def _killed_run(store: Path, call: str, kill_at: int) -> None:
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import mcdiff; "
        f"from test_store import CountingSampler; from test_streaming import RUN, MF, RQMC, LevelCounter; {call}"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mcdiff.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script.format(store=str(store), kill=kill_at)], env=env,
                          capture_output=True, timeout=180, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def test_sigkill_then_resume_from_the_accumulators_alone(tmp_path):
    store = tmp_path / "s"
    _killed_run(store, "mcdiff.estimate(CountingSampler(kill_at={kill}), store={store!r}, **RUN, draws='none')", 19)
    states = {p.parent.name: p for p in store.glob("jobs/*/state.npz")}
    assert not list(store.glob("jobs/*/blocks/*.npz"))  # no per-evaluation values were written
    folded = sum(int(np.load(p)["prefix"]) for p in states.values())
    assert folded == 18 * 32  # every block folded before the kill was saved
    sampler = CountingSampler()
    resumed = mcdiff.estimate(sampler, **RUN, store=store, draws="none")
    assert sampler.evaluated == 4 * 256 - folded  # nothing folded is computed again
    _same(resumed, mcdiff.estimate(CountingSampler(), **RUN, draws="none"))


def test_a_replicate_split_across_blocks_resumes_mid_replicate(tmp_path):
    """RQMC replicates of 64 points in blocks of 16: killed inside the third replicate, resumed to the same bits."""
    store = tmp_path / "s"
    _killed_run(store, "mcdiff.estimate(CountingSampler(kill_at={kill}), store={store!r}, draws='none', **RQMC)", 10)
    state = np.load(store / "jobs" / "rqmc" / "state.npz")
    assert int(state["prefix"]) == 9 * 16 and int(state["m0_open_count"]) == 9 * 16 - 2 * 64
    sampler = CountingSampler()
    resumed = mcdiff.estimate(sampler, store=store, draws="none", **RQMC)
    assert sampler.evaluated == 1024 - 9 * 16
    _same(resumed, mcdiff.estimate(CountingSampler(), draws="none", **{**RQMC, "batch_size": 256}))


def test_multifidelity_is_bit_identical_across_block_sizes_and_after_sigkill(tmp_path):
    base = mcdiff.estimate_multifidelity(LevelCounter(), **MF)
    other = mcdiff.estimate_multifidelity(LevelCounter(), **{**MF, "batch_size": 32}, block_size=64)
    assert other.identical(base)
    store = tmp_path / "mf"
    # per design: a coupled pilot of 2 batches (4 calls), level 0 of 4 batches, a coupled level 1 of 2 (4 calls)
    _killed_run(store, "mcdiff.estimate_multifidelity(LevelCounter(kill_at={kill}), store={store!r}, **MF)", 14)
    assert len(list(store.glob("jobs/*.pilot/blocks/*.npz"))) == 4 and list(store.glob("jobs/*.final/state.npz"))
    sampler = LevelCounter()
    resumed = mcdiff.estimate_multifidelity(sampler, **MF, store=store)
    assert resumed.identical(base)
    # killed in the first coupled batch of design mc's level 1: the 12 calls before it were folded, not redone
    assert sampler.counter["calls"] == 2 * (4 + 4 + 4) - 12
    again = LevelCounter()
    assert mcdiff.estimate_multifidelity(again, **MF, store=store).identical(base) and again.counter["calls"] == 0


def test_a_foreign_store_is_refused_for_a_multifidelity_run(tmp_path):
    store = tmp_path / "mf"
    mcdiff.estimate_multifidelity(LevelCounter(), **MF, store=store)
    with pytest.raises(ValueError, match=r"(?s)was written by a different run.*pilot: stored 32, requested 16"):
        mcdiff.estimate_multifidelity(LevelCounter(), **{**MF, "pilot": 16}, store=store)
    mcdiff.estimate(LevelCounter(), **RUN, store=tmp_path / "plain")
    with pytest.raises(ValueError, match="was written by a different run"):
        mcdiff.estimate_multifidelity(LevelCounter(), **MF, store=tmp_path / "plain")
    fingerprint = json.loads((store / "fingerprint.json").read_text())
    assert fingerprint["multifidelity"]["method"] == "cv" and fingerprint["format"] == "mcdiff-store/3"


distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def test_dask_gives_the_local_bits_for_pixel_maps_and_multifidelity(client):
    local = mcdiff.estimate(CountingSampler(), **RUN, draws="none")
    remote = mcdiff.estimate(functools.partial(CountingSampler), **RUN, draws="none", block_size=32,
                             executor=DaskExecutor(client))
    _same(remote, local)
    base = mcdiff.estimate_multifidelity(LevelCounter(), **MF)
    on_dask = mcdiff.estimate_multifidelity(functools.partial(LevelCounter), **MF, block_size=16,
                                            executor=DaskExecutor(client))
    assert on_dask.identical(base)
    grown = dict(statistics=["brightness"], designs=[mcdiff.SobolRQMC(grow="adaptive")], n_evals=64, seed=2,
                 batch_size=16, progress=False, draws="none", target_ci_width=1e-9, max_evals=512)
    with pytest.warns(RuntimeWarning, match="target not reached"):
        here = mcdiff.estimate(CountingSampler(), **grown)
        there = mcdiff.estimate(functools.partial(CountingSampler), **grown, block_size=32, executor=DaskExecutor(client))
    assert "grown 16x4, +" in str(here["summary"]["noise"].values[0])  # an adaptive layout, its choices the same there
    _same(there, here)


@pytest.mark.parametrize("width", [1, 64, 65, 300])
def test_narrow_and_wide_values_are_added_in_the_same_order(width):
    """The cumsum path (narrow values) and the row-by-row path (wide ones) give the same bits."""
    from mcdiff import moments

    rng = np.random.default_rng(width)
    terms, total = rng.normal(size=(100, width)), rng.normal(size=width)
    expected = total.copy()
    for row in terms:
        expected = expected + row
    np.testing.assert_array_equal(moments._add_in_order(total, terms), expected)


def test_diagnostic_pairs_run_through_the_loop_and_resume_from_a_store(tmp_path):
    from mcdiff.diagnostics import generate_pairs
    from mcdiff.runner import sample_images

    sampler = CountingSampler()
    pairs = generate_pairs(sampler, 8, seed=3, batch_size=4, store=tmp_path / "s")
    assert sampler.evaluated == 32
    np.testing.assert_array_equal(pairs.sel(pairing="PN").values.reshape(16, 1, 4, 4),
                                  sample_images(CountingSampler(), mcdiff.Antithetic(), 16, 3, 16))
    again = CountingSampler()
    assert generate_pairs(again, 8, seed=3, batch_size=8, store=tmp_path / "s").identical(pairs) and again.evaluated == 0
    with pytest.raises(ValueError, match="was written by a different run"):
        generate_pairs(CountingSampler(), 8, seed=4, store=tmp_path / "s")
