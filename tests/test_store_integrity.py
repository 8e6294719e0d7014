"""Integrity of the result store: it knows its model and statistics, has one writer at a time,
trusts stored blocks no more than fresh ones, reads without write access and survives a full disk.

Tests that need a small file system mount a tmpfs (the suite runs as root, which ignores
permission bits) and are skipped, saying why, where mounting is not permitted.
"""

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from small_models import random_unet_sampler
from test_store import RUN, CountingSampler

import mcdiff
from mcdiff.functionals import Statistic
from mcdiff.store import LOCK, StoreError
from mcdiff.writer_lock import WriterLockedError, process_start

MC = {**RUN, "designs": ["mc"]}


def _run(sampler, store, **change):
    return mcdiff.estimate(sampler, store=store, **{**MC, **change})


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def uninterrupted():
    return mcdiff.estimate(CountingSampler(), **MC)


# ---- 1. model identity -------------------------------------------------------------------


def test_a_model_with_other_weights_and_the_same_configuration_is_refused(tmp_path):
    sampler = random_unet_sampler(num_inference_steps=2)
    run = dict(statistics=["brightness"], designs=["mc"], n_evals=16, batch_size=8, progress=False)
    result = mcdiff.estimate(sampler, store=tmp_path / "s", **run)
    assert result["summary"].attrs["weights_sha256"] == sampler.weights_sha256()  # the result names its model

    other = copy.deepcopy(sampler.unet)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-6
    perturbed = mcdiff.DiffusionSampler(other, sampler.scheduler, num_inference_steps=2)
    assert other.config == sampler.unet.config
    next((tmp_path / "s" / "jobs" / "mc" / "blocks").glob("*.npz")).unlink()  # half done: the old code mixed both
    with pytest.raises(ValueError, match=r"model\.weights_sha256: stored \"[0-9a-f]{64}\", requested"):
        mcdiff.estimate(perturbed, store=tmp_path / "s", **run)
    # the same weights in a fresh copy resume the store
    same = mcdiff.DiffusionSampler(copy.deepcopy(sampler.unet), sampler.scheduler, num_inference_steps=2)
    assert mcdiff.estimate(same, store=tmp_path / "s", **run).identical(result)


def test_the_weight_hash_follows_in_place_changes_and_is_cached():
    sampler = random_unet_sampler(num_inference_steps=2)
    before = sampler.weights_sha256()
    assert sampler.weights_sha256() == before and sampler.describe()["weights_sha256"] == before
    with torch.no_grad():
        next(sampler.unet.parameters()).mul_(1.0001)  # what an optimizer step or load_state_dict does
    assert sampler.weights_sha256() != before


def test_analytic_models_are_identified_by_their_full_mean_map(tmp_path):
    flat = mcdiff.GaussianSampler(mean=0.5, std=0.25, image_shape=(1, 4, 4), num_inference_steps=4)
    ramp = mcdiff.GaussianSampler(
        mean=np.linspace(0.3, 0.7, 16).reshape(1, 4, 4),
        std=0.25,
        image_shape=(1, 4, 4),
        num_inference_steps=4,
    )
    assert flat.describe()["data_mean_avg"] == pytest.approx(ramp.describe()["data_mean_avg"])
    _run(flat, tmp_path / "s")
    with pytest.raises(ValueError, match=r"model\.weights_sha256"):
        _run(ramp, tmp_path / "s")


def test_function_samplers_are_identified_by_what_their_callable_closes_over():
    def sampler_with(scale):
        return mcdiff.FunctionSampler(
            lambda noise: torch.sigmoid(scale * noise["x_T"]), {"x_T": (1, 4, 4)}, (1, 4, 4)
        )

    assert sampler_with(1.0).weights_sha256() == sampler_with(1.0).weights_sha256()
    assert sampler_with(1.0).weights_sha256() != sampler_with(2.0).weights_sha256()


# ---- 2. statistic identity ---------------------------------------------------------------


def _statistic(kind):
    """``Statistic("s", mean)`` or ``Statistic("s", max)``: one name, one qualname, two computations."""
    if kind == "mean":
        return Statistic("s", lambda images: images.flatten(1).mean(dim=1))
    return Statistic("s", lambda images: images.flatten(1).amax(dim=1))


def test_a_statistic_of_the_same_name_that_computes_something_else_is_refused(tmp_path):
    _run(CountingSampler(), tmp_path / "s", statistics=[_statistic("mean")])
    # the same function, built again, resumes; the same name and qualname computing max does not
    sampler = CountingSampler()
    _run(sampler, tmp_path / "s", statistics=[_statistic("mean")])
    assert sampler.evaluated == 0
    with pytest.raises(
        ValueError, match=r"statistic 's' computes something else: stored .*<lambda> with probe values"
    ):
        _run(CountingSampler(), tmp_path / "s", statistics=[_statistic("max")])


# ---- 3. one writer at a time -------------------------------------------------------------


class PausingSampler(CountingSampler):
    """Touches ``DIR/ready`` at call ``pause_at`` and waits there until ``DIR/go`` exists."""

    def __init__(self, folder, pause_at=None):
        super().__init__()
        self.folder, self.pause_at = Path(folder), pause_at

    def sample(self, noise):
        if self.calls + 1 == self.pause_at:
            (self.folder / "ready").touch()
            deadline = time.monotonic() + 120
            while not (self.folder / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return super().sample(noise)


def _python(script: str) -> subprocess.Popen:
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mcdiff.__file__).parents[1]), tests])}
    return subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)


def test_a_second_writer_is_refused_at_once_and_the_first_finishes_unharmed(tmp_path, uninterrupted):
    store = tmp_path / "s"
    first = _python(
        "import mcdiff; from test_store_integrity import PausingSampler, MC; "
        f"mcdiff.estimate(PausingSampler({str(tmp_path)!r}, pause_at=4), store={str(store)!r}, **MC)"
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "ready").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    in_flight = store / "jobs" / "mc" / "blocks" / f".96-128.npz.{first.pid}.tmp"  # as if it were writing a block
    in_flight.write_bytes(b"partial")

    second = PausingSampler(tmp_path)
    with pytest.raises(WriterLockedError) as err:
        _run(second, store)
    message = _one_line(err)
    assert (
        f"pid {first.pid} on host {socket.gethostname()!r}" in message and "one writer at a time" in message
    )
    assert second.evaluated == 0 and in_flight.read_bytes() == b"partial"

    (tmp_path / "go").touch()
    assert first.wait(timeout=120) == 0, first.stderr.read().decode()[-2000:]
    assert not (store / LOCK).exists()
    resumed = PausingSampler(tmp_path)
    assert _run(resumed, store)["draws"].identical(uninterrupted["draws"]) and resumed.evaluated == 0


def test_a_lock_left_by_a_sigkilled_writer_does_not_block_the_resume(tmp_path, uninterrupted):
    store = tmp_path / "s"
    killed = _python(
        "import mcdiff; from test_store import CountingSampler; from test_store_integrity import MC; "
        f"mcdiff.estimate(CountingSampler(kill_at=4), store={str(store)!r}, **MC)"
    )
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stderr.read().decode()[-2000:]
    assert json.loads((store / LOCK).read_text())["pid"] == killed.pid  # the dead writer's lock is left
    sampler = CountingSampler()
    assert _run(sampler, store).identical(uninterrupted)
    assert sampler.evaluated == 256 - 3 * 32 and not (store / LOCK).exists()


def _plant_lock(store, **record):
    store.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    base = {
        "pid": os.getpid(),
        "host": host,
        "process_start": process_start(os.getpid()),
        "since": "then",
        "token": "x",
    }
    (store / LOCK).write_text(json.dumps({**base, **record}))


def test_a_lock_whose_pid_now_names_another_process_is_taken_over(tmp_path, uninterrupted):
    store = tmp_path / "s"
    _run(CountingSampler(), store, n_evals=128)
    _plant_lock(store, process_start=process_start(os.getpid()) - 1)  # the pid is alive, started later
    assert _run(CountingSampler(), store).identical(uninterrupted)


@pytest.mark.parametrize(
    "record, match",
    [
        ({"pid": 1, "process_start": process_start(1)}, r"being written by another run \(pid 1 on host"),
        (
            {"host": "elsewhere.example"},
            r"on another host \(pid \d+ on host 'elsewhere.example'.*delete '.*writer.lock'",
        ),
    ],
)
def test_a_live_or_unknowable_lock_is_refused_before_any_evaluation(tmp_path, record, match):
    store = tmp_path / "s"
    _run(CountingSampler(), store, n_evals=128)
    _plant_lock(store, **record)
    sampler = CountingSampler()
    with pytest.raises(WriterLockedError, match=match) as err:
        _run(sampler, store)
    _one_line(err)
    assert sampler.evaluated == 0
    assert _run(CountingSampler(), store, n_evals=128)  # reading needs no lock


class FailingSampler(CountingSampler):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def sample(self, noise):
        if self.calls == 2:
            raise self.error
        return super().sample(noise)


@pytest.mark.parametrize("error", [RuntimeError("model crashed"), KeyboardInterrupt()])
def test_the_lock_is_released_when_the_run_fails_or_is_interrupted(tmp_path, error):
    with pytest.raises(type(error)):
        _run(FailingSampler(error), tmp_path / "s")
    assert not (tmp_path / "s" / LOCK).exists() and (tmp_path / "s" / "jobs" / "mc" / "blocks" / "0-32.npz").exists()


# ---- 4. stored blocks are checked as fresh ones ------------------------------------------


@pytest.fixture()
def complete(tmp_path):
    _run(CountingSampler(), tmp_path / "s")
    return tmp_path / "s"


def test_a_stored_block_with_nan_is_refused_by_name(complete):
    block = complete / "jobs" / "mc" / "blocks" / "32-64.npz"
    with np.load(block) as data:
        content = {k: data[k] for k in data.files}
    content["stat_centroid"][3, 1] = np.nan
    with open(block, "wb") as f:
        np.savez(f, **content)
    with pytest.raises(
        ValueError,
        match=r"block file '.*32-64.npz' is damaged: statistic 'centroid' is not finite "
        r"\(NaN or inf\) at evaluations \[35\]",
    ) as err:
        _run(CountingSampler(), complete)
    _one_line(err)


def test_two_block_files_over_the_same_addresses_are_named(complete):
    folder = complete / "jobs" / "mc" / "blocks"
    (folder / "0-64.npz").write_bytes((folder / "0-32.npz").read_bytes())
    with pytest.raises(ValueError, match="overlapping block files '0-32.npz' and '0-64.npz' of design 'mc'"):
        _run(CountingSampler(), complete)


def test_a_store_without_its_fingerprint_says_what_is_missing(complete):
    (complete / "fingerprint.json").unlink()
    with pytest.raises(ValueError, match="holds jobs but its fingerprint.json is missing") as err:
        _run(CountingSampler(), complete)
    assert "empty directory" not in _one_line(err)


def test_a_block_of_random_bytes_is_named_without_advice_to_unpickle(complete):
    (complete / "jobs" / "mc" / "blocks" / "64-96.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=r"block file '.*64-96.npz' is damaged or not a block file") as err:
        _run(CountingSampler(), complete)
    assert "pickle" not in _one_line(err)


@pytest.mark.parametrize("older", ["mcdiff-store/1", "mcdiff-store/2"])
def test_a_store_of_an_older_format_is_refused_saying_so(complete, older):
    fingerprint = json.loads((complete / "fingerprint.json").read_text())
    (complete / "fingerprint.json").write_text(json.dumps({**fingerprint, "format": older}))
    with pytest.raises(
        ValueError,
        match=f"has format '{older}', this mcdiff reads 'mcdiff-store/3': it was written by an older mcdiff",
    ):
        _run(CountingSampler(), complete)


# ---- 5, 6. read-only and full file systems -----------------------------------------------


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str):
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if done.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.decode().strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


def test_a_complete_store_is_read_from_a_read_only_file_system(tmp_path, uninterrupted):
    with _tmpfs(tmp_path / "ro", "4m") as mount:
        _run(CountingSampler(), mount / "s")
        leftover = mount / "s" / "jobs" / "mc" / "blocks" / ".0-32.npz.999.tmp"  # left by a killed writer
        leftover.write_bytes(b"partial")
        _remount(mount, "ro")
        sampler = CountingSampler()
        assert _run(sampler, mount / "s").identical(uninterrupted) and sampler.evaluated == 0
        assert leftover.exists()  # only a writer holding the lock deletes it


def test_a_store_that_needs_writing_and_cannot_be_is_refused_before_any_evaluation(tmp_path):
    with _tmpfs(tmp_path / "ro", "4m") as mount:
        _run(CountingSampler(), mount / "s")
        (mount / "s" / "jobs" / "mc" / "blocks" / "64-96.npz").unlink()
        _remount(mount, "ro")
        sampler = CountingSampler()
        with pytest.raises(
            StoreError, match=r"store '.*/s' cannot be written: taking the writer lock .*Read-only"
        ) as err:
            _run(sampler, mount / "s")
        _one_line(err)
        assert sampler.evaluated == 0


def test_a_full_disk_is_one_line_with_the_free_space_and_the_store_resumes(tmp_path):
    run = {**MC, "statistics": ["pixel_mean"]}
    big = dict(mean=0.5, std=0.25, image_shape=(1, 16, 16), num_inference_steps=2)  # 2 KiB per evaluation
    reference = mcdiff.estimate(mcdiff.GaussianSampler(**big), **run)
    with _tmpfs(tmp_path / "small", "160k") as mount:
        with pytest.raises(
            StoreError,
            match=r"store '.*/s' is full: writing block \[\d+, \d+\) of design 'mc' "
            r"failed \(No space left on device; \d+\.\d+ MiB free of",
        ) as err:
            mcdiff.estimate(mcdiff.GaussianSampler(**big), store=mount / "s", **run)
        _one_line(err)
        assert err.value.__cause__ is None and err.value.__suppress_context__
        assert not list(mount.glob("s/jobs/mc/blocks/.*")) and not (mount / "s" / LOCK).exists()
        stored = len(list(mount.glob("s/jobs/mc/blocks/*.npz")))
        assert 0 < stored < 8
        _remount(mount, "size=4m")
        assert mcdiff.estimate(mcdiff.GaussianSampler(**big), store=mount / "s", **run).identical(reference)
