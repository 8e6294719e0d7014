"""Model adapters: everything that maps N(0, I) noise to images (see :class:`Sampler`)."""

from mcdiff.samplers.base import Sampler
from mcdiff.samplers.diffusion import DiffusionSampler
from mcdiff.samplers.dps import DPSSampler
from mcdiff.samplers.function import FunctionSampler
from mcdiff.samplers.gaussian import GaussianSampler
from mcdiff.samplers.mixture import GaussianMixtureSampler
from mcdiff.samplers.offset import ProbabilisticOffsetSampler, offset_noise_psi
from mcdiff.samplers.pipeline import PipelineSampler

__all__ = [
    "DPSSampler",
    "DiffusionSampler",
    "FunctionSampler",
    "GaussianMixtureSampler",
    "GaussianSampler",
    "PipelineSampler",
    "ProbabilisticOffsetSampler",
    "Sampler",
    "offset_noise_psi",
]
