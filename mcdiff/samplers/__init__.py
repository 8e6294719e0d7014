"""Model adapters: everything that maps N(0, I) noise to images (see :class:`Sampler`)."""

from mcdiff.samplers.base import Sampler
from mcdiff.samplers.diffusion import DiffusionSampler
from mcdiff.samplers.gaussian import GaussianSampler
from mcdiff.samplers.offset import ProbabilisticOffsetSampler, offset_noise_psi

__all__ = ["DiffusionSampler", "GaussianSampler", "ProbabilisticOffsetSampler", "Sampler", "offset_noise_psi"]
