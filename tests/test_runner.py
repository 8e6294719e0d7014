"""The public estimate(): schema, persistence, invariance to batching, and input checks."""

import numpy as np
import pytest
import torch
import xarray as xr

import mcdiff
from mcdiff.estimators import SUMMARY_FIELDS
from mcdiff.results import summarize_draws

STATS = ["brightness", "contrast", "centroid", "pixel_mean"]


@pytest.fixture(scope="module")
def result(probit_model):
    return mcdiff.estimate(probit_model, STATS, ["mc", "amc", "rqmc", "amc-rqmc"], n_evals=256, seed=3,
                           batch_size=64, progress=False)


def test_result_follows_the_schema(result, probit_model):
    summary, draws = result["summary"], result["draws"]
    assert list(summary["summary"].values) == list(SUMMARY_FIELDS)
    assert list(summary["design"].values) == ["mc", "amc", "rqmc", "amc-rqmc"]
    assert summary["brightness"].dims == ("design", "summary")
    assert summary["centroid"].dims == ("design", "summary", "axis")
    assert list(summary["centroid"]["axis"].values) == ["y", "x"]
    assert summary["pixel_mean"].dims == ("design", "summary", "channel", "y", "x")
    assert draws["pixel_mean"].dims == ("design", "draw", "channel", "y", "x")
    assert draws["group"].dims == ("design", "draw")
    np.testing.assert_array_equal(draws["address"], np.arange(256))
    np.testing.assert_array_equal(draws["group"].sel(design="amc"), np.arange(256) // 2)
    assert (summary["n_evals"] == 256).all() and (summary["nfe"] == 256 * probit_model.nfe).all()
    for key in ("confidence", "model", "seed", "mcdiff_version", "num_inference_steps", "output"):
        assert key in summary.attrs
    assert "Sobol'" in str(summary["noise"].sel(design="rqmc").values)


def test_summary_is_recomputable_from_the_draws(result):
    again = summarize_draws(result["draws"].to_dataset(), 0.95, result["summary"].attrs["nfe_per_sample"])
    for name in STATS:
        xr.testing.assert_allclose(again[name], result["summary"][name].to_dataset()[name])


def test_efficiency_vs_mc_is_reported_when_mc_ran(result):
    b = result["summary"]["brightness"]
    assert float(b.sel(design="mc", summary="relative_efficiency_vs_mc")) == 1.0
    width = b.sel(summary="ci_width")
    expected = (width.sel(design="mc") / width.sel(design="amc")) ** 2
    assert float(b.sel(design="amc", summary="relative_efficiency_vs_mc")) == pytest.approx(float(expected))


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_save_and_load_lose_nothing(result, tmp_path, suffix):
    path = mcdiff.save_result(result, tmp_path / f"result{suffix}")
    loaded = mcdiff.load_result(path)
    assert loaded.identical(result)


def test_draws_do_not_depend_on_batch_size(probit_model):
    run = lambda b: mcdiff.estimate(probit_model, ["brightness"], ["amc", "rqmc"], n_evals=128, seed=1,  # noqa: E731
                                    batch_size=b, progress=False)
    assert run(2)["draws"].identical(run(128)["draws"])


def test_batches_never_split_antithetic_pairs(recording_sampler):
    mcdiff.estimate(recording_sampler, ["brightness"], ["amc", "amc-rqmc"], n_evals=64, batch_size=7, progress=False)
    assert all(len(batch) == 6 or len(batch) == 64 % 6 for batch in recording_sampler.batches)
    for batch in recording_sampler.batches:
        assert len(batch) % 2 == 0
        torch.testing.assert_close(batch[1::2], -batch[0::2], rtol=0, atol=0)


def test_user_statistic_with_named_dims(probit_model):
    quadrants = mcdiff.Statistic(
        "quadrant_mean", lambda im: im[:, 0].reshape(len(im), 2, 2, 2, 2).mean((2, 4)), dims=("qy", "qx")
    )
    result = mcdiff.estimate(probit_model, [quadrants, lambda im: im.amax(dim=(1, 2, 3))], ["mc"], n_evals=16,
                             progress=False)
    assert result["summary"]["quadrant_mean"].dims == ("design", "summary", "qy", "qx")
    assert result["draws"]["<lambda>"].dims == ("design", "draw")


def test_arviz_accepts_the_draws(result):
    az = pytest.importorskip("arviz")
    idata = mcdiff.to_arviz(result, "amc")
    ess = az.ess(idata)
    # antithetic partners are adjacent: negatively correlated, so ESS exceeds the draw count
    assert float(ess["brightness"]) > 256
    assert "centroid" in az.summary(idata).index.str.split("[").str[0]


class _WrongShape(mcdiff.Sampler):
    image_shape = (1, 4, 4)
    noise_spec = {"x_T": (1, 4, 4)}

    def sample(self, noise):
        return torch.zeros(len(noise["x_T"]), 1, 4, 5)


def _nan_at_addresses_3_and_7(images):
    out = images.mean(dim=(1, 2, 3)).clone()
    out[3:8:4] = float("nan")
    return out


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"statistics": ["sharpness"]}, "unknown statistic 'sharpness'; built-in: brightness, pixel_mean"),
        ({"designs": ["qmc"]}, "unknown design 'qmc'"),
        ({"designs": ["mc", "mc"]}, "design names must be unique"),
        ({"n_evals": 63, "designs": ["amc"]}, "n_evals=63 is odd"),
        ({"n_evals": 100, "designs": ["rqmc"]}, "not replicates·2\\^m"),
        ({"confidence": 95}, "confidence must be in \\(0, 1\\)"),
        ({"batch_size": 1, "designs": ["amc"]}, "batch_size=1 cannot hold a pair"),
        ({"seed": -3}, "seed must be a non-negative integer"),
        ({"statistics": [_nan_at_addresses_3_and_7]}, r"not finite \(NaN or inf\) at evaluations \[3, 7\]"),
        ({"statistics": [lambda im: im[:3, 0, 0, 0]]}, "returned shape \\(3,\\) for a batch of 16"),
        ({"statistics": [mcdiff.Statistic("label", lambda im: ["a"] * len(im))]},
         "statistic 'label' returned values of dtype <U1; it must return real numbers"),
        ({"statistics": [mcdiff.Statistic("thing", lambda im: [object()] * len(im))]},
         "statistic 'thing' returned values of dtype object"),
        ({"seed": 2**63}, "seed must be a non-negative integer below 2\\*\\*63"),
    ],
)
def test_bad_input_is_refused(probit_model, kwargs, match):
    args = {"statistics": ["brightness"], "designs": ["mc"], "n_evals": 16, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        mcdiff.estimate(probit_model, **args)


def test_sampler_with_wrong_output_shape_is_refused():
    with pytest.raises(ValueError, match=r"returned images of shape \(16, 1, 4, 5\); expected .* \(16, 1, 4, 4\)"):
        mcdiff.estimate(_WrongShape(), n_evals=16, designs=["mc"], progress=False)


@pytest.mark.parametrize("model", [None, 3, "gaussian"])
def test_a_model_that_is_no_sampler_is_refused_before_any_evaluation(model, evaluations):
    with pytest.raises(ValueError, match="a model must be a Sampler \\(an object with noise_spec and sample"):
        mcdiff.estimate(model, n_evals=16, progress=False)
    assert evaluations == []
