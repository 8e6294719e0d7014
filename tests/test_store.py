"""The result store: a run killed with SIGKILL resumes to the uninterrupted result, and a store
that is foreign, damaged or from another run is refused with a message naming the problem."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mcdiff
from mcdiff.store import ResultStore

DESIGNS = ["mc", "amc", "rqmc", "amc-rqmc"]
STATS = ["brightness", "centroid"]
RUN = dict(statistics=STATS, designs=DESIGNS, n_evals=256, seed=5, batch_size=32, progress=False)


class CountingSampler(mcdiff.GaussianSampler):
    """The probit analytic model; counts evaluations, and kills its own process at call ``kill_at``."""

    def __init__(self, kill_at=None):
        super().__init__(
            mean=np.linspace(0.15, 0.85, 16).reshape(1, 4, 4),
            std=0.25,
            image_shape=(1, 4, 4),
            num_inference_steps=4,
            output="probit",
        )
        self.kill_at, self.calls, self.evaluated = kill_at, 0, 0

    def sample(self, noise):
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.evaluated += len(noise["x_T"])
        return super().sample(noise)


@pytest.fixture(scope="module")
def uninterrupted():
    return mcdiff.estimate(CountingSampler(), **RUN)


def _stored(path):
    return sum(
        int(f.stem.split("-")[1]) - int(f.stem.split("-")[0]) for f in Path(path).glob("jobs/*/blocks/*.npz")
    )


def test_sigkill_then_resume_gives_the_uninterrupted_result_and_computes_nothing_twice(
    tmp_path, uninterrupted
):
    store = tmp_path / "store"
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import mcdiff; "
        f"from test_store import CountingSampler, RUN; "
        f"mcdiff.estimate(CountingSampler(kill_at=19), store={str(store)!r}, **RUN)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(mcdiff.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    stored = _stored(store)
    assert 0 < stored < 4 * 256  # killed in the middle: 18 batches of 32 were computed and stored
    assert stored == 18 * 32

    sampler = CountingSampler()
    resumed = mcdiff.estimate(sampler, store=store, **RUN)
    assert sampler.evaluated == 4 * 256 - stored  # every stored evaluation is read, not recomputed
    assert resumed.identical(uninterrupted)

    again = CountingSampler()
    assert mcdiff.estimate(again, store=store, **RUN).identical(uninterrupted)
    assert again.evaluated == 0


def test_a_half_written_block_is_not_counted_as_done(tmp_path, uninterrupted):
    store = tmp_path / "store"
    mcdiff.estimate(CountingSampler(), store=store, **RUN)
    block = next((store / "jobs" / "amc" / "blocks").glob("*.npz"))
    start, stop = map(int, block.stem.split("-"))
    shutil.copy(block, block.with_name(f".{block.name}.999.tmp"))  # what a kill mid-write leaves
    block.unlink()
    sampler = CountingSampler()
    assert mcdiff.estimate(sampler, store=store, **RUN).identical(uninterrupted)
    assert sampler.evaluated == stop - start
    assert not list(store.glob("jobs/*/blocks/.*"))


def test_a_longer_run_extends_the_store(tmp_path, uninterrupted):
    store = tmp_path / "store"
    mcdiff.estimate(CountingSampler(), store=store, **{**RUN, "designs": ["mc", "amc"], "n_evals": 128})
    sampler = CountingSampler()
    result = mcdiff.estimate(sampler, store=store, **{**RUN, "designs": ["mc", "amc"]})
    assert sampler.evaluated == 2 * 128
    assert result["draws"].identical(uninterrupted["draws"].sel(design=["mc", "amc"]))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"seed": 6}, "seed: stored 5, requested 6"),
        ({"n_evals": 512}, r"designs\.rqmc: stored .*points_per_replicate=16.*requested .*points_per_replicate=32"),
        ({"statistics": ["brightness"]}, "statistics: stored"),
        ({"sampler": mcdiff.GaussianSampler(num_inference_steps=4)}, r"model\.\w+: stored"),
    ],
)
def test_a_store_of_another_run_is_refused(tmp_path, change, match):
    store = tmp_path / "store"
    mcdiff.estimate(CountingSampler(), store=store, **{**RUN, "designs": ["rqmc"]})
    args = {**RUN, "designs": ["rqmc"], **change}
    with pytest.raises(ValueError, match=f"written by a different run(.|\n)*{match}"):
        mcdiff.estimate(args.pop("sampler", CountingSampler()), store=store, **args)


def _damage(store):
    block = sorted((store / "jobs" / "mc" / "blocks").glob("*.npz"))[1]
    block.write_bytes(block.read_bytes()[:100])
    return "is damaged"


def _foreign_block(store):
    other = store.parent / "other"
    mcdiff.estimate(CountingSampler(), store=other, **{**RUN, "designs": ["mc"], "seed": 6})
    shutil.copy(min((other / "jobs" / "mc" / "blocks").glob("*.npz")), store / "jobs" / "mc" / "blocks" / "0-32.npz")
    return "does not belong here: it was written by a different run"


def _bad_fingerprint(store):
    (store / "fingerprint.json").write_text("{not json")
    return "not an mcdiff-store/3 fingerprint"


def _stray_file(store):
    (store / "jobs" / "mc" / "blocks" / "notes.txt").write_text("hello")
    return "foreign file"


@pytest.mark.parametrize("damage", [_damage, _foreign_block, _bad_fingerprint, _stray_file])
def test_a_damaged_store_is_refused(tmp_path, damage):
    store = tmp_path / "store"
    mcdiff.estimate(CountingSampler(), store=store, **{**RUN, "designs": ["mc"]})
    if damage is _foreign_block:
        (store / "jobs" / "mc" / "blocks" / "0-32.npz").unlink()
    match = damage(store)
    with pytest.raises(ValueError, match=match):
        mcdiff.estimate(CountingSampler(), store=store, **{**RUN, "designs": ["mc"]})


def test_a_directory_that_is_not_a_store_is_left_alone(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="is not an mcdiff store .* refusing to write into it"):
        mcdiff.estimate(CountingSampler(), store=tmp_path / "photos", **RUN)
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["cat.png"]


def test_fingerprint_records_what_produced_the_values(tmp_path):
    mcdiff.estimate(CountingSampler(), store=tmp_path / "s", **{**RUN, "designs": ["amc-rqmc"]})
    fingerprint = json.loads((tmp_path / "s" / "fingerprint.json").read_text())
    assert fingerprint["seed"] == 5 and fingerprint["statistics"] == STATS
    assert fingerprint["model"]["model"] == "CountingSampler" and fingerprint["noise_spec"] == {
        "x_T": [1, 4, 4]
    }
    assert "points_per_replicate=8" in fingerprint["designs"]["amc-rqmc"]
    assert fingerprint["model"]["weights_sha256"] == CountingSampler().weights_sha256()
    assert fingerprint["statistic_identity"]["brightness"]["function"] == "mcdiff.functionals._brightness"
    assert len(fingerprint["statistic_identity"]["centroid"]["probe"]) == 16
    assert set(fingerprint) == {
        "format",
        "model",
        "seed",
        "designs",
        "statistics",
        "statistic_identity",
        "noise_spec",
        "noise_generator",
        "mcdiff_version",
    }
    # a store of mcdiff 0.1 (numpy noise on the CPU) had neither this generator nor this version
    new = {k: v for k, v in fingerprint.items() if k != "format"}
    old = {k: v for k, v in new.items() if k != "noise_generator"}
    ResultStore.open(tmp_path / "old", {**old, "mcdiff_version": "0.1.0"}).close()
    with pytest.raises(ValueError, match=r"(?s)mcdiff_version: stored .0\.1\.0.*noise_generator: stored null"):
        ResultStore.open(tmp_path / "old", new)
    store = ResultStore.open(tmp_path / "s", {k: v for k, v in fingerprint.items() if k != "format"})
    job = json.loads((tmp_path / "s" / "jobs" / "amc-rqmc" / "job.json").read_text())
    assert job["seed"] == 5 and job["statistics"] == STATS and job["values"] == sorted(STATS)
    store.job("amc-rqmc", job)
    assert store.done("amc-rqmc") == [(start, start + 32) for start in range(0, 256, 32)]
    with pytest.raises(ValueError, match="(?s)job .amc-rqmc. .* was written differently.*seed: stored 5, requested 6"):
        store.job("amc-rqmc", {**job, "seed": 6})
