"""Diagnostics: exact answers on the analytic Gaussian model, graceful reports elsewhere."""

import numpy as np
import pytest
import torch
import xarray as xr
from small_models import random_unet_sampler

import mcdiff
from mcdiff import diagnostics, plots
from mcdiff.cli import main


@pytest.fixture(scope="module")
def gaussian_samplers():
    return {eta: mcdiff.GaussianSampler(num_inference_steps=6, eta=eta) for eta in (0.0, 1.0)}


@pytest.fixture(scope="module")
def random_unet():
    return random_unet_sampler(5)


@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["ddim", "ddpm"])
def test_gaussian_antithetic_pairs_are_exactly_anticorrelated(gaussian_samplers, eta):
    sampler = gaussian_samplers[eta]
    pairs = diagnostics.generate_pairs(sampler, n_pairs=8, seed=1)
    corr = diagnostics.pair_correlation(pairs)
    np.testing.assert_allclose(corr.sel(pairing="PN", centring="raw"), -1.0, atol=1e-6)
    assert abs(float(corr.sel(pairing="RR").mean())) < 0.3
    exact = diagnostics.pair_correlation(pairs, mean_image=sampler.expected_image())
    np.testing.assert_allclose(exact.sel(pairing="PN", centring="centred"), -1.0, atol=1e-6)


def test_gaussian_trajectory_partners_mirror_at_every_step(gaussian_samplers):
    traj = diagnostics.trajectory_correlation(gaussian_samplers[1.0], n_pairs=4)
    assert traj.sizes["step"] == 6 and list(traj["timestep"].values)[0] > list(traj["timestep"].values)[-1]
    for name in ("x_t", "eps"):
        np.testing.assert_allclose(traj[name].sel(pairing="PN", centring="raw"), -1.0, atol=1e-6)


def test_gaussian_score_is_affine_antisymmetric():
    mean = np.linspace(0.2, 0.8, 64).reshape(1, 8, 8)  # a non-zero centre c_t
    sampler = mcdiff.GaussianSampler(mean=mean, num_inference_steps=6)
    result = diagnostics.antisymmetry(sampler, n_probes=3, n_lambdas=5, n_pixels=4)
    assert result["residual"].dims == ("timestep",) and result.sizes["timestep"] == 5
    np.testing.assert_array_less(result["residual"].values, 1e-6)
    curve = result["curve"]  # affine in lambda: equal steps along the grid
    np.testing.assert_allclose(curve.diff("lambda").std("lambda"), 0.0, atol=1e-9)


def test_antisymmetry_rejects_timesteps_outside_schedule(gaussian_samplers):
    with pytest.raises(ValueError, match="not in the sampler's schedule"):
        diagnostics.antisymmetry(gaussian_samplers[0.0], timesteps=[3])
    with pytest.raises(ValueError, match="n_probes"):
        diagnostics.antisymmetry(gaussian_samplers[0.0], n_probes=1)
    with pytest.raises(ValueError, match="n_pairs"):
        diagnostics.generate_pairs(gaussian_samplers[0.0], n_pairs=1)


# SSIM of the previous, hand-written implementation (a Gaussian-window conv2d checked against
# skimage to 1e-6) on these images: the library-backed ssim must give the same numbers.
PINNED_SSIM = {
    8: [0.8507536831215612, 0.9182223262024809],
    16: [0.852019845072468, 0.826824172714216],
    "rgb": [0.7117996789401021, 0.5906807816215446, 0.7424756293153871],
}


@pytest.mark.parametrize("side", [8, 16, "rgb"])
def test_ssim_matches_pinned_values(side):
    if side == "rgb":
        rng = np.random.default_rng(1)
        a = rng.uniform(size=(3, 3, 12, 10))
        b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1)
    else:
        rng = np.random.default_rng(0)
        a = rng.uniform(size=(2, 1, side, side))
        b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    ours = diagnostics.ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(ours, PINNED_SSIM[side], rtol=0, atol=1e-6)
    np.testing.assert_allclose(diagnostics.ssim(torch.from_numpy(a), torch.from_numpy(a)).numpy(), 1.0)
    np.testing.assert_allclose(diagnostics.ssim(torch.from_numpy(b), torch.from_numpy(a)).numpy(), ours)


def test_ssim_rejects_bad_input():
    with pytest.raises(ValueError, match="one shape"):
        diagnostics.ssim(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 7))
    with pytest.raises(ValueError, match="at least 3x3"):
        diagnostics.ssim(torch.zeros(2, 1, 2, 8), torch.zeros(2, 1, 2, 8))


class MeanAbs(torch.nn.Module):
    """A stand-in for an exported LPIPS network."""

    def forward(self, a, b):
        return (a - b).abs().mean(dim=(1, 2, 3))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("suffix", [".pt2", ".pt"], ids=["export", "torchscript"])
def test_lpips_from_user_file(tmp_path, gaussian_samplers, suffix):
    path = tmp_path / f"lpips{suffix}"
    if suffix == ".pt2":
        x = (torch.zeros(6, 3, 8, 8), torch.ones(6, 3, 8, 8))  # two tensors: export must not alias them
        torch.export.save(torch.export.export(MeanAbs(), x), str(path))
    else:
        torch.jit.script(MeanAbs()).save(str(path))
    pairs = diagnostics.generate_pairs(gaussian_samplers[0.0], n_pairs=3)
    div = diagnostics.pair_diversity(pairs, lpips=diagnostics.load_lpips(path))
    assert div["lpips"].dims == ("pairing", "pair") and np.isfinite(div["lpips"]).all()
    assert float(div["lpips"].sel(pairing="PN").mean()) > 0


def test_lpips_missing_file_says_how_to_provide_it(tmp_path):
    with pytest.raises(ValueError, match="never downloads"):
        diagnostics.load_lpips(tmp_path / "missing.pt2")


def test_random_weight_network_is_reported_without_failing(random_unet, tmp_path):
    tree = diagnostics.diagnose(random_unet, n_pairs=2, n_probes=2)
    assert isinstance(tree, xr.DataTree)
    corr = tree["pairs"]["correlation"].values
    assert np.all(np.isnan(corr) | (np.abs(corr) <= 1 + 1e-9))
    assert np.isfinite(tree["antisymmetry"]["residual"]).all()
    assert "Affine antisymmetry residual" in diagnostics.format_report(tree)
    assert len(plots.save_figures(tree, tmp_path)) == 4


def test_cli_diagnose_writes_report(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["diagnose", "--model", "gaussian", "--steps", "4", "--n-pairs", "4", "--probes", "2"]
    argv += ["-o", str(out)]
    assert main(argv) == 0
    assert "PN raw" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"report.txt", "diagnostics.nc", "pair_correlation.png", "antisymmetry.png"} <= names
    with xr.open_datatree(out / "diagnostics.nc") as tree:
        assert set(tree["pairs"]["sampler"].values) == {"ddim", "ddpm"}
        np.testing.assert_allclose(
            tree["pairs"]["correlation"].sel(pairing="PN", centring="raw"), -1.0, atol=1e-6
        )
    assert main(["diagnose", "--model", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"timesteps": [7]}, r"timesteps \[7\] are not in the sampler's schedule"),
        ({"n_probes": 1}, "n_probes must be an integer >= 2"),
        ({"seed": 2**63}, r"seed must be a non-negative integer below 2\*\*63"),
        ({"n_pairs": 1}, "n_pairs must be an integer >= 2"),
    ],
)
def test_diagnose_checks_every_input_before_sampling(gaussian_samplers, evaluations, kwargs, match):
    with pytest.raises(ValueError, match=match):
        diagnostics.diagnose(gaussian_samplers[0.0], **{"n_pairs": 4, **kwargs})
    assert evaluations == []
