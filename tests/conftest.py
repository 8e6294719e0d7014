"""Shared fixtures: small analytic models and a sampler that records what it is given."""

import numpy as np
import pytest
import torch

from mcdiff.samplers import GaussianSampler, Sampler


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
def gradient_mean():
    """A 4x4 mean image from 0.15 to 0.85 that avoids 0.5 (degenerate under probit)."""
    return np.linspace(0.15, 0.85, 16).reshape(1, 4, 4)


@pytest.fixture(scope="session")
def affine_model(gradient_mean):
    return GaussianSampler(mean=gradient_mean, std=0.25, image_shape=(1, 4, 4), num_inference_steps=10)


@pytest.fixture(scope="session")
def probit_model(gradient_mean):
    return GaussianSampler(
        mean=gradient_mean, std=0.25, image_shape=(1, 4, 4), num_inference_steps=10, output="probit"
    )
