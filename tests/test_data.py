import numpy as np
import pytest
import torch

from mcdiff.data import digits, extreme_brightness, load_dataset


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
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
