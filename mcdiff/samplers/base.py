"""The sampler contract: a model that maps a batch of N(0, I) noise to a batch of images."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from mcdiff.noise import Noise, as_noise
from mcdiff.samplers.identity import IdentityCache


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
        """Settings recorded in a result's attributes (NetCDF-safe scalars), the model's identity among them.

        ``weights_sha256`` is :meth:`weights_sha256`: a store resumed with another model of
        the same configuration is refused by it, and a result names the model it came from.
        """
        return {
            "model": type(self).__name__,
            "nfe_per_sample": self.nfe,
            "weights_sha256": self.weights_sha256(),
        }

    def identity(self) -> object:
        """What the sampler computes with, the content :meth:`weights_sha256` hashes.

        By default the networks, tensors and arrays among the sampler's attributes; subclasses
        name theirs (the network's weights, an analytic model's full parameters, a callable).
        """
        kinds = (torch.nn.Module, torch.Tensor, np.ndarray)
        return {name: value for name, value in vars(self).items() if isinstance(value, kinds)}

    def weights_sha256(self) -> str:
        """SHA-256 of :meth:`identity` (:mod:`mcdiff.samplers.identity`), computed once per sampler.

        For a network: every parameter and buffer in ``state_dict`` order (name, dtype, shape,
        bytes). It is recomputed only when a tensor changed (storage or in-place version).
        """
        cache = self.__dict__.setdefault("_identity_cache", IdentityCache())
        return cache.sha256(self.identity())

    def __call__(self, noise: Noise | dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`sample` of ``noise``, a :class:`~mcdiff.noise.Noise` or tensors ``{name: (B, *shape)}``."""
        return self.sample(as_noise(noise))
