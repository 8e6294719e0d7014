"""The bundled photos model (3×32×32 attention U-Net): shipped weights load, sample
deterministically, and reproduce the brightness of the photographs it was trained on."""

import json

import numpy as np
import pytest
import torch

import mcdiff
from mcdiff.blocks import evaluate_design
from mcdiff.runner import sample_images
from mcdiff.data import photo_patches
from mcdiff.functionals import brightness
from mcdiff.models import bundled_path

N_IMAGES = 64
"""Generated images of the statistical check (DDIM 10 steps: about 10 s on one core)."""


@pytest.fixture(scope="module")
def sampler():
    torch.set_num_threads(1)
    return mcdiff.bundled_model("photos", num_inference_steps=10)


def test_shipped_weights_are_the_documented_attention_unet(sampler):
    record = json.loads((bundled_path("photos") / "training.json").read_text())
    assert record["command"].startswith("mcdiff train --data photos")
    assert record["trained_steps"] == record["steps"]
    config = sampler.unet.config
    assert sampler.image_shape == (3, 32, 32)
    assert list(config.down_block_types) == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]  # attention at 16x16
    assert sampler.scheduler.config.prediction_type == "epsilon"
    assert not sampler.scheduler.config.clip_sample
    assert sum(p.numel() for p in sampler.unet.parameters()) > 2_000_000


def test_same_noise_gives_the_same_images(sampler):
    first = sample_images(sampler, mcdiff.Antithetic(), 8, 3, 8)
    again = sample_images(sampler, mcdiff.Antithetic(), 8, 3, 4)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (8, 3, 32, 32) and 0 <= first.min() and first.max() <= 1
    assert not np.array_equal(first[0], first[1])  # z and -z give different images


def test_brightness_matches_the_training_photographs(sampler):
    """Generated brightness against fresh crops of the training photographs.

    Mean: |mean_gen - mean_data| < 4 SE with SE^2 = s_gen^2 / n + s_data^2 / m, a false
    failure rate of 6e-5 for a model that reproduces the data's brightness. Spread: the
    shipped model over-saturates (many images near pure black or white): its brightness
    standard deviation is 1.87 times the data's here (0.357 against 0.191, measured when the
    weights were shipped; README, "A model of photographs"), so the bound is a factor 2.5
    either way. A model that does not denoise (an untrained network of the same shape gave
    grey noise with a ratio of 0.04) fails, and so does one that saturates even more.
    """
    generated = evaluate_design(sampler, [brightness], mcdiff.MonteCarlo(), N_IMAGES, 0, 32)["brightness"]
    data = ((photo_patches(n=4096, seed=11) + 1) / 2).mean(dim=(1, 2, 3)).numpy()
    se = np.sqrt(generated.var(ddof=1) / len(generated) + data.var(ddof=1) / len(data))
    assert abs(generated.mean() - data.mean()) < 4 * se, (generated.mean(), data.mean(), se)
    assert 1 / 2.5 < generated.std(ddof=1) / data.std(ddof=1) < 2.5, (generated.std(), data.std())
