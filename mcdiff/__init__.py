"""mcdiff: Monte Carlo uncertainty quantification of diffusion models.

Estimate expectations of image statistics under a diffusion model with confidence
intervals, using noise designs (antithetic pairs, scrambled Sobol' RQMC) that narrow those
intervals per model evaluation.
"""

from mcdiff.designs import Antithetic, Design, MonteCarlo, SobolRQMC, get_design
from mcdiff.diagnostics import antisymmetry, diagnose, pair_correlation, trajectory_correlation
from mcdiff.executors import DaskExecutor, LocalExecutor
from mcdiff.functionals import Statistic, brightness, centroid, contrast, get_statistic, pixel_mean
from mcdiff.results import format_table, load_result, save_result, to_arviz
from mcdiff.runner import estimate
from mcdiff.samplers import DiffusionSampler, GaussianSampler, Sampler
from mcdiff.store import ResultStore

__all__ = [
    "Antithetic",
    "DaskExecutor",
    "Design",
    "DiffusionSampler",
    "GaussianSampler",
    "LocalExecutor",
    "MonteCarlo",
    "ResultStore",
    "Sampler",
    "SobolRQMC",
    "Statistic",
    "antisymmetry",
    "brightness",
    "centroid",
    "contrast",
    "diagnose",
    "estimate",
    "format_table",
    "get_design",
    "get_statistic",
    "load_result",
    "pair_correlation",
    "pixel_mean",
    "save_result",
    "to_arviz",
    "trajectory_correlation",
]
