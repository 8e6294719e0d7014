"""Shared fixtures: the small models of ``small_models.py``, a count of sampler calls, and a tiny
file system that fills up."""

import subprocess

import pytest

from mcdiff.samplers import GaussianSampler, Sampler
from small_models import GRADIENT_MEAN, RecordingSampler, probit_gaussian


@pytest.fixture
def recording_sampler():
    return RecordingSampler()


@pytest.fixture(scope="session")
def affine_model():
    return GaussianSampler(mean=GRADIENT_MEAN, std=0.25, image_shape=(1, 4, 4), num_inference_steps=10)


@pytest.fixture(scope="session")
def probit_model():
    return probit_gaussian()


@pytest.fixture
def evaluations(monkeypatch) -> list[int]:
    """Batch sizes of every sampler call (``Sampler.__call__``) made while the test runs."""
    calls: list[int] = []
    original = Sampler.__call__

    def counted(self, noise):
        images = original(self, noise)
        calls.append(len(images))
        return images

    monkeypatch.setattr(Sampler, "__call__", counted)
    return calls


@pytest.fixture
def tiny_disk(tmp_path):
    """A 512 KiB tmpfs file system, mounted for the test; skipped where mounting is not permitted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                              capture_output=True, text=True, check=False)
        refused = done.stderr.strip() if done.returncode else None
    except FileNotFoundError:
        refused = "no mount command"
    if refused is not None:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {refused}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)
