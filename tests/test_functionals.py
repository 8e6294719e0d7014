import numpy as np
import torch

import mcdiff


def test_centroid_of_one_bright_pixel_is_its_centre_and_of_a_black_image_the_image_centre():
    images = torch.zeros(2, 3, 4, 8)
    images[0, :, 1, 6] = 1.0  # row 1 of 4, column 6 of 8
    values = mcdiff.centroid(images)
    np.testing.assert_allclose(values, [[1.5 / 4, 6.5 / 8], [0.5, 0.5]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(mcdiff.centroid(torch.full((1, 3, 4, 8), 1e-3)), [[0.5, 0.5]], rtol=0, atol=1e-6)
