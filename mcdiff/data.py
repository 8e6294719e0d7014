"""Training data for the small bundled models, as tensors ``(N, C, H, W)`` scaled to [-1, 1].

Three data sets, all available offline: scikit-learn's bundled handwritten digits, RGB
patches of the photographs that scikit-image and scikit-learn ship in their wheels, and a
synthetic set whose global brightness spans near-black to near-white (the case where plain
diffusion fails to reproduce the brightness distribution and offset noise helps).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mcdiff.validation import check_integer

DATASETS = ("digits", "photos", "extreme-brightness")
"""Names accepted by :func:`load_dataset`."""


def digits(size: int = 8) -> torch.Tensor:
    """The 1,797 handwritten digits of :func:`sklearn.datasets.load_digits` ``(N, 1, size, size)``.

    Pixels ``v`` in 0..16 are mapped to ``x = v / 8 - 1`` in [-1, 1]; ``size > 8`` upsamples
    bilinearly (no new information, only a larger canvas).

    References
    ----------
    UCI ML hand-written digits, E. Alpaydin and C. Kaynak (1998), as bundled with scikit-learn.
    """
    from sklearn.datasets import load_digits

    size = check_integer("size", size, 8)
    images = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 8 - 1
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(-1, 1)


PHOTOGRAPHS = {
    "train": (
        "skimage:astronaut", "skimage:chelsea", "skimage:rocket", "skimage:hubble_deep_field",
        "skimage:retina", "skimage:immunohistochemistry", "skimage:stereo_motorcycle",
        "sklearn:flower.jpg",
    ),
    "held-out": ("skimage:coffee", "sklearn:china.jpg"),
}  # fmt: skip
"""The photographs behind :func:`photo_patches`, by split. ``stereo_motorcycle`` gives two
(its left and right views); the held-out ones share no scene with the training ones."""

PATCH_SCALES = (1, 2, 3, 4)
"""Crop sides of :func:`photo_patches`, in multiples of the output side."""


def _photographs(split: str) -> list[np.ndarray]:
    """The RGB photographs of one split of :data:`PHOTOGRAPHS`, each ``(H, W, 3)`` uint8."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    if split not in PHOTOGRAPHS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(PHOTOGRAPHS)}")
    images = []
    for source in PHOTOGRAPHS[split]:
        package, name = source.split(":")
        image = load_sample_image(name) if package == "sklearn" else getattr(skimage.data, name)()
        images.extend(image if isinstance(image, tuple) else (image,))
    return [np.array(im[..., :3]) for im in images if im.ndim == 3]


def photo_patches(n: int = 20000, size: int = 32, split: str = "train", seed: int = 0) -> torch.Tensor:
    """``n`` random RGB patches of the bundled photographs, ``(n, 3, size, size)`` in [-1, 1].

    Each patch picks a photograph of ``split`` (uniformly), a crop side ``k * size`` with
    ``k`` uniform in :data:`PATCH_SCALES` (crops that do not fit are drawn again at a smaller
    scale), a uniform position, and a horizontal flip with probability 1/2; the crop is
    area-averaged down to ``size x size`` (exact box filtering for integer ``k``). Pixels
    ``v`` in 0..255 become ``x = v / 127.5 - 1``. Generated from ``seed`` alone.

    The training split holds 9 photographs (8 sources, ``stereo_motorcycle`` two views),
    4.4 million distinct 32x32 crops at scale 1 alone (times 2 flips, times 4 scales),
    so ``n`` patches are practically all distinct; the held-out split (``coffee``,
    ``china``) shares no scene with them and serves the quality checks.

    References
    ----------
    S. van der Walt et al., "scikit-image: image processing in Python", PeerJ 2:e453 (2014),
    ``skimage.data``; scikit-learn's ``load_sample_images`` (china.jpg, flower.jpg).
    """
    n = check_integer("n", n)
    size = check_integer("size", size, 4)
    photos = _photographs(split)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(photos), n)
    scales = rng.choice(PATCH_SCALES, n)
    corners = rng.random((n, 2))
    flips = rng.random(n) < 0.5
    patches = torch.empty(n, 3, size, size)
    for i in range(n):
        photo = photos[which[i]]
        side = size * scales[i]
        while side > min(photo.shape[:2]):
            side -= size
        top = int(corners[i, 0] * (photo.shape[0] - side + 1))
        left = int(corners[i, 1] * (photo.shape[1] - side + 1))
        crop = torch.from_numpy(photo[top : top + side, left : left + side]).permute(2, 0, 1).float()
        if flips[i]:
            crop = crop.flip(-1)
        patches[i] = F.adaptive_avg_pool2d(crop, size) if side != size else crop
    return (patches / 127.5 - 1).clamp(-1, 1)


def extreme_brightness(n: int = 4096, size: int = 16, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """Synthetic images whose global brightness spans near-black to near-white ``(n, C, size, size)``.

    Each image is a flat level ``b ~ Beta(0.5, 0.5)`` (U-shaped: most mass near 0 and 1) plus
    a random low-frequency wave whose amplitude ``min(b, 1 - b) / 2`` keeps every pixel in
    [0, 1]::

        p(y, x) = b + min(b, 1 - b) / 2 * cos(2 pi (f_y y + f_x x) + phi),  f ~ U{-2..2}^2

    so the image's mean brightness is close to ``b``; pixels are returned as ``2 p - 1``.
    Generated from ``seed`` alone.

    References
    ----------
    T. Kutsuna, "A Probabilistic Formulation of Offset Noise in Diffusion Models",
    arXiv:2412.03134 (synthetic data with extreme brightness).
    """
    n = check_integer("n", n)
    size = check_integer("size", size, 2)
    channels = check_integer("channels", channels)
    rng = np.random.default_rng(seed)
    level = rng.beta(0.5, 0.5, size=(n, 1, 1, 1))
    freq = rng.integers(-2, 3, size=(n, 2, 1, 1))
    phase = rng.uniform(0, 2 * math.pi, size=(n, 1, 1, 1))
    grid = (np.arange(size) + 0.5) / size
    wave = np.cos(2 * math.pi * (freq[:, :1] * grid[:, None] + freq[:, 1:] * grid[None, :]) + phase)
    pixels = level + np.minimum(level, 1 - level) / 2 * wave
    pixels = np.broadcast_to(pixels, (n, channels, size, size))
    return torch.from_numpy(2 * pixels - 1).float()


def load_dataset(name: str, size: int | None = None, seed: int = 0) -> torch.Tensor:
    """A data set of :data:`DATASETS` by name, ``(N, C, H, W)`` in [-1, 1].

    ``size`` defaults to 8 for ``"digits"``, 32 for ``"photos"`` (the training split of
    :func:`photo_patches`) and 16 for ``"extreme-brightness"``; ``seed`` affects the
    patches and the synthetic set.
    """
    if name == "digits":
        return digits(8 if size is None else size)
    if name == "photos":
        return photo_patches(size=32 if size is None else size, seed=seed)
    if name == "extreme-brightness":
        return extreme_brightness(size=16 if size is None else size, seed=seed)
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
