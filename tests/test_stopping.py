"""Sequential stopping: rounds double until the CI meets its target, RQMC adds replicates with its
points per replicate fixed, the budget caps the rounds, and the coverage of the interval at the
data-dependent stopping time is measured over 500 repeats.

Coverage. Stopping at the first round whose interval is narrow enough selects rounds whose
sample standard deviation came out small, so the naive t-interval at the stopping time covers
a little less than its level. On the probit analytic model (brightness, first round 16
evaluations, doubling, target width 0.005 for antithetic pairs and 0.024 for MC; most runs stop
after 2-3 rounds) a 2000-repeat study measured 93.95% ± 0.53% (antithetic) and 94.45% ± 0.51%
(MC); these 500 seeds give 93.8% and 95.0%. The test runs 500 repeats (binomial SE 0.97% at
95%) and accepts 95% ± 3% (3.1 SE): it states the coverage honestly, undercoverage of about one
point included, and would catch a stopping rule that reuses or drops evaluations.
"""

import warnings

import numpy as np
import pytest
from small_models import GRADIENT_MEAN, probit_gaussian

import mcdiff

REPEATS = 500


@pytest.fixture(scope="module")
def model():
    return probit_gaussian(4)


def test_rounds_double_until_the_target_is_met(model):
    result = mcdiff.estimate(
        model,
        ["brightness", "centroid"],
        ["amc", "rqmc"],
        n_evals=64,
        seed=1,
        progress=False,
        target_ci_width=1e-3,
        max_evals=1 << 16,
    )
    summary = result["summary"]
    n = int(summary["n_evals"][0])
    assert summary.attrs["target_reached"] == 1 and summary.attrs["target_ci_width"] == 1e-3
    assert summary.attrs["stopping_rounds"] == np.log2(n // 64) + 1 > 1
    assert (summary["brightness"].sel(summary="ci_width") <= 1e-3).all()
    assert (summary["centroid"].sel(summary="ci_width") <= 1e-3).all()
    at = summary["evals_at_target"]
    assert at.max() == n and (at >= 64).all()  # the slower design set n; the other met it no later


def test_rqmc_rounds_add_replicates_and_keep_every_earlier_draw(model):
    fixed = mcdiff.estimate(model, ["brightness"], ["rqmc", "amc-rqmc"], n_evals=256, seed=3, progress=False)
    with pytest.warns(RuntimeWarning, match="target not reached"):
        grown = mcdiff.estimate(
            model,
            ["brightness"],
            ["rqmc", "amc-rqmc"],
            n_evals=256,
            seed=3,
            progress=False,
            target_ci_width=1e-9,
            max_evals=1024,
        )
    assert grown["summary"].attrs["stopping_rounds"] == 3 and grown["summary"]["n_evals"][0] == 1024
    first = grown["draws"].to_dataset().isel(draw=slice(0, 256)).drop_vars("noise")
    assert first.identical(fixed["draws"].to_dataset().drop_vars("noise"))
    for design, points in (("rqmc", 16), ("amc-rqmc", 2 * 8)):  # 16 replicates of 2^m points (pairs) at n=256
        groups = grown["draws"]["group"].sel(design=design).values
        assert np.array_equal(groups, np.arange(1024) // points)  # 64 replicates of the same size
    assert "16-point nested-scrambled Sobol' replicates" in str(grown["summary"]["noise"].sel(design="rqmc").values)


def test_a_relative_target_and_an_unreachable_one(model):
    rel = mcdiff.estimate(
        model, ["brightness"], ["amc"], n_evals=16, progress=False, target_rel_width=0.01, max_evals=4096
    )
    b = rel["summary"]["brightness"].sel(design="amc")
    assert float(b.sel(summary="ci_width")) <= 0.01 * abs(float(b.sel(summary="estimate")))
    with pytest.warns(
        RuntimeWarning, match=r"target not reached by design\(s\) \['mc'\] within max_evals=100"
    ):
        capped = mcdiff.estimate(
            model, ["brightness"], ["mc"], n_evals=16, progress=False, target_ci_width=1e-6, max_evals=100
        )
    assert capped["summary"].attrs["target_reached"] == 0 and int(capped["summary"]["n_evals"][0]) == 64
    assert (
        capped["summary"].attrs["stopping_rounds"] == 3 and int(capped["summary"]["evals_at_target"][0]) == -1
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target_ci_width": 0.01}, "needs a budget cap max_evals, an integer >= n_evals=64"),
        ({"target_ci_width": 0.01, "max_evals": 32}, "max_evals, an integer >= n_evals=64 .* got 32"),
        (
            {"target_rel_width": -1.0, "max_evals": 128},
            "target_rel_width must be a positive number or None, got -1.0",
        ),
        ({"max_evals": 128}, "max_evals caps sequential stopping: give target_ci_width or target_rel_width"),
    ],
)
def test_bad_stopping_input_is_refused(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mcdiff.estimate(model, ["brightness"], ["amc"], n_evals=64, progress=False, **kwargs)


@pytest.mark.parametrize("design, target", [("amc", 0.005), ("mc", 0.024)])
def test_coverage_at_the_stopping_time(model, design, target):
    truth = mcdiff.exact_expectation(model, "brightness")
    hits, sizes = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every repeat must reach its target within the cap
        for seed in range(REPEATS):
            summary = mcdiff.estimate(
                model,
                ["brightness"],
                [design],
                n_evals=16,
                seed=seed,
                batch_size=1024,
                progress=False,
                target_ci_width=target,
                max_evals=1024,
            )["summary"]
            cell = summary["brightness"].sel(design=design)
            hits.append(float(cell.sel(summary="ci_lower")) <= truth <= float(cell.sel(summary="ci_upper")))
            sizes.append(int(summary["n_evals"][0]))
    coverage = np.mean(hits)
    assert len(set(sizes)) >= 3  # the stopping time really is random
    assert abs(coverage - 0.95) < 0.03, coverage


def test_cli_resumes_from_a_store_and_reports_the_rounds(tmp_path, capsys):
    from mcdiff.cli import main

    args = [
        "estimate",
        "-n",
        "64",
        "--designs",
        "amc",
        "--statistics",
        "brightness",
        "--steps",
        "4",
        "--store",
        str(tmp_path / "s"),
        "--target-ci-width",
        "0.002",
        "--max-evals",
        "4096",
    ]
    assert main([*args, "-o", str(tmp_path / "a.nc")]) == 0
    assert "sequential stopping: target reached after" in capsys.readouterr().out
    assert main([*args, "-o", str(tmp_path / "b.nc")]) == 0  # everything read from the store
    assert mcdiff.load_result(tmp_path / "a.nc").identical(mcdiff.load_result(tmp_path / "b.nc"))
    assert main([*args[:-4], "--seed", "1", "-o", str(tmp_path / "c.nc")]) == 2
    assert "seed: stored 0, requested 1" in capsys.readouterr().err


def test_a_confidence_sequence_stops_with_an_interval_that_covers(model):
    """stop_interval='betting': 60 repeats (MC, target 0.024); the sequence's bounds at the stop cover the
    truth in at least 51 (its guarantee is >= 95%: P(<= 50 of 60) < 0.3%), and it costs more than the t-rule."""
    truth = mcdiff.exact_expectation(model, "brightness")
    hits, sizes = [], []
    for seed in range(60):
        summary = mcdiff.estimate(model, ["brightness"], ["mc"], n_evals=16, seed=seed, batch_size=1024,
                                  progress=False, target_ci_width=0.024, max_evals=4096, stop_interval="betting")["summary"]
        bounds = summary["brightness_sequence"].sel(design="mc")
        assert float(bounds.sel(sequence_bound="upper") - bounds.sel(sequence_bound="lower")) <= 0.024
        hits.append(float(bounds.sel(sequence_bound="lower")) <= truth <= float(bounds.sel(sequence_bound="upper")))
        sizes.append(int(summary["n_evals"][0]))
    assert sum(hits) >= 51 and min(sizes) > 64  # the t-rule stops at 32-64 evaluations here
    assert summary.attrs["stop_interval"] == "betting"


def test_a_confidence_sequence_needs_bounded_statistics(model):
    free = mcdiff.Statistic("free", lambda images: images.mean(dim=(1, 2, 3)), dims=())
    with pytest.raises(ValueError, match=r"declare no bounds; give Statistic\(\.\.\., bounds=\(lo, hi\)\)"):
        mcdiff.estimate(model, [free], ["mc"], n_evals=16, progress=False, target_ci_width=0.01,
                        max_evals=64, stop_interval="bernstein")


def test_rqmc_that_grows_its_points_reuses_them_and_keeps_its_variance_reduction(model, tmp_path):
    """grow='points': at n = 16·2^m the same points as the default layout; a run stopped by rounds from 64
    equals a direct run of the final size bit for bit; and its efficiency at 1024 (16 replicates of 64
    points) is many times that of adding 4-point replicates (measured 364 vs 7 over 8 seeds)."""
    from mcdiff.designs import SobolRQMC

    grow = SobolRQMC(grow="points")
    direct = mcdiff.estimate(model, ["brightness"], [grow], n_evals=1024, seed=2, progress=False, draws="none")
    blocked = mcdiff.estimate(model, ["brightness"], ["rqmc"], n_evals=1024, seed=2, progress=False, draws="none")
    fields = ["estimate", "std_error"]
    np.testing.assert_allclose(direct["summary"]["brightness"].sel(summary=fields).values,
                               blocked["summary"]["brightness"].sel(summary=fields).values, rtol=1e-12)
    efficiency = {}
    with pytest.warns(RuntimeWarning, match="target not reached"):
        for layout in ("points", "replicates"):
            runs = [mcdiff.estimate(model, ["brightness"], [SobolRQMC(grow=layout)], n_evals=64, seed=seed, progress=False,
                                    target_ci_width=1e-9, max_evals=1024, draws="none") for seed in (2, 3, 4, 5)]
            efficiency[layout] = np.mean([float(r["summary"]["brightness"].sel(summary="relative_efficiency")[0]) for r in runs])
            if layout == "points":
                assert runs[0]["summary"]["brightness"].identical(direct["summary"]["brightness"])
    assert efficiency["points"] > 5 * efficiency["replicates"], efficiency
    stored = dict(statistics=["brightness", "pixel_mean"], designs=[grow], n_evals=512, seed=1, batch_size=48,
                  progress=False, draws="none")
    first = mcdiff.estimate(model, store=tmp_path / "s", **stored)
    again = mcdiff.estimate(model, store=tmp_path / "s", **{**stored, "batch_size": 16})
    assert again["summary"].identical(first["summary"]) and again["moments"].identical(first["moments"])
    with pytest.raises(ValueError, match="grow their replicates' points instead"):
        mcdiff.estimate(model, ["brightness"], [grow], n_evals=64, progress=False, target_ci_width=0.01,
                        max_evals=128, stop_interval="betting")


class _FailingAfter(mcdiff.GaussianSampler):
    """The probit model, raising at sampler call ``fail_at`` (an interrupted run)."""

    def __init__(self, fail_at=None):
        super().__init__(mean=GRADIENT_MEAN, std=0.25, image_shape=(1, 4, 4), num_inference_steps=4, output="probit")
        self.fail_at, self.calls = fail_at, 0

    def sample(self, noise):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("interrupted")
        return super().sample(noise)


def test_a_stopping_run_without_kept_values_resumes_from_its_store_after_an_interruption(tmp_path):
    """draws='none': only accumulators are stored; each round's are kept, so a rerun replays the rounds
    (here after a failure in the fourth round) and gives the uninterrupted result, bit for bit, an adaptive
    RQMC layout (chosen from those accumulators) included."""
    adaptive = mcdiff.SobolRQMC(16, antithetic=True, grow="adaptive")
    run = dict(statistics=["brightness"], designs=["mc", "rqmc", adaptive], n_evals=64, seed=1, progress=False,
               draws="none", batch_size=32, target_ci_width=0.002, max_evals=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        plain = mcdiff.estimate(_FailingAfter(), **run)
        with pytest.raises(RuntimeError, match="interrupted"):
            mcdiff.estimate(_FailingAfter(fail_at=20), store=tmp_path / "s", **run)
        resumed = mcdiff.estimate(_FailingAfter(), store=tmp_path / "s", **run)
        again = mcdiff.estimate(_FailingAfter(fail_at=1), store=tmp_path / "s", **run)  # nothing evaluated
    assert int(plain["summary"]["n_evals"][0]) == 1024 and plain["summary"].attrs["stopping_rounds"] == 5
    for result in (resumed, again):
        assert result["summary"].identical(plain["summary"]) and result["moments"].identical(plain["moments"])


def _layout_of(summary, design):
    """The adaptive layout a result's noise description names (``grown 16x4, +points, ...``)."""
    from mcdiff.designs import InterleavedLayout

    text = str(summary["noise"].sel(design=design).values)
    start, *doublings = text[text.index("grown") + 6 : text.index(")")].split(", ")
    layout = InterleavedLayout.start(*map(int, start.split("x")))
    for step in doublings:
        layout = layout.doubled(step[1:])
    return layout


def test_adaptive_rqmc_extends_points_on_a_smooth_integrand_and_adds_replicates_where_points_do_not_help():
    """grow='adaptive' (seeds 0-7, six doublings each): brightness of the 4x4 probit model is smooth, and nearly
    every doubling extends the points (measured 47 of 48); the corner pixel of 16x16 images with Sobol' points on
    16 of 256 coordinates converges like Monte Carlo, where one round's rate estimate (SD 0.55 at 16 replicates)
    falls on either side of the threshold 1.13: 21 of 48 extend points. A stopped run equals a direct run of its
    final layout, bit for bit."""
    from mcdiff.designs import SobolRQMC

    wide = mcdiff.GaussianSampler(mean=np.full((1, 16, 16), 0.5), std=0.25, image_shape=(1, 16, 16),
                                  num_inference_steps=4, output="probit")
    corner = mcdiff.Statistic("corner", lambda x: x[:, 0, 0, 0].double(), linear=True)
    shares = {}
    for name, sampler, statistic in (("smooth", probit_gaussian(4), "brightness"), ("high-dim", wide, corner)):
        steps = []
        for seed in range(8):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                result = mcdiff.estimate(sampler, [statistic], [SobolRQMC(16, grow="adaptive", max_dim=16)], n_evals=64,
                                         seed=seed, progress=False, target_ci_width=1e-9, max_evals=4096, draws="none")
            layout = _layout_of(result["summary"], "rqmc")
            steps += [r0 == 0 for r0, *_ in layout.rectangles[1:]]
        shares[name] = np.mean(steps)
    assert shares["smooth"] >= 0.8 and shares["high-dim"] <= 0.6, shares
    direct = mcdiff.estimate(wide, [corner], [SobolRQMC(16, grow="adaptive", max_dim=16, layout=layout)], n_evals=4096,
                             seed=7, progress=False, draws="none")
    assert direct["summary"][corner.name].identical(result["summary"][corner.name])
    assert direct["moments"].identical(result["moments"])


def test_cli_grows_rqmc_as_asked(tmp_path, capsys):
    from mcdiff.cli import main

    args = ["estimate", "--model", "gaussian", "-n", "64", "--designs", "mc", "rqmc", "--statistics", "brightness",
            "--steps", "4", "--target-ci-width", "1e-6", "--max-evals", "256", "--rqmc-grow", "adaptive"]
    with pytest.warns(RuntimeWarning, match="target not reached"):
        assert main([*args, "-o", str(tmp_path / "a.nc")]) == 0
    noise = str(mcdiff.load_result(tmp_path / "a.nc")["summary"]["noise"].sel(design="rqmc").values)
    assert "(grown 16x4, +" in noise and noise.count("+") == 2


def test_a_component_whose_estimate_is_zero_does_not_keep_an_absolute_target_from_being_met():
    """Only target_ci_width given: a constant-0 component (estimate 0, width 0) meets it. mcdiff <= 0.4 multiplied
    the absent relative target (inf) by |estimate| = 0, got NaN, and never stopped."""
    dark = mcdiff.Statistic("dark", lambda x: x.mean(dim=(1, 2, 3)).double() * 0)
    with pytest.warns(RuntimeWarning, match="the interval has width 0"):
        result = mcdiff.estimate(probit_gaussian(4), ["brightness", dark], ["mc"], n_evals=64, seed=0, progress=False,
                                 target_ci_width=1.0, max_evals=256)
    assert result["summary"].attrs["target_reached"] == 1 and result["summary"].attrs["stopping_rounds"] == 1
