"""The analytic model: an affine map of the noise with exactly known output moments."""

import numpy as np
import pytest
import torch

import mcdiff
from mcdiff.samplers import GaussianSampler


def run(sampler, noise):
    with torch.inference_mode():
        return sampler.sample(noise)


SAMPLERS = [(0.0, "DDIMScheduler"), (1.0, "DDIMScheduler"), (0.0, "DDPMScheduler")]


@pytest.mark.parametrize("eta, scheduler", SAMPLERS)
def test_sampler_is_affine_in_the_whole_noise_path(eta, scheduler):
    s = GaussianSampler(mean=0.4, std=0.2, image_shape=(1, 3, 3), num_inference_steps=8, eta=eta, scheduler=scheduler)
    rng = np.random.default_rng(0)
    draw = lambda: {k: torch.from_numpy(rng.standard_normal((2, *v))) for k, v in s.noise_spec.items()}  # noqa: E731
    a, b = draw(), draw()
    zero = {k: torch.zeros_like(v) for k, v in a.items()}
    both = {k: a[k] + b[k] for k in a}
    base = run(s, zero)
    torch.testing.assert_close(run(s, both) - base, (run(s, a) - base) + (run(s, b) - base), rtol=0, atol=1e-12)
    assert set(s.noise_spec) == ({"x_T", "steps"} if s.stochastic else {"x_T"})


@pytest.mark.parametrize("eta, scheduler", SAMPLERS)
def test_output_moments_match_a_large_sample(eta, scheduler):
    """20000 draws: the sample mean within 5 SE of the exact mean and the sample std within
    5 SE (std of a sample std ~ s / sqrt(2n)) of the exact std; false failure < 1e-4."""
    s = GaussianSampler(mean=0.3, std=0.1, image_shape=(1, 2, 2), num_inference_steps=10, eta=eta,
                        scheduler=scheduler)
    mean, std = s.output_moments()
    gen = torch.Generator().manual_seed(0)
    noise = {k: torch.randn((20000, *v), generator=gen, dtype=torch.float64) for k, v in s.noise_spec.items()}
    images = run(s, noise)
    n = len(images)
    assert ((images.mean(0) - mean).abs() < 5 * std / n**0.5).all()
    assert ((images.std(0) - std).abs() < 5 * std / (2 * n) ** 0.5).all()


def test_deterministic_ddim_converges_to_the_data_distribution():
    """Few-step DDIM shrinks the spread (discretisation error); at 1000 steps it is within 1%."""
    stds = []
    for steps in (10, 50, 1000):
        s = GaussianSampler(mean=0.3, std=0.1, image_shape=(1, 1, 1), num_inference_steps=steps)
        mean, std = s.output_moments()
        assert float(mean) == pytest.approx(0.3, abs=1e-3)
        stds.append(float(std))
    assert stds[0] < stds[1] < stds[2]
    assert stds[2] == pytest.approx(0.1, rel=0.01)


@pytest.mark.parametrize("output", ["clip", "probit"])
def test_closed_form_expectation_of_nonlinear_outputs(output):
    """Exact E[image] vs 200000 draws: within 5 SE per pixel (false failure < 1e-5)."""
    s = GaussianSampler(mean=np.array([0.05, 0.5, 0.9]).reshape(1, 1, 3), std=0.3, image_shape=(1, 1, 3),
                        num_inference_steps=5, output=output)
    noise = {"x_T": torch.randn((200000, 1, 1, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)}
    images = run(s, noise)
    exact = s.expected_image()
    assert ((images.mean(0) - exact).abs() < 5 * images.std(0) / len(images) ** 0.5).all()
    assert images.min() >= 0 and images.max() <= 1


def test_antithetic_pairs_are_exactly_mirrored_on_the_affine_model():
    s = GaussianSampler(mean=0.5, std=0.2, image_shape=(1, 4, 4), num_inference_steps=10)
    z = torch.randn((64, 1, 4, 4), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mean, _ = s.output_moments()
    torch.testing.assert_close(run(s, {"x_T": z}) + run(s, {"x_T": -z}), 2 * mean.expand(64, -1, -1, -1))
    a = run(s, {"x_T": z}).ravel() - mean.repeat(64, 1, 1, 1).ravel()
    b = run(s, {"x_T": -z}).ravel() - mean.repeat(64, 1, 1, 1).ravel()
    assert np.corrcoef(a.numpy(), b.numpy())[0, 1] == pytest.approx(-1.0, abs=1e-12)


def test_exact_expectation_only_for_linear_statistics_of_analytic_models():
    s = GaussianSampler()
    assert mcdiff.exact_expectation(s, "brightness") == pytest.approx(float(s.expected_image().mean()))
    with pytest.raises(ValueError, match="only for linear statistics; 'contrast' is not linear"):
        mcdiff.exact_expectation(s, "contrast")
    with pytest.raises(ValueError, match="no exact expected_image"):
        mcdiff.exact_expectation(object(), "brightness")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"std": 0.0}, "std finite and > 0"),
        ({"mean": np.zeros(3)}, "must broadcast to image_shape"),
        ({"output": "tanh"}, "output must be one of"),
        ({"num_inference_steps": 5000}, r"num_inference_steps=5000 must be in \[1, 1000\]"),
        ({"eta": -1.0}, "eta must be >= 0"),
        ({"scheduler": "EulerDiscreteScheduler"}, "not supported; supported: DDIMScheduler, DDPMScheduler"),
    ],
)
def test_bad_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianSampler(**kwargs)
