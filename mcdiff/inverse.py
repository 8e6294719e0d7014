"""Inverse problems: the inpainting operator, its masks, and a noisy measurement of a known image.

Conventions, shared by every function here and by :class:`~mcdiff.samplers.dps.DPSSampler`:

- a *mask* is 1 where a pixel is observed and 0 where it is missing, shape ``(C, H, W)`` or
  ``(1, H, W)`` (the same pixels missing in every channel); ``(H, W)`` is read as ``(1, H, W)``;
- the operator ``A(x) = mask ⊙ x`` and the measurement act on the model's [-1, 1] scale,
  ``x = 2 · image - 1``, as the network sees it;
- the measurement is ``y = A(x_true) + sigma_y · mask ⊙ n`` with ``n ~ N(0, I)``: Gaussian
  noise of standard deviation ``sigma_y`` (on the [-1, 1] scale) on the observed pixels, 0 on
  the missing ones. It is drawn once, from its own seed: it is the observation, fixed for the
  whole study, not part of the noise design.

References
----------
H. Chung, J. Kim, M. T. McCann, M. L. Klasky and J. C. Ye, "Diffusion Posterior Sampling for
General Noisy Inverse Problems", ICLR 2023 (box and random inpainting masks, sigma_y = 0.05).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from mcdiff.functionals import Statistic
from mcdiff.samplers.diffusion import DiffusionSampler
from mcdiff.samplers.dps import DPSSampler

MASKS = ("box", "random")
"""Names of the mask families of :func:`make_mask`."""


def _check_image_shape(image_shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {tuple(image_shape)}")
    return shape


def _check_fraction(fraction: float) -> float:
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float, np.floating))
        or not 0 < fraction < 1
    ):
        raise ValueError(f"the missing fraction must be in (0, 1), got {fraction!r}")
    return float(fraction)


def box_mask(image_shape: tuple[int, int, int], fraction: float = 0.25) -> np.ndarray:
    """A centred missing box covering about ``fraction`` of the image, ``(1, H, W)``.

    The box is ``round(H sqrt(f))`` by ``round(W sqrt(f))`` pixels (at least 1 each), centred
    (rounded towards the top left); the mask is 0 inside it and 1 elsewhere.
    """
    _, height, width = _check_image_shape(image_shape)
    fraction = _check_fraction(fraction)
    box_h = max(1, round(height * math.sqrt(fraction)))
    box_w = max(1, round(width * math.sqrt(fraction)))
    top, left = (height - box_h) // 2, (width - box_w) // 2
    mask = np.ones((1, height, width))
    mask[:, top : top + box_h, left : left + box_w] = 0.0
    return check_mask(mask)


def random_mask(image_shape: tuple[int, int, int], fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """``round(f H W)`` missing pixel positions drawn uniformly without replacement, ``(1, H, W)``."""
    _, height, width = _check_image_shape(image_shape)
    fraction = _check_fraction(fraction)
    count = min(height * width - 1, max(1, round(fraction * height * width)))
    mask = np.ones(height * width)
    mask[np.random.default_rng(seed).choice(height * width, size=count, replace=False)] = 0.0
    return check_mask(mask.reshape(1, height, width))


def make_mask(kind: str, image_shape: tuple[int, int, int], fraction: float, seed: int = 0) -> np.ndarray:
    """:func:`box_mask` or :func:`random_mask` (with ``seed``) by name, ``kind`` in :data:`MASKS`."""
    if kind == "box":
        return box_mask(image_shape, fraction)
    if kind == "random":
        return random_mask(image_shape, fraction, seed)
    raise ValueError(f"unknown mask {kind!r}; known: {', '.join(MASKS)}")


def check_mask(mask, image_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """The mask as a float64 ``(C_m, H, W)`` array of 0 and 1, or a ``ValueError``.

    A mask must be binary, observe at least one pixel and miss at least one (an all-zero mask
    measures nothing; an all-one mask leaves nothing to inpaint). With ``image_shape``, the
    mask must fit it: the same ``H, W`` and ``C_m`` equal to 1 or ``C``.
    """
    mask = np.asarray(mask.detach().cpu() if torch.is_tensor(mask) else mask, dtype=np.float64)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"a mask must be (H, W), (1, H, W) or (C, H, W), got shape {mask.shape}")
    if not np.isin(mask, (0.0, 1.0)).all():
        raise ValueError("a mask must hold only 0 (missing) and 1 (observed)")
    if not mask.any():
        raise ValueError(
            "the mask is all zero: nothing is observed, so there is no measurement to condition on"
        )
    if mask.all():
        raise ValueError("the mask is all one: no pixel is missing, so there is nothing to inpaint")
    if image_shape is not None:
        _check_fit(mask.shape, image_shape)
    return mask


def _check_fit(mask_shape: tuple[int, ...], image_shape) -> None:
    channels, height, width = _check_image_shape(image_shape)
    if mask_shape[1:] != (height, width) or mask_shape[0] not in (1, channels):
        raise ValueError(
            f"mask of shape {mask_shape} does not match images of shape {(channels, height, width)}: "
            f"use (1, {height}, {width}) or ({channels}, {height}, {width})"
        )


class InpaintingOperator:
    """The linear inpainting operator ``A(x) = mask ⊙ x`` on a batch ``(B, C, H, W)``.

    Parameters
    ----------
    mask : array (H, W), (1, H, W) or (C, H, W)
        1 where observed, 0 where missing (see :func:`check_mask`).
    """

    def __init__(self, mask):
        self.mask = check_mask(mask)

    @property
    def observed_fraction(self) -> float:
        """Fraction of the pixels that are observed."""
        return float(self.mask.mean())

    def check_shape(self, image_shape: tuple[int, int, int]) -> None:
        """Raise ``ValueError`` unless the mask fits images of ``image_shape`` ``(C, H, W)``."""
        _check_fit(self.mask.shape, image_shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``mask ⊙ x`` ``(B, C, H, W)``."""
        self.check_shape(tuple(x.shape[1:]))
        return torch.as_tensor(self.mask, dtype=x.dtype, device=x.device) * x

    def describe(self) -> dict[str, str | float]:
        """NetCDF-safe settings, with a digest of the mask so that different masks never compare equal."""
        return {
            "operator": "inpainting",
            "observed_fraction": self.observed_fraction,
            "mask_sha256": hashlib.sha256(self.mask.tobytes()).hexdigest()[:16],
        }


def make_measurement(
    operator: InpaintingOperator, ground_truth, sigma_y: float = 0.05, seed: int = 0
) -> torch.Tensor:
    """The noisy observation ``y = A(2 g - 1) + sigma_y mask ⊙ n`` of an image ``g`` in [0, 1].

    Parameters
    ----------
    operator : InpaintingOperator
    ground_truth : array (C, H, W)
        The true image, in [0, 1].
    sigma_y : float
        Standard deviation of the measurement noise on the [-1, 1] scale, ``>= 0``.
    seed : int
        Seed of the noise ``n ~ N(0, I)``.

    Returns
    -------
    tensor (C, H, W), float64
        ``y`` on the [-1, 1] scale, 0 at missing pixels.
    """
    truth = check_ground_truth(ground_truth)
    operator.check_shape(truth.shape)
    if (
        isinstance(sigma_y, bool)
        or not isinstance(sigma_y, (int, float, np.floating))
        or not (0 <= sigma_y < math.inf)
    ):
        raise ValueError(f"sigma_y must be a finite number >= 0, got {sigma_y!r}")
    noise = np.random.default_rng(seed).standard_normal(truth.shape)
    signal = torch.from_numpy(2 * truth - 1 + float(sigma_y) * noise)
    return operator(signal[None])[0]


def check_ground_truth(ground_truth) -> np.ndarray:
    """The ground truth as a float64 ``(C, H, W)`` array in [0, 1], or a ``ValueError``."""
    truth = np.asarray(
        ground_truth.detach().cpu() if torch.is_tensor(ground_truth) else ground_truth, dtype=np.float64
    )
    if truth.ndim != 3:
        raise ValueError(f"the ground truth must be one image (C, H, W), got shape {truth.shape}")
    if not (np.isfinite(truth).all() and truth.min() >= 0 and truth.max() <= 1):
        raise ValueError("the ground truth must be finite and in [0, 1] (the image scale)")
    return truth


def inpainting_error(ground_truth, mask) -> Statistic:
    """Error of an inpainted image on its missing pixels: MSE and PSNR against the ground truth.

    With ``M`` the missing pixels (mask 0, across every channel the mask covers) of an image
    ``x`` and the ground truth ``g``, both on the [0, 1] scale::

        mse  = (1/|M|) sum_{p in M} (x_p - g_p)^2
        psnr = 10 log10(1 / mse)            (peak value 1; inf when mse = 0)

    Both are per image, so the estimate of ``psnr`` is the posterior mean of each sample's
    PSNR, not the PSNR of the posterior mean image.

    Parameters
    ----------
    ground_truth : array (C, H, W)
        The true image, in [0, 1].
    mask : array (H, W), (1, H, W) or (C, H, W)
        1 where observed, 0 where missing (see :func:`check_mask`).

    Returns
    -------
    Statistic
        ``"inpainting_error"``, dims ``("metric",)`` with coordinates ``["mse", "psnr"]``.
    """
    truth = check_ground_truth(ground_truth)
    missing = np.broadcast_to(1 - check_mask(mask, truth.shape), truth.shape).copy()

    def error(images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != truth.shape:
            raise ValueError(
                f"inpainting_error was built for images of shape {truth.shape}, got {tuple(images.shape[1:])}"
            )
        images = images.double()
        weights = torch.as_tensor(missing, device=images.device)
        target = torch.as_tensor(truth, device=images.device)
        mse = ((images - target) ** 2 * weights).sum(dim=(1, 2, 3)) / weights.sum()
        return torch.stack([mse, -10 * torch.log10(mse)], dim=-1)

    return Statistic("inpainting_error", error, dims=("metric",), coords={"metric": ["mse", "psnr"]})


class InpaintingProblem:
    """A known image, a mask and a noisy measurement of it: a complete inpainting study.

    Parameters
    ----------
    ground_truth : array (C, H, W)
        The true image, in [0, 1].
    mask : array
        1 where observed, 0 where missing (see :func:`check_mask`).
    sigma_y : float
        Measurement noise on the [-1, 1] scale (Chung et al. use 0.05).
    seed : int
        Seed of the measurement noise (fixed by the observation, not part of any design).

    Attributes
    ----------
    operator : InpaintingOperator
    measurement : tensor (C, H, W)
        ``y``, see :func:`make_measurement`.
    error : Statistic
        :func:`inpainting_error` against the ground truth on the missing pixels.

    Examples
    --------
    >>> import mcdiff
    >>> truth = (mcdiff.digits()[0] + 1) / 2
    >>> problem = mcdiff.InpaintingProblem(truth, mcdiff.box_mask((1, 8, 8), 0.25), sigma_y=0.05)
    >>> sampler = problem.dps(mcdiff.bundled_model("digits", 10, scheduler="DDPMScheduler"), zeta=1.0)
    >>> result = mcdiff.estimate(sampler, [problem.error], ["mc", "amc"], n_evals=8, progress=False)
    >>> result["summary"]["inpainting_error"]["metric"].values.tolist()
    ['mse', 'psnr']
    """

    def __init__(self, ground_truth, mask, sigma_y: float = 0.05, seed: int = 0):
        self.ground_truth = check_ground_truth(ground_truth)
        self.operator = InpaintingOperator(mask)
        self.operator.check_shape(self.ground_truth.shape)
        self.sigma_y = float(sigma_y)
        self.seed = int(seed)
        self.measurement = make_measurement(self.operator, self.ground_truth, sigma_y, seed)
        self.error: Statistic = inpainting_error(self.ground_truth, self.operator.mask)

    def dps(self, sampler: DiffusionSampler, zeta: float) -> DPSSampler:
        """The model ``sampler`` conditioned on this measurement by DPS with step size ``zeta``."""
        return DPSSampler.from_sampler(sampler, self.operator, self.measurement, zeta)
