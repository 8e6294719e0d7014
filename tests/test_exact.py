"""Exact laws of statistics under the analytic models: CDF, quantiles, exceedance, variance.

Each is checked against a large sample: of the sampler itself for the Gaussian model (whose
finite-step map is affine, so its law is exact at every step count), of the data for the
mixture (whose law is that of the sampler's limit). Bounds are 4.5 standard errors of the
sample quantity: a false failure of 7e-6 per check, below 1e-3 over every check here.
"""

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import mcdiff
from mcdiff.blocks import evaluate_design
from mcdiff.functionals import (
    Statistic,
    exact_cdf,
    exact_exceedance,
    exact_law,
    exact_quantile,
    exact_std,
    exact_variance,
)
from small_models import GRADIENT_MEAN

N = 2**15
LEVELS = [0.01, 0.05, 0.5, 0.95]
left_half = Statistic("left_half", lambda images: images[..., :2].mean(dim=(1, 2, 3)), dims=(), linear=True)


def draws(sampler, statistics, n=N):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate_design(sampler, statistics, mcdiff.MonteCarlo(), n, seed=11, batch_size=4096)
    finally:
        torch.set_num_threads(threads)


def check_law(values, model, statistic):
    """Empirical CDF at the exact quantiles, exceedance and variance within 4.5 SE, per component."""
    n = len(values)
    q = exact_quantile(model, statistic, LEVELS)
    for level, quantile in zip(LEVELS, q):
        below = (values <= quantile).mean(axis=0)
        assert np.abs(below - level).max() < 4.5 * np.sqrt(level * (1 - level) / n), (level, below)
    threshold = q[2] + 0.5 * (q[3] - q[2])
    p = exact_exceedance(model, statistic, threshold)
    assert np.abs((values > threshold).mean(axis=0) - p).max() <= 4.5 * np.sqrt(p * (1 - p) / n).max()
    np.testing.assert_allclose(exact_exceedance(model, statistic, threshold, above=False), 1 - p)
    centred = values - values.mean(axis=0)
    se = np.sqrt(((centred**2 - (centred**2).mean(axis=0)) ** 2).mean(axis=0) / n)
    assert (np.abs(values.var(axis=0, ddof=1) - exact_variance(model, statistic)) < 4.5 * se).all()
    np.testing.assert_allclose(exact_std(model, statistic) ** 2, exact_variance(model, statistic))


@pytest.mark.parametrize(
    ("kwargs", "statistic"),
    [
        ({}, "brightness"),
        ({}, "pixel_mean"),
        ({}, left_half),
        ({"num_inference_steps": 3}, "brightness"),  # far from the data law: its own step count
        ({"eta": 1.0, "num_inference_steps": 5}, "brightness"),  # stochastic: the step noise counts
        ({"output": "probit"}, "pixel_mean"),
    ],
)
def test_the_gaussian_models_law_matches_its_sampler(kwargs, statistic):
    model = mcdiff.GaussianSampler(mean=GRADIENT_MEAN, std=0.25, image_shape=(1, 4, 4),
                                   **{"num_inference_steps": 10, **kwargs})
    stat = mcdiff.get_statistic(statistic)
    check_law(draws(model, [stat])[stat.name], model, statistic)


def test_the_finite_step_law_is_not_the_data_law():
    """3 DDIM steps: brightness sd 0.021 against the data's 0.0625 (independent pixels of sd
    0.25, averaged over 16): the law follows the sampler, not the data."""
    model = mcdiff.GaussianSampler(mean=GRADIENT_MEAN, std=0.25, image_shape=(1, 4, 4), num_inference_steps=3)
    assert exact_std(model, "brightness") < 0.5 * 0.25 / 4


def test_the_law_agrees_with_the_exact_expectation_and_inverts_its_cdf():
    for model, stat in [
        (mcdiff.GaussianSampler(mean=GRADIENT_MEAN, std=0.25, image_shape=(1, 4, 4), output="probit"), "pixel_mean"),
        (mcdiff.GaussianMixtureSampler.preset("digits"), "brightness"),
        (mcdiff.GaussianMixtureSampler.preset("digits", output="probit"), "pixel_mean"),
    ]:
        law = exact_law(model, stat)
        np.testing.assert_allclose(law.mean(), mcdiff.exact_expectation(model, stat), rtol=1e-12, atol=1e-14)
        q = law.quantile(LEVELS)
        np.testing.assert_allclose(exact_cdf(model, stat, q), np.broadcast_to(np.reshape(LEVELS, (-1,) + (1,) * (q.ndim - 1)), q.shape), atol=1e-9)


def test_the_probit_variance_is_the_integral_it_stands_for():
    """Owen's-T closed form of E[Phi(a + bZ)^2] against numerical quadrature."""
    law = exact_law(mcdiff.GaussianSampler(mean=GRADIENT_MEAN, std=0.25, image_shape=(1, 4, 4), output="probit"),
                    "pixel_mean")
    w = law.probit_width
    for m, s in [(law.means[0, 0, 0, 0], law.stds[0, 0, 0, 0]), (law.means[0, 0, 3, 3], law.stds[0, 0, 3, 3])]:
        def moment(k):
            return integrate.quad(lambda z: stats.norm.cdf((m + s * z - 0.5) / w) ** k * stats.norm.pdf(z), -12, 12)[0]

        idx = np.argwhere(law.means[0] == m)[0]
        assert law.variance()[tuple(idx)] == pytest.approx(moment(2) - moment(1) ** 2, rel=1e-7)


def sample_mixture(sampler, n, seed):
    """``n`` draws of the mixture's data in image units, sampled directly (its sampler's limit)."""
    rng = np.random.default_rng(seed)
    k = rng.choice(sampler.n_components, size=n, p=sampler.weights)
    images = sampler.means[k] + sampler.stds[k] * rng.standard_normal((n, *sampler.image_shape))
    return images + np.einsum("nr,nrchw->nchw", rng.standard_normal((n, sampler.factors.shape[1])), sampler.factors[k])


@pytest.mark.parametrize(("output", "statistic"), [("affine", "brightness"), ("affine", left_half), ("probit", "pixel_mean")])
def test_the_mixtures_law_matches_its_data(output, statistic):
    model = mcdiff.GaussianMixtureSampler.preset("digits", output=output)
    images = torch.as_tensor(sample_mixture(model, 100_000, seed=12))
    if output == "probit":
        images = torch.special.ndtr((images - 0.5) / model.probit_width)
    check_law(mcdiff.get_statistic(statistic)(images), model, statistic)


@pytest.mark.parametrize(
    ("model", "statistic", "message"),
    [
        (mcdiff.GaussianSampler(image_shape=(1, 2, 2)), "contrast", "only for linear statistics"),
        (mcdiff.GaussianSampler(image_shape=(1, 2, 2), output="clip"), "brightness", "point masses"),
        (mcdiff.GaussianSampler(image_shape=(1, 2, 2), output="probit"), "brightness", "only pixel_mean"),
        (object(), "brightness", "no exact output_mixture"),
    ],
)
def test_laws_that_are_not_known_are_refused(model, statistic, message):
    with pytest.raises(ValueError, match=message):
        exact_law(model, statistic)


@pytest.mark.parametrize("levels", [0.0, 1.0, [0.5, 1.2], -0.1, []])
def test_quantile_levels_must_lie_in_the_open_unit_interval(levels):
    with pytest.raises(ValueError, match=r"quantile levels must be numbers in \(0, 1\)"):
        exact_quantile(mcdiff.GaussianSampler(image_shape=(1, 2, 2)), "brightness", levels)
