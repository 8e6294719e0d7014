"""mcdiff: Monte Carlo uncertainty quantification of diffusion models.

Estimate expectations of image statistics under a diffusion model with confidence
intervals, using noise designs (antithetic pairs, scrambled Sobol' RQMC) that narrow those
intervals per model evaluation.
"""

from mcdiff.data import digits, extreme_brightness, load_dataset, photo_patches
from mcdiff.designs import Antithetic, Design, MonteCarlo, SobolRQMC, get_design
from mcdiff.diagnostics import antisymmetry, diagnose, pair_correlation, trajectory_correlation
from mcdiff.executors import DaskExecutor, LocalExecutor
from mcdiff.functionals import (
    Statistic,
    brightness,
    centroid,
    contrast,
    exact_cdf,
    exact_exceedance,
    exact_expectation,
    exact_law,
    exact_quantile,
    exact_std,
    exact_variance,
    get_statistic,
    pixel_mean,
)
from mcdiff.inverse import (
    InpaintingOperator,
    InpaintingProblem,
    box_mask,
    inpainting_error,
    make_measurement,
    random_mask,
)
from mcdiff.models import bundled_model, load_model
from mcdiff.multifidelity import estimate_multifidelity
from mcdiff.results import format_levels, format_table, format_targets, load_result, save_result, to_arviz, variance_map
from mcdiff.runner import estimate
from mcdiff.samplers import (
    DiffusionSampler,
    DPSSampler,
    FunctionSampler,
    GaussianMixtureSampler,
    GaussianSampler,
    PipelineSampler,
    ProbabilisticOffsetSampler,
    Sampler,
)
from mcdiff.store import ResultStore, open_draws
from mcdiff.targets import Correlation, Exceedance, FunctionOfMeans, Quantiles, Ratio, Spread
from mcdiff.training import train

__all__ = [
    "Correlation",
    "Exceedance",
    "FunctionOfMeans",
    "Quantiles",
    "Ratio",
    "Spread",
    "Antithetic",
    "DPSSampler",
    "DaskExecutor",
    "Design",
    "DiffusionSampler",
    "FunctionSampler",
    "GaussianMixtureSampler",
    "GaussianSampler",
    "InpaintingOperator",
    "InpaintingProblem",
    "LocalExecutor",
    "MonteCarlo",
    "PipelineSampler",
    "ProbabilisticOffsetSampler",
    "ResultStore",
    "Sampler",
    "SobolRQMC",
    "Statistic",
    "antisymmetry",
    "box_mask",
    "brightness",
    "bundled_model",
    "centroid",
    "contrast",
    "diagnose",
    "digits",
    "estimate",
    "extreme_brightness",
    "estimate_multifidelity",
    "exact_cdf",
    "exact_exceedance",
    "exact_expectation",
    "exact_law",
    "exact_quantile",
    "exact_std",
    "exact_variance",
    "format_levels",
    "format_table",
    "format_targets",
    "get_design",
    "get_statistic",
    "inpainting_error",
    "load_dataset",
    "load_model",
    "load_result",
    "make_measurement",
    "open_draws",
    "pair_correlation",
    "photo_patches",
    "pixel_mean",
    "random_mask",
    "save_result",
    "to_arviz",
    "trajectory_correlation",
    "train",
    "variance_map",
]
