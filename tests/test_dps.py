"""Diffusion posterior sampling: the inpainting operator, its statistics, and DPS itself.

The analytic Gaussian model has an exact Tweedie estimate and an exact posterior, so DPS's
approximation error can be measured there; the tiny random UNet checks the sampler's plumbing
(gradients through a real network, under inference mode).
"""

import numpy as np
import pytest
import torch
from small_models import random_unet_sampler
from diffusers import DDPMScheduler

import mcdiff
from mcdiff.cli import main
from mcdiff.designs import Antithetic, MonteCarlo
from mcdiff.estimators import variance_interval
from mcdiff.inverse import check_mask, make_mask


def _noise(sampler, design, n, seed=0):
    drawn = design.draw(sampler.noise_spec, seed, 0, n, n)
    return {k: torch.from_numpy(v).to(sampler.device, sampler.dtype) for k, v in drawn.items()}


def _ddpm_unet(steps=4):
    return mcdiff.DiffusionSampler(
        random_unet_sampler(steps).unet, DDPMScheduler(), num_inference_steps=steps
    )


# ---- masks, operator, measurement ---------------------------------------------------------


def test_box_mask_is_a_centred_box_of_the_asked_area():
    mask = mcdiff.box_mask((1, 8, 8), 0.25)
    expected = np.ones((1, 8, 8))
    expected[0, 2:6, 2:6] = 0
    np.testing.assert_array_equal(mask, expected)


def test_random_mask_misses_the_asked_count_and_depends_only_on_its_seed():
    a, b = mcdiff.random_mask((3, 8, 8), 0.5, seed=1), mcdiff.random_mask((3, 8, 8), 0.5, seed=1)
    assert a.shape == (1, 8, 8) and (a == 0).sum() == 32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, mcdiff.random_mask((3, 8, 8), 0.5, seed=2))


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.zeros((1, 4, 4)), "all zero"),
        (np.ones((1, 4, 4)), "all one"),
        (np.full((1, 4, 4), 0.5), "only 0"),
        (np.ones((2, 1, 4, 4)), "must be"),
    ],
)
def test_bad_masks_are_refused(mask, message):
    with pytest.raises(ValueError, match=message):
        mcdiff.InpaintingOperator(mask)


def test_mask_must_fit_the_images():
    mask = mcdiff.box_mask((1, 4, 4), 0.25)
    with pytest.raises(ValueError, match=r"does not match images of shape \(1, 8, 8\)"):
        check_mask(mask, (1, 8, 8))
    check_mask(mask, (3, 4, 4))  # one channel of mask covers every image channel
    with pytest.raises(ValueError, match="fraction"):
        make_mask("box", (1, 4, 4), 1.0)
    with pytest.raises(ValueError, match="unknown mask"):
        make_mask("ring", (1, 4, 4), 0.5)


def test_measurement_is_the_masked_truth_on_the_model_scale_plus_observed_noise():
    mask = mcdiff.box_mask((1, 8, 8), 0.25)
    operator = mcdiff.InpaintingOperator(mask)
    truth = np.random.default_rng(0).uniform(size=(1, 8, 8))
    clean = mcdiff.make_measurement(operator, truth, sigma_y=0.0)
    np.testing.assert_allclose(clean.numpy(), mask * (2 * truth - 1))
    noisy = mcdiff.make_measurement(operator, truth, sigma_y=0.05, seed=3).numpy()
    residual = (noisy - clean.numpy())[mask == 1]
    assert (noisy[mask == 0] == 0).all()
    assert 0.035 < residual.std() < 0.065  # 48 draws of N(0, 0.05^2): a 6-sigma-wide band
    with pytest.raises(ValueError, match="sigma_y"):
        mcdiff.make_measurement(operator, truth, sigma_y=float("nan"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mcdiff.make_measurement(operator, truth + 1)


# ---- statistics ---------------------------------------------------------------------------


def test_inpainting_error_counts_only_missing_pixels():
    mask = np.ones((1, 2, 2))
    mask[0, 0, 0] = mask[0, 1, 1] = 0  # two missing pixels
    truth = np.zeros((3, 2, 2))
    stat = mcdiff.inpainting_error(truth, mask)
    images = torch.zeros(2, 3, 2, 2)
    images[0, :, 0, 0] = 0.5  # missing pixel off by 0.5 in every channel: mse = 3 * 0.25 / 6
    images[0, :, 0, 1] = 1.0  # observed pixel: ignored
    images[1, 0, 1, 1] = 0.1  # one channel of one missing pixel: mse = 0.01 / 6
    values = stat(images)
    np.testing.assert_allclose(values[:, 0], [0.125, 0.01 / 6])
    np.testing.assert_allclose(values[:, 1], -10 * np.log10([0.125, 0.01 / 6]))
    assert stat.dims == ("metric",) and list(stat.coords["metric"]) == ["mse", "psnr"]
    with pytest.raises(ValueError, match="built for images of shape"):
        stat(torch.zeros(1, 1, 2, 2))


def test_variance_interval_covers_the_variance_at_its_level():
    """Delta-method interval for sigma^2 = 0.09, N = 256, 1000 repeats per design.

    Measured coverage (seed 0): MC 0.950, antithetic pairs of an affine map 0.939 (each pair
    is one draw of (x - mu)^2); the band [0.915, 0.975] is 3 binomial standard errors around
    them, so a correct implementation fails it with probability below 0.5%.
    """
    rng = np.random.default_rng(0)
    for design in ("mc", "amc"):
        covered = 0
        for _ in range(1000):
            if design == "mc":
                values, groups = 0.5 + 0.3 * rng.standard_normal(256), np.arange(256)
            else:
                z = 0.3 * rng.standard_normal(128)
                values, groups = np.stack([0.5 + z, 0.5 - z], axis=1).ravel(), np.arange(256) // 2
            fields = variance_interval(values, groups)
            covered += fields["ci_lower"] <= 0.09 <= fields["ci_upper"]
        assert 0.915 <= covered / 1000 <= 0.975, (design, covered)


# ---- the sampler --------------------------------------------------------------------------


@pytest.mark.parametrize("ddpm", [False, True])
def test_zeta_zero_is_the_unconditional_sampler_exactly(ddpm):
    base = _ddpm_unet() if ddpm else random_unet_sampler(4)
    problem = mcdiff.InpaintingProblem(np.full((1, 8, 8), 0.5), mcdiff.box_mask((1, 8, 8), 0.25))
    dps = problem.dps(base, zeta=0.0)
    assert dps.noise_spec == base.noise_spec
    noise = _noise(base, MonteCarlo(), 4)
    with torch.inference_mode():  # as the runner calls it; the noise is then an inference tensor too
        inference_noise = {k: v.clone() for k, v in noise.items()}
        expected, got = base(noise), dps(inference_noise)
    assert torch.equal(got, expected)
    guided = problem.dps(base, zeta=0.5)
    with torch.no_grad():
        assert not torch.equal(guided(noise), expected)


def test_antithetic_partners_negate_the_whole_path():
    """A centred analytic model (mean 0.5, so mu = 0) measured at its mean (y = 0): every DPS
    step is then an odd map of (x_t, n_t), so partners that negate x_T *and* every n_t give
    images ``1 - G(z)``, to floating-point exactness, while negating x_T alone does not."""
    base = mcdiff.GaussianSampler(
        mean=0.5, std=0.2, image_shape=(1, 4, 4), num_inference_steps=8, scheduler="DDPMScheduler"
    )
    mask = mcdiff.random_mask((1, 4, 4), 0.5, seed=0)
    problem = mcdiff.InpaintingProblem(np.full((1, 4, 4), 0.5), mask, sigma_y=0.0)
    dps = problem.dps(base, zeta=0.3)
    assert set(dps.noise_spec) == {"x_T", "steps"}
    noise = _noise(dps, Antithetic(), 8)
    for name in ("x_T", "steps"):
        assert torch.equal(noise[name][1::2], -noise[name][0::2])
    images = dps(noise)
    torch.testing.assert_close(images[0::2] + images[1::2], torch.ones_like(images[0::2]), rtol=0, atol=1e-12)
    half = {"x_T": noise["x_T"], "steps": noise["steps"].clone()}
    half["steps"][1::2] = half["steps"][0::2]  # partner keeps the step noise: not antithetic
    mixed = dps(half)
    assert (mixed[0::2] + mixed[1::2] - 1).abs().max() > 0.05


def test_dps_leaves_pixels_the_measurement_does_not_see_unchanged():
    """With a diagonal Gaussian prior, x0_hat is pixel-wise, so the gradient is exactly 0 off
    the mask: the missing pixels are those of the unconditional sampler on the same noise."""
    base = mcdiff.GaussianSampler(
        mean=np.linspace(0.3, 0.7, 16).reshape(1, 4, 4),
        std=0.2,
        image_shape=(1, 4, 4),
        num_inference_steps=10,
        scheduler="DDPMScheduler",
    )
    mask = mcdiff.random_mask((1, 4, 4), 0.5, seed=0)
    dps = mcdiff.InpaintingProblem(np.full((1, 4, 4), 0.9), mask).dps(base, zeta=0.5)
    noise = _noise(dps, MonteCarlo(), 16)
    guided, free = dps(noise), base(noise)
    missing = torch.as_tensor(mask == 0).expand_as(guided)
    assert torch.equal(guided[missing], free[missing])
    assert (guided[~missing] - free[~missing]).abs().max() > 0.1


def test_posterior_mean_matches_the_exact_gaussian_posterior_on_observed_pixels():
    """Prior x ~ N(mu, s^2 I) (model scale), y = M x + sigma_y n: the exact posterior of an
    observed pixel has mean mu + s^2 / (s^2 + sigma_y^2) (y - mu), a missing one keeps the prior.

    DPS replaces p(y | x_t) by p(y | x0_hat(x_t)) and takes fixed-length steps of the unsquared
    norm, so it is biased; measured here (200 DDPM steps, zeta = 0.3, 2048 draws): largest
    gap on an observed pixel 0.0055 on the image scale, against a prior-to-posterior shift of
    up to 0.35 and a Monte Carlo standard error of 0.0015. The tolerance 0.025 (7% of the
    shift) allows for that bias and the noise; the prior mean (zeta = 0, no guidance) misses
    by 0.35 and fails it. Missing pixels must match the prior mean within 4 standard errors
    (the gradient vanishes there, see the test above). The posterior standard deviation of an
    observed pixel is exactly 0.0248; DPS gives 0.028-0.029 (measured, 13-16% too wide, with a
    Monte Carlo error of about 2%): the test allows 30%.
    """
    mean = np.linspace(0.3, 0.7, 16).reshape(1, 4, 4)
    base = mcdiff.GaussianSampler(
        mean=mean, std=0.2, image_shape=(1, 4, 4), num_inference_steps=200, scheduler="DDPMScheduler"
    )
    truth = np.clip(mean + 0.3 * np.sign(np.random.default_rng(1).standard_normal((1, 4, 4))), 0, 1)
    mask = mcdiff.random_mask((1, 4, 4), 0.5, seed=0)
    problem = mcdiff.InpaintingProblem(truth, mask, sigma_y=0.05, seed=0)
    mu, s, y = 2 * mean - 1, 0.4, problem.measurement.numpy()
    exact = (np.where(mask == 1, mu + s**2 / (s**2 + 0.05**2) * (y - mu), mu) + 1) / 2
    exact_sd = np.sqrt(s**2 * 0.05**2 / (s**2 + 0.05**2)) / 2
    observed = mask == 1
    n = 2048
    dps = problem.dps(base, zeta=0.3)
    images = dps(_noise(dps, MonteCarlo(), n)).numpy()
    posterior_mean, std_error = images.mean(0), images.std(0) / np.sqrt(n)
    gap = np.abs(posterior_mean - exact)
    assert gap[observed].max() < 0.025, gap[observed].max()
    assert (gap[~observed] < 4 * std_error[~observed]).all()
    assert (np.abs(images.std(0)[observed] / exact_sd - 1) < 0.3).all(), images.std(0)[observed]
    assert np.abs(mean - exact)[observed].max() > 0.2  # the prior fails the tolerance


def test_bad_dps_input_is_refused():
    base = random_unet_sampler(2)  # 1 x 8 x 8 images
    operator = mcdiff.InpaintingOperator(mcdiff.box_mask((1, 8, 8), 0.25))
    y = torch.zeros(1, 8, 8)
    for zeta in (float("nan"), float("inf"), -0.1, True, "1"):
        with pytest.raises(ValueError, match="zeta"):
            mcdiff.DPSSampler.from_sampler(base, operator, y, zeta)
    with pytest.raises(
        ValueError, match=r"mask of shape \(1, 4, 4\) does not match images of shape \(1, 8, 8\)"
    ):
        mcdiff.DPSSampler.from_sampler(
            base, mcdiff.InpaintingOperator(mcdiff.box_mask((1, 4, 4), 0.25)), torch.zeros(1, 4, 4), 0.5
        )
    with pytest.raises(ValueError, match=r"measurement of shape \(1, 4, 4\) does not match"):
        mcdiff.DPSSampler.from_sampler(base, operator, torch.zeros(1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="finite"):
        mcdiff.DPSSampler.from_sampler(base, operator, torch.full((1, 8, 8), float("nan")), 0.5)
    with pytest.raises(ValueError, match="probit"):
        mcdiff.DPSSampler.from_sampler(mcdiff.GaussianSampler(output="probit"), operator, y, 0.5)
    from mcdiff.samplers.diffusion import predicted_original_sample

    x = torch.zeros(1, 1, 8, 8)  # an unknown prediction type is refused, not read as v-prediction
    with pytest.raises(ValueError, match="prediction_type 'flow' of DDPMScheduler .* known: epsilon, sample"):
        predicted_original_sample(DDPMScheduler(prediction_type="flow"), x, torch.tensor(10), x)
    with pytest.raises(ValueError, match="does not match"):  # a ground truth of the wrong size
        mcdiff.InpaintingProblem(np.zeros((1, 4, 4)), mcdiff.box_mask((1, 8, 8), 0.25))


def test_estimate_runs_dps_and_records_the_problem():
    problem = mcdiff.InpaintingProblem(np.full((1, 8, 8), 0.25), mcdiff.random_mask((1, 8, 8), 0.5))
    dps = problem.dps(random_unet_sampler(2), zeta=0.5)
    result = mcdiff.estimate(
        dps, [problem.error, "pixel_mean"], ["mc", "amc"], n_evals=8, batch_size=4, progress=False
    )
    summary = result["summary"]
    assert summary.attrs["zeta"] == 0.5 and summary.attrs["operator"] == "inpainting"
    other = mcdiff.InpaintingProblem(np.full((1, 8, 8), 0.75), problem.operator.mask)
    assert (
        other.dps(random_unet_sampler(2), 0.5).describe()["measurement_sha256"]
        != summary.attrs["measurement_sha256"]
    )
    with pytest.raises(ValueError, match="got DPSSampler"):  # DPS of DPS is refused
        other.dps(dps, 0.5)
    assert list(summary["inpainting_error"]["metric"].values) == ["mse", "psnr"]
    variance = mcdiff.variance_map(result)
    assert variance.dims == ("design", "summary", "channel", "y", "x")
    np.testing.assert_allclose(
        variance.sel(summary="estimate"), summary["pixel_mean"].sel(summary="variance_per_eval")
    )
    fewer = dps.with_steps(1)
    assert (fewer.nfe, fewer.zeta) == (1, 0.5) and torch.equal(fewer.measurement, dps.measurement)


def test_cli_estimate_inpaints_a_digit(tmp_path, capsys):
    out = tmp_path / "r.nc"
    code = main(
        [
            "estimate",
            "--model",
            "gaussian",
            "--steps",
            "4",
            "--ddpm",
            "--inpaint",
            "random",
            "--mask-fraction",
            "0.5",
            "--ground-truth-index",
            "3",
            "-n",
            "16",
            "--designs",
            "mc",
            "amc",
            "-o",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "inpainting_error[psnr]" in printed and "pixel_mean" in printed
    attrs = mcdiff.load_result(out)["summary"].attrs
    assert attrs["model"] == "DPSSampler" and attrs["observed_fraction"] == 0.5
    code = main(["estimate", "--inpaint", "box", "--zeta", "inf", "-n", "16", "-o", str(tmp_path / "x.nc")])
    assert code == 2 and "zeta" in capsys.readouterr().err


def test_cli_refuses_inverse_problem_options_without_inpaint(tmp_path, capsys):
    code = main(["estimate", "--zeta", "0.5", "--sigma-y", "0.1", "-n", "16", "-o", str(tmp_path / "x.nc")])
    assert code == 2
    assert "--sigma-y, --zeta apply only to an inverse problem" in capsys.readouterr().err
    assert not (tmp_path / "x.nc").exists()
