"""Targets through the runner: estimates near the analytic model's exact answers under every design,
the same bits from a store and after a NetCDF round trip, errors before the first evaluation, and
the CLI's --quantiles / --exceed / --spread."""

import numpy as np
import pytest

import mcdiff
from mcdiff.cli import main
from mcdiff.functionals import exact_exceedance, exact_quantile, exact_variance
from mcdiff.targets import Exceedance, Mean, Quantiles, Spread

DESIGNS = ["mc", "amc", "rqmc", "amc-rqmc"]
LEVELS = [0.1, 0.5, 0.9]


@pytest.fixture(scope="module")
def model():
    return mcdiff.GaussianSampler(image_shape=(1, 4, 4), num_inference_steps=8, output="affine")


@pytest.fixture(scope="module")
def targets(model):
    centre = float(exact_quantile(model, "brightness", [0.7])[0])
    return [Quantiles("brightness", LEVELS), Exceedance("brightness", centre), Spread("brightness"),
            Mean("brightness", "betting", (0.0, 1.0))]


@pytest.fixture(scope="module")
def result(model, targets):
    with pytest.warns(RuntimeWarning, match="group means are all equal"):  # the antithetic median: exact
        return mcdiff.estimate(model, ["brightness"], DESIGNS, n_evals=4096, seed=1, progress=False, targets=targets)


def _within(node, truth, fields="estimate", sigmas=4.5):
    """|estimate - truth| <= 4.5 SE, the SE read from the 95% half-width: a false failure below 1e-5 per check."""
    estimate = node.sel(target_summary="estimate").values
    half = node.sel(target_summary="ci_width").values / 2
    assert np.all(np.abs(estimate - truth) <= sigmas / 1.96 * half + 1e-12), (estimate, truth, half)


def test_targets_agree_with_the_exact_answers_under_every_design(model, result, targets):
    node = result["targets"]
    quantiles = node["brightness_quantiles"]
    for design in DESIGNS:
        _within(quantiles.sel(design=design), exact_quantile(model, "brightness", LEVELS))
        _within(node[targets[1].name].sel(design=design), exact_exceedance(model, "brightness", targets[1].option("threshold")))
        spread = node["brightness_spread"].sel(design=design)
        _within(spread.sel(brightness_spread_level="variance"), exact_variance(model, "brightness"))
        assert node["brightness_mean_betting"].sel(design=design, target_summary="ci_lower") <= float(
            exact_quantile(model, "brightness", [0.5])[0]) <= node["brightness_mean_betting"].sel(design=design, target_summary="ci_upper")
    assert node["P_brightness_gt_" + f"{targets[1].option('threshold'):g}"].attrs["interval"] == "t"


def test_targets_come_back_from_a_store_and_a_file_bit_for_bit(model, targets, tmp_path):
    run = dict(statistics=["brightness", "pixel_mean"], designs=["amc", "rqmc"], n_evals=256, seed=2,
               batch_size=32, progress=False, targets=targets[:3], draws="none")
    with pytest.warns(RuntimeWarning):
        first = mcdiff.estimate(model, store=tmp_path / "s", **run)
        again = mcdiff.estimate(model, store=tmp_path / "s", **run)
    assert again["targets"].identical(first["targets"])
    assert list(first["draws"].data_vars) == ["brightness"]  # kept for the targets only; the map is not
    mcdiff.save_result(first, tmp_path / "r.nc")
    assert mcdiff.load_result(tmp_path / "r.nc")["targets"].identical(first["targets"])


@pytest.mark.parametrize(
    "target, match",
    [
        (Quantiles("contrast", [0.5]), "needs statistic 'contrast'"),
        (Exceedance("pixel_mean", 0.5), "has 16 components; name one with component"),
        (Exceedance("pixel_mean", 0.5, component=16), "component 16 is not in 0 .. 15"),
    ],
)
def test_a_bad_target_is_refused_before_any_evaluation(model, target, match):
    class Refusing(mcdiff.GaussianSampler):
        def sample(self, noise):
            raise AssertionError("evaluated")

    with pytest.raises(ValueError, match=match):
        mcdiff.estimate(Refusing(image_shape=(1, 4, 4)), ["brightness", "pixel_mean"], ["mc"], n_evals=64,
                        progress=False, targets=[target])


def test_target_constructors_check_their_arguments():
    with pytest.raises(ValueError, match=r"quantile levels must be numbers in \(0, 1\)"):
        Quantiles("brightness", [0.5, 1.0])
    with pytest.raises(ValueError, match="give bounds=\\(lo, hi\\) for statistic 'brightness'"):
        Mean("brightness", "bernstein")
    with pytest.raises(ValueError, match="STATISTIC>VALUE"):
        mcdiff.targets.parse_exceedance("brightness=0.3")


def test_the_cli_estimates_targets_and_saves_them(tmp_path, capsys):
    code = main(["estimate", "-n", "128", "--designs", "mc", "amc", "--statistics", "brightness", "centroid",
                 "--quantiles", "0.25", "0.75", "--exceed", "brightness>0.5", "centroid[1]<0.5", "--interval",
                 "betting", "--spread", "-o", str(tmp_path / "r.nc")])
    printed = capsys.readouterr().out
    assert code == 0 and "brightness_quantiles 0.25" in printed and "P_centroid_1_lt_0.5" in printed
    saved = mcdiff.load_result(tmp_path / "r.nc")["targets"]
    assert set(saved.data_vars) == {"brightness_quantiles", "P_brightness_gt_0.5", "P_centroid_1_lt_0.5", "brightness_spread"}
    assert saved["P_centroid_1_lt_0.5"].attrs["interval"] == "betting" and saved["P_centroid_1_lt_0.5"].attrs["component"] == 1


def test_two_components_of_one_statistic_are_two_targets(model):
    both = [Quantiles("pixel_mean", [0.5], component=0), Quantiles("pixel_mean", [0.5], component=5)]
    result = mcdiff.estimate(model, ["pixel_mean"], ["mc"], n_evals=64, progress=False, targets=both)
    assert set(result["targets"].data_vars) == {"pixel_mean_0_quantiles", "pixel_mean_5_quantiles"}


def test_a_degenerate_interval_warns_and_reports_no_infinite_efficiency(model):
    constant = mcdiff.Statistic("dark_fraction", lambda images: (images < -1).float().mean(dim=(1, 2, 3)), dims=())
    with pytest.warns(RuntimeWarning, match="'dark_fraction' under design 'rqmc': the interval has width 0"):
        result = mcdiff.estimate(model, [constant, "brightness"], ["mc", "rqmc"], n_evals=256, progress=False)
    row = result["summary"]["dark_fraction"].sel(design="rqmc")
    assert float(row.sel(summary="ci_width")) == 0 and np.isnan(float(row.sel(summary="relative_efficiency")))
    corrected = result["summary"]["brightness"].sel(summary="relative_efficiency_corrected")
    raw = result["summary"]["brightness"].sel(summary="relative_efficiency")
    assert float(corrected.sel(design="mc")) == float(raw.sel(design="mc"))  # plain MC: exactly 1, unchanged
    assert float(corrected.sel(design="rqmc")) == pytest.approx(float(raw.sel(design="rqmc")) * 13 / 15)
