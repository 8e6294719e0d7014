import numpy as np
import pytest
import torch

from mcdiff.data import PHOTOGRAPHS, digits, extreme_brightness, load_dataset, photo_patches


def test_digits_scaled_to_unit_interval():
    images = digits()
    assert images.shape == (1797, 1, 8, 8)
    assert images.min() == -1 and images.max() == 1


def test_digits_upsampled():
    assert digits(16).shape == (1797, 1, 16, 16)


def test_extreme_brightness_spans_black_to_white_and_is_seeded():
    images = extreme_brightness(n=2000, size=16, seed=3)
    assert images.shape == (2000, 1, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    brightness = ((images + 1) / 2).mean(dim=(1, 2, 3)).numpy()
    assert np.quantile(brightness, 0.05) < 0.05 and np.quantile(brightness, 0.95) > 0.95
    assert torch.equal(images, extreme_brightness(n=2000, size=16, seed=3))
    assert not torch.equal(images, extreme_brightness(n=2000, size=16, seed=4))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: digits(4), "size must be an integer >= 8"),
        (lambda: extreme_brightness(n=0), "n must be a positive integer"),
        (lambda: load_dataset("cifar"), "unknown data set 'cifar'"),
        (lambda: photo_patches(n=0), "n must be a positive integer"),
        (lambda: photo_patches(n=4, split="test"), "unknown split 'test'; known: train, held-out"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_photo_patches_are_seeded_rgb_crops_of_their_split():
    patches = photo_patches(n=256, seed=5)
    assert patches.shape == (256, 3, 32, 32) and patches.dtype == torch.float32
    assert patches.min() >= -1 and patches.max() <= 1
    assert torch.equal(patches, photo_patches(n=256, seed=5))
    assert not torch.equal(patches, photo_patches(n=256, seed=6))
    # colour photographs: the channels differ, and no two textured patches are equal (flat
    # black ones, from the retina's border and the Hubble field's sky, can repeat)
    assert (patches[:, 0] != patches[:, 2]).float().mean() > 0.5
    textured = patches.flatten(1)[patches.flatten(1).std(dim=1) > 0.02]
    assert len(textured) > 200 and len(torch.unique(textured, dim=0)) == len(textured)
    held_out = photo_patches(n=256, split="held-out", seed=5)
    assert not set(PHOTOGRAPHS["train"]) & set(PHOTOGRAPHS["held-out"])
    assert torch.cdist(held_out.flatten(1), patches.flatten(1)).min() > 0
    assert load_dataset("photos", size=16, seed=5).shape == (20000, 3, 16, 16)
