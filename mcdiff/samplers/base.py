"""The sampler contract: a model that maps a batch of N(0, I) noise to a batch of images."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from mcdiff.noise import Noise, as_noise


class Sampler(ABC):
    """Maps standard-normal noise to images in [0, 1].

    A sampler declares the noise one evaluation consumes as :attr:`noise_spec`, a mapping
    from component name to shape (``{"x_T": (C, H, W)}``; stochastic samplers add
    ``"steps": (T, C, H, W)``), and turns a batch of that noise into images ``(B, C, H, W)``.
    It receives the noise as a :class:`~mcdiff.noise.Noise`: ``noise["x_T"]`` is a whole
    component, ``noise.step("steps", i)`` step ``i`` of one, asked for at that step, so that
    a design can generate it then, on :attr:`device`, in :attr:`dtype`.
    It maps N(0, I) onto its own prior itself (``x_T = mean + scale * z``), so designs stay
    model-agnostic and an antithetic partner reflects around the prior's mean.

    Attributes
    ----------
    image_shape : tuple of int
        ``(C, H, W)`` of one output image.
    nfe : int
        Network function evaluations per sample (the cost unit).
    device, dtype
        Where and in which precision the noise is handed to :meth:`sample`.
    """

    image_shape: tuple[int, int, int]
    nfe: int = 1
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @property
    @abstractmethod
    def noise_spec(self) -> dict[str, tuple[int, ...]]:
        """Per-evaluation noise shapes by component name."""

    @abstractmethod
    def sample(self, noise: Noise) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [0, 1] from noise ``{name: (B, *shape)}``."""

    def describe(self) -> dict[str, str | int | float]:
        """Settings recorded in a result's attributes (NetCDF-safe scalars)."""
        return {"model": type(self).__name__, "nfe_per_sample": self.nfe}

    def __call__(self, noise: Noise | dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`sample` of ``noise``, a :class:`~mcdiff.noise.Noise` or tensors ``{name: (B, *shape)}``."""
        return self.sample(as_noise(noise))
