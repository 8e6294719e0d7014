"""Shared fixtures: small analytic models, a sampler that records what it is given, a count of
sampler calls, and a tiny file system that fills up."""

import subprocess

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

from mcdiff.samplers import DiffusionSampler, GaussianSampler, Sampler

GRADIENT_MEAN = np.linspace(0.15, 0.85, 16).reshape(1, 4, 4)
"""A 4x4 mean image from 0.15 to 0.85 that avoids 0.5 (degenerate under probit)."""


def probit_gaussian(num_inference_steps: int = 10, **kwargs) -> GaussianSampler:
    """The non-affine analytic model the statistical tests use (exact truths, no point masses)."""
    return GaussianSampler(mean=GRADIENT_MEAN, std=0.25, image_shape=(1, 4, 4),
                           num_inference_steps=num_inference_steps, output="probit", **kwargs)


def random_unet_sampler(num_inference_steps: int) -> DiffusionSampler:
    """A float32 DDIM sampler on a tiny random-weight diffusers UNet (seeded)."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    return DiffusionSampler(unet, DDIMScheduler(), num_inference_steps=num_inference_steps)


class RecordingSampler(Sampler):
    """Returns the x_T noise squashed into images and records every batch it receives."""

    def __init__(self, image_shape=(1, 2, 2)):
        self.image_shape = image_shape
        self.batches: list[torch.Tensor] = []

    @property
    def noise_spec(self):
        return {"x_T": self.image_shape}

    def sample(self, noise):
        self.batches.append(noise["x_T"].clone())
        return torch.sigmoid(noise["x_T"])


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
