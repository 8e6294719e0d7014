"""Training data for the small bundled models, as tensors ``(N, C, H, W)`` scaled to [-1, 1].

Two data sets, both available offline: scikit-learn's bundled handwritten digits and a
synthetic set whose global brightness spans near-black to near-white (the case where plain
diffusion fails to reproduce the brightness distribution and offset noise helps).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("digits", "extreme-brightness")
"""Names accepted by :func:`load_dataset`."""


def _check_size(size: int, minimum: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < minimum:
        raise ValueError(f"size must be an integer >= {minimum}, got {size!r}")
    return int(size)


def digits(size: int = 8) -> torch.Tensor:
    """The 1,797 handwritten digits of :func:`sklearn.datasets.load_digits` ``(N, 1, size, size)``.

    Pixels ``v`` in 0..16 are mapped to ``x = v / 8 - 1`` in [-1, 1]; ``size > 8`` upsamples
    bilinearly (no new information, only a larger canvas).

    References
    ----------
    UCI ML hand-written digits, E. Alpaydin and C. Kaynak (1998), as bundled with scikit-learn.
    """
    from sklearn.datasets import load_digits

    size = _check_size(size, 8)
    images = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 8 - 1
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(-1, 1)


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
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    size = _check_size(size, 2)
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
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

    ``size`` defaults to 8 for ``"digits"`` and 16 for ``"extreme-brightness"``; ``seed``
    only affects the synthetic set.
    """
    if name == "digits":
        return digits(8 if size is None else size)
    if name == "extreme-brightness":
        return extreme_brightness(size=16 if size is None else size, seed=seed)
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
