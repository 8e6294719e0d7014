"""Small models the tests share: analytic samplers with exact answers, a tiny random UNet, and a
sampler that records what it is given. Imported by test modules and by ``conftest.py``."""

import numpy as np
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
