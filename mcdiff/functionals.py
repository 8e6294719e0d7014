"""Downstream statistics of generated images.

A statistic maps images ``(B, C, H, W)`` in [0, 1] to values ``(B, *own_shape)`` with named
trailing dimensions: a scalar (``()``), a vector (``("axis",)``) or a map
(``("channel", "y", "x")``). Any callable with that contract can be used; wrap it in
:class:`Statistic` to name its dimensions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

REC601 = (0.299, 0.587, 0.114)
"""Rec. 601 luma weights for RGB."""


@dataclass(frozen=True)
class Statistic:
    """A named statistic of an image batch.

    Parameters
    ----------
    name : str
        Name of the result variable.
    fn : callable
        ``fn(images (B, C, H, W)) -> (B, *own_shape)``, a tensor or array.
    dims : tuple of str, optional
        Names of the trailing dims; ``None`` names them ``{name}_dim_0, ...``.
    coords : mapping, optional
        Coordinate labels of trailing dims.
    linear : bool
        Whether the statistic is linear in the image (its expectation is the statistic of
        the expected image).
    """

    name: str
    fn: Callable
    dims: tuple[str, ...] | None = None
    coords: Mapping[str, Sequence] = field(default_factory=dict)
    linear: bool = False

    def own_dims(self, values: np.ndarray) -> tuple[str, ...]:
        """Names of the trailing dims of ``values`` ``(B, *own_shape)``."""
        if self.dims is not None:
            return self.dims
        return tuple(f"{self.name}_dim_{k}" for k in range(values.ndim - 1))

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Values ``(B, *own_shape)`` as float64: real numbers, one row per image, ``dims`` as declared."""
        images = torch.as_tensor(images)
        if images.dtype in (torch.float16, torch.bfloat16):
            images = images.float()
        out = self.fn(images)
        try:
            out = out.detach().cpu() if torch.is_tensor(out) else np.asarray(out)
        except ValueError as err:  # ragged sequences
            raise ValueError(f"statistic {self.name!r} returned no array of numbers: {err}") from None
        if out.is_complex() if torch.is_tensor(out) else out.dtype.kind not in "biuf":
            raise ValueError(
                f"statistic {self.name!r} returned values of dtype {out.dtype}; it must return real "
                "numbers (B, ...), a tensor or an array of bool, int or float"
            )
        out = out.double().numpy() if torch.is_tensor(out) else out.astype(np.float64)
        if out.ndim == 0 or out.shape[0] != images.shape[0]:
            raise ValueError(
                f"statistic {self.name!r} returned shape {out.shape} for a batch of {images.shape[0]} "
                "images; it must return (B, ...) with one row per image"
            )
        if self.dims is not None and out.ndim - 1 != len(self.dims):
            raise ValueError(
                f"statistic {self.name!r} returned {out.ndim - 1} trailing dims, declared {self.dims}"
            )
        return out


def luminance(images: torch.Tensor) -> torch.Tensor:
    """Luminance ``(B, H, W)``: the channel itself for grayscale, Rec. 601 luma for RGB."""
    channels = images.shape[1]
    if channels == 1:
        return images[:, 0]
    if channels == 3:
        weights = torch.tensor(REC601, dtype=images.dtype, device=images.device)
        return torch.einsum("bchw,c->bhw", images, weights)
    raise ValueError(f"luminance needs 1 (grayscale) or 3 (RGB) channels, got {channels}")


def _brightness(images: torch.Tensor) -> torch.Tensor:
    return luminance(images).mean(dim=(-2, -1))


def _contrast(images: torch.Tensor) -> torch.Tensor:
    return luminance(images).flatten(1).std(dim=1, unbiased=False)


def _centroid(images: torch.Tensor) -> torch.Tensor:
    lum = luminance(images)
    height, width = lum.shape[-2:]
    y = (torch.arange(height, dtype=lum.dtype, device=lum.device) + 0.5) / height
    x = (torch.arange(width, dtype=lum.dtype, device=lum.device) + 0.5) / width
    total = lum.sum(dim=(-2, -1))
    cy = (lum.sum(dim=-1) * y).sum(dim=-1) / total
    cx = (lum.sum(dim=-2) * x).sum(dim=-1) / total
    return torch.stack([cy, cx], dim=-1)


brightness = Statistic("brightness", _brightness, dims=(), linear=True)
"""Mean luminance: ``(1/HW) sum_p L_p``."""

pixel_mean = Statistic("pixel_mean", lambda images: images, dims=("channel", "y", "x"), linear=True)
"""The image itself; its expectation is the pixel-wise mean map ``(C, H, W)``."""

contrast = Statistic("contrast", _contrast, dims=())
"""RMS contrast: ``sqrt((1/HW) sum_p (L_p - mean L)^2)``."""

centroid = Statistic("centroid", _centroid, dims=("axis",), coords={"axis": ["y", "x"]})
"""Intensity-weighted centroid ``(sum_p L_p y_p, sum_p L_p x_p) / sum_p L_p``, pixel centres
at ``(i + 0.5) / H`` so coordinates lie in [0, 1]."""

BUILTIN = {s.name: s for s in (brightness, pixel_mean, contrast, centroid)}


def get_statistic(statistic: str | Statistic | Callable) -> Statistic:
    """Resolve a built-in name, a :class:`Statistic`, or a callable into a :class:`Statistic`."""
    if isinstance(statistic, Statistic):
        return statistic
    if isinstance(statistic, str):
        if statistic not in BUILTIN:
            raise ValueError(f"unknown statistic {statistic!r}; built-in: {', '.join(BUILTIN)}")
        return BUILTIN[statistic]
    if callable(statistic):
        return Statistic(getattr(statistic, "__name__", "statistic"), statistic)
    raise ValueError(f"a statistic must be a name, a Statistic or a callable, got {statistic!r}")


def exact_expectation(model, statistic: str | Statistic | Callable) -> np.ndarray:
    """Exact ``E[f(G(z))]`` of a *linear* statistic under a model that knows its expected image.

    For linear ``f``, ``E[f(G(z))] = f(E[G(z)])``: the statistic of the model's exact
    expected image ``model.expected_image()`` ``(C, H, W)``, as the analytic
    :class:`~mcdiff.samplers.gaussian.GaussianSampler` provides it.

    Returns
    -------
    array ``own_shape``
    """
    stat = get_statistic(statistic)
    if not stat.linear:
        raise ValueError(
            f"the exact expectation is known only for linear statistics; {stat.name!r} is not "
            "linear (linear built-ins: brightness, pixel_mean)"
        )
    if not callable(getattr(model, "expected_image", None)):
        raise ValueError(f"{type(model).__name__} has no exact expected_image(); use an analytic model")
    return stat(torch.as_tensor(model.expected_image())[None])[0]
