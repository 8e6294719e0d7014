"""Multi-fidelity estimators: the level math, coupled addresses, the result schema, input checks,
and coverage of the exact fine-level truth on the analytic model for every design combination."""

import numpy as np
import pytest
import torch
from scipy import stats

import mcdiff
from mcdiff.cli import main
from mcdiff.designs import SobolRQMC, get_design, stream_seed
from mcdiff.estimators import combine_levels, control_variate_coefficient, level_allocation, summarize
from mcdiff.multifidelity import Fidelity, parse_fidelity
from mcdiff.results import LEVEL_FIELDS
from mcdiff.samplers import GaussianSampler, Sampler

FIDELITIES = [2, 5, 20]


# --- the math -----------------------------------------------------------------------------


def test_one_level_is_the_single_design_interval():
    x = np.random.default_rng(0).normal(size=(40, 2))
    one = summarize(x, np.arange(40) // 2)
    out = combine_levels(one["estimate"][None], one["std_error"][None], np.array([20]), np.ones(1))
    for field in ("estimate", "std_error", "ci_lower", "ci_upper", "ci_width"):
        np.testing.assert_allclose(out[field], one[field])
    np.testing.assert_allclose(out["dof"], 19)


def test_levels_add_variances_with_welch_satterthwaite_dof():
    est, se, groups, w = np.array([1.0, 0.2]), np.array([0.3, 0.1]), np.array([10, 5]), np.array([2.0, 1.0])
    out = combine_levels(est, se, groups, w, 0.9)
    var = (2 * 0.3) ** 2 + 0.1**2
    dof = var**2 / ((2 * 0.3) ** 4 / 9 + 0.1**4 / 4)
    assert out["estimate"] == pytest.approx(2.2) and out["std_error"] == pytest.approx(np.sqrt(var))
    assert out["dof"] == pytest.approx(dof)
    assert out["ci_upper"] - out["estimate"] == pytest.approx(stats.t.ppf(0.95, dof) * np.sqrt(var))


def test_levels_with_zero_variance_give_a_zero_width_interval():
    out = combine_levels(np.array([1.0, 2.0]), np.zeros(2), np.array([4, 4]), np.ones(2))
    assert out["ci_width"] == 0 and np.isinf(out["dof"])


def test_control_variate_coefficient_is_the_regression_slope():
    rng = np.random.default_rng(1)
    coarse = rng.normal(size=(50, 3))
    fine = 0.7 * coarse + 0.1 * rng.normal(size=(50, 3))
    beta = control_variate_coefficient(fine, coarse)
    expected = [np.cov(fine[:, k], coarse[:, k])[0, 1] / coarse[:, k].var(ddof=1) for k in range(3)]
    np.testing.assert_allclose(beta, expected)
    assert control_variate_coefficient(fine[:, 0], np.ones(50)) == 0


def test_allocation_spends_the_budget_and_minimizes_the_variance():
    v, c, budget = np.array([4.0, 0.5, 0.1]), np.array([2.0, 7.0, 25.0]), 1000.0
    n = level_allocation(v, c, budget)
    assert (n * c).sum() == pytest.approx(budget)
    best = (v / n).sum()
    rng = np.random.default_rng(2)
    for _ in range(100):  # any other split of the same budget is worse
        other = n * np.exp(rng.normal(scale=0.3, size=3))
        other *= budget / (other * c).sum()
        assert (v / other).sum() >= best


def test_allocation_with_rates_minimizes_the_modelled_variance():
    v, c, budget, rates = np.array([4.0, 0.5, 0.1]), np.array([2.0, 7.0, 25.0]), 1000.0, np.array([1.0, 2.0, 1.5])
    np.testing.assert_allclose(level_allocation(v, c, budget, np.ones(3)), level_allocation(v, c, budget))
    n = level_allocation(v, c, budget, rates)
    assert (n * c).sum() == pytest.approx(budget)
    np.testing.assert_allclose(rates * v * n ** (-rates - 1) / c, (rates * v * n ** (-rates - 1) / c)[0], rtol=1e-8)
    best = (v * n**-rates).sum()
    rng = np.random.default_rng(3)
    for _ in range(100):
        other = n * np.exp(rng.normal(scale=0.3, size=3))
        other *= budget / (other * c).sum()
        assert (v * other**-rates).sum() >= best


def test_allocation_input_is_checked():
    with pytest.raises(ValueError, match="costs > 0"):
        level_allocation(np.ones(2), np.array([1.0, 0.0]), 10)
    with pytest.raises(ValueError, match="budget must be > 0"):
        level_allocation(np.ones(2), np.ones(2), 0)
    with pytest.raises(ValueError, match=r"rates must be an \(L,\) array of finite values > 0"):
        level_allocation(np.ones(2), np.ones(2), 10, np.array([1.0, 0.0]))


def test_stream_seeds_are_pure_and_distinct():
    assert stream_seed(3, 0, 1) == stream_seed(3, 0, 1)
    seeds = {stream_seed(s, stage, level) for s in range(3) for stage in range(2) for level in range(3)}
    assert len(seeds) == 18 and all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize(
    "design, wanted, allowed",
    [("mc", 0, 2), ("mc", 10.6, 11), ("amc", 1, 4), ("amc", 11.2, 12), ("rqmc", 3, 16), ("rqmc", 90, 96 // 96 * 64),
     ("rqmc", 100, 128), ("amc-rqmc", 5000, 4096)],
)
def test_nearest_allowed_number_of_evaluations(design, wanted, allowed):
    got = get_design(design).nearest_n(wanted)
    get_design(design).check_n(got)
    assert got == allowed


# --- samplers at several step counts ---------------------------------------------------------


def test_with_steps_rebuilds_the_gaussian_sampler(probit_model):
    coarse = probit_model.with_steps(3)
    assert isinstance(coarse, GaussianSampler) and coarse.nfe == coarse.num_inference_steps == 3
    assert coarse.output == "probit" and len(coarse.scheduler.timesteps) == 3
    fresh = GaussianSampler(mean=probit_model.data_mean.numpy(), std=0.25, image_shape=(1, 4, 4),
                            num_inference_steps=3, output="probit")
    z = {"x_T": torch.randn(5, 1, 4, 4, dtype=torch.float64)}
    torch.testing.assert_close(coarse(z), fresh(z), rtol=0, atol=0)
    assert probit_model.nfe == 10  # the original is unchanged


def test_with_steps_keeps_the_gaussian_samplers_scheduler():
    ddpm = GaussianSampler(image_shape=(1, 2, 2), num_inference_steps=10, scheduler="DDPMScheduler")
    coarse = ddpm.with_steps(3)
    # 3 DDPM steps draw 2 noises: diffusers adds none at the last step (t = 0)
    assert type(coarse.scheduler).__name__ == "DDPMScheduler" and coarse.noise_spec["steps"] == (2, 1, 2, 2)


def test_with_steps_rebuilds_a_diffusion_sampler():
    base = GaussianSampler(image_shape=(1, 2, 2))
    sampler = mcdiff.DiffusionSampler(base.unet, base.scheduler, num_inference_steps=7, image_shape=(1, 2, 2),
                                      clip_output=False, dtype=torch.float64)
    coarse = sampler.with_steps(3)
    assert type(coarse) is mcdiff.DiffusionSampler and coarse.nfe == 3 and coarse.unet is sampler.unet
    assert not coarse.clip_output and coarse.dtype == torch.float64


class _CoupledRecorder(Sampler):
    """Records the noise each step count receives; outputs depend on the step count."""

    image_shape = (1, 2, 2)

    def __init__(self, steps=1, log=None):
        self.nfe, self.log = steps, log if log is not None else []

    @property
    def noise_spec(self):
        return {"x_T": self.image_shape}

    def with_steps(self, steps):
        return _CoupledRecorder(steps, self.log)

    def with_scheduler(self, scheduler, steps):
        """A "solver" that costs twice its steps, as Heun does."""
        return _CoupledRecorder(2 * steps, self.log)

    def sample(self, noise):
        self.log.append((self.nfe, noise["x_T"].clone()))
        return torch.sigmoid(noise["x_T"] * (1 + 1 / self.nfe))


def test_each_level_runs_both_fidelities_on_the_same_addresses_and_levels_are_independent():
    sampler = _CoupledRecorder()
    mcdiff.estimate_multifidelity(sampler, ["brightness"], FIDELITIES, ["amc"], n_evals=[8, 8, 8], progress=False)
    calls = sampler.log  # level 0: f_2; level 1: f_5, f_2; level 2: f_20, f_5
    assert [steps for steps, _ in calls] == [2, 5, 2, 20, 5]
    torch.testing.assert_close(calls[1][1], calls[2][1], rtol=0, atol=0)
    torch.testing.assert_close(calls[3][1], calls[4][1], rtol=0, atol=0)
    for a, b in [(0, 1), (0, 3), (1, 3)]:
        assert not torch.equal(calls[a][1], calls[b][1])
    torch.testing.assert_close(calls[3][1][1::2], -calls[3][1][0::2], rtol=0, atol=0)


def test_levels_with_a_solver_run_on_the_same_addresses_and_cost_their_nfe():
    sampler = _CoupledRecorder()
    result = mcdiff.estimate_multifidelity(sampler, ["brightness"], [("HeunDiscreteScheduler", 3), 20], ["amc"],
                                           n_evals=[8, 8], progress=False)
    calls = sampler.log  # level 0: f_c (6 NFE); level 1: f_20, f_c
    assert [nfe for nfe, _ in calls] == [6, 20, 6]
    torch.testing.assert_close(calls[1][1], calls[2][1], rtol=0, atol=0)
    levels = result["levels"]
    np.testing.assert_array_equal(levels["sample_nfe"], [6, 20])
    np.testing.assert_array_equal(levels["cost_per_eval"], [6, 26])
    assert int(result["summary"]["nfe"].squeeze()) == 8 * 6 + 8 * 26


# --- levels with a solver of their own ---------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, expected",
    [
        (12, Fidelity(12)),
        (np.int64(5), Fidelity(5)),
        ("12", Fidelity(12)),
        (("UniPCMultistepScheduler", 6), Fidelity(6, "UniPCMultistepScheduler")),
        ("DPMSolverMultistepScheduler:8", Fidelity(8, "DPMSolverMultistepScheduler")),
        (Fidelity(4, "DEISMultistepScheduler"), Fidelity(4, "DEISMultistepScheduler")),
    ],
)
def test_fidelities_parse_from_counts_pairs_and_strings(entry, expected):
    assert parse_fidelity(entry) == expected
    assert parse_fidelity(str(expected)) == expected


@pytest.mark.parametrize(
    "entry, match",
    [
        ("FooScheduler:3", "scheduler FooScheduler is not a diffusers scheduler with a step"),
        ("DPMSolverSDEScheduler:3", "torchsde Brownian tree"),
        ("UniPCMultistepScheduler", "is not a step count .*UniPCMultistepScheduler:6"),
        (("UniPCMultistepScheduler", 0), "the step count must be a positive integer, got 0"),
        (2.5, "fidelity 2.5 is not a step count"),
        (True, "fidelity True is not a step count"),
        (("UniPCMultistepScheduler", "6"), "is not a step count"),
    ],
)
def test_bad_fidelities_are_refused_with_the_allowed_forms(entry, match):
    with pytest.raises(ValueError, match=match):
        parse_fidelity(entry)


@pytest.mark.parametrize(
    "fidelities, match",
    [
        ([("UniPCMultistepScheduler", 6), 5],
         r"by strictly increasing NFE per sample, got UniPCMultistepScheduler:6 \(6 NFE\), 5 \(5 NFE\)"),
        ([("UniPCMultistepScheduler", 20), 20], "strictly increasing NFE"),
        ([("PNDMScheduler", 4), 20], "scheduler PNDMScheduler is not supported; supported: DDIMScheduler"),
        ([("DDPMScheduler", 3), 20],
         r"stochastic levels: \['DDPMScheduler:3'\]\): a stochastic sampler .* cannot share noise; use a deterministic"),
    ],
)
def test_level_order_solvers_and_stochastic_levels_are_checked(probit_model, fidelities, match):
    with pytest.raises(ValueError, match=match):
        mcdiff.estimate_multifidelity(probit_model, ["brightness"], fidelities, ["mc"], n_evals=[8, 8],
                                      progress=False)


def test_a_sampler_that_cannot_change_its_solver_is_refused():
    class _StepsOnly(_NoSteps):
        def with_steps(self, steps):
            return self

    with pytest.raises(ValueError, match=r"_StepsOnly cannot change its solver: .* with_scheduler\(scheduler,"):
        mcdiff.estimate_multifidelity(_StepsOnly(), fidelities=["UniPCMultistepScheduler:2", 5], designs=["mc"],
                                      n_evals=[8, 8], progress=False)


@pytest.mark.parametrize("solver", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"])
def test_the_analytic_models_exact_expectation_holds_for_multistep_solvers(solver):
    """Exact E[image] of a 4-step solver on the probit model against the mean of 2^17 samples:
    every pixel within 4.5 standard errors (false-failure rate about 3e-5 over the 4 pixels)."""
    model = GaussianSampler(mean=np.array([0.2, 0.45, 0.6, 0.85]).reshape(1, 2, 2), std=0.25, image_shape=(1, 2, 2),
                            num_inference_steps=4, scheduler=solver, output="probit")
    assert model.nfe == 4 and not model.stochastic and type(model.scheduler).__name__ == solver
    z = torch.randn(2**17, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    images = model({"x_T": z})
    error = (images.mean(0) - model.expected_image()) / (images.std(0) / np.sqrt(len(z)))
    assert error.abs().max() < 4.5


@pytest.mark.parametrize("solver", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"])
def test_solver_levels_mirror_antithetic_partners_on_the_affine_model(affine_model, solver):
    """Exact coupling: on the affine model a solver level maps z and -z to outputs mirrored about
    G(0), so antithetic levels give the exact fine truth (to DPM-Solver++'s float32 rounding)."""
    coarse = affine_model.with_scheduler(solver, 3)
    z = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    centre = coarse({"x_T": torch.zeros(1, 1, 4, 4, dtype=torch.float64)})
    torch.testing.assert_close(coarse({"x_T": z}) + coarse({"x_T": -z}), 2 * centre.expand(6, -1, -1, -1),
                               rtol=0, atol=1e-6)
    result = mcdiff.estimate_multifidelity(affine_model, ["brightness"], [(solver, 3), 10], ["amc", "amc-rqmc"],
                                           n_evals=[32, 32], progress=False)
    truth = mcdiff.exact_expectation(affine_model, "brightness")
    np.testing.assert_allclose(result["summary"]["brightness"].sel(summary="estimate"), truth, atol=1e-6)


def test_the_result_records_each_levels_solver_steps_and_nfe(probit_model, tmp_path):
    result = mcdiff.estimate_multifidelity(probit_model, ["brightness"], ["UniPCMultistepScheduler:3", 20],
                                           ["amc"], method="cv", n_evals=[16, 8], pilot=8, progress=False)
    levels, summary = result["levels"], result["summary"]
    assert list(levels["solver"].values) == ["UniPCMultistepScheduler", "DDIMScheduler"]
    np.testing.assert_array_equal(levels["steps"], [3, 20])
    np.testing.assert_array_equal(levels["sample_nfe"], [3, 20])
    np.testing.assert_array_equal(levels["cost_per_eval"], [3, 23])
    assert summary.attrs["solvers"] == ["UniPCMultistepScheduler", "DDIMScheduler"]
    assert summary.attrs["fidelities"] == [3, 20]
    assert mcdiff.load_result(mcdiff.save_result(result, tmp_path / "r.nc")).identical(result)
    assert "UniPCMultistepScheduler" in mcdiff.format_levels(result)


def test_the_cli_takes_levels_with_a_solver_and_prints_them(tmp_path, capsys):
    code = main(["multifidelity", "--fidelities", "UniPCMultistepScheduler:3", "DDIMScheduler:8", "--statistics",
                 "brightness", "--designs", "amc", "-n", "16", "8", "-o", str(tmp_path / "r.nc")])
    printed = capsys.readouterr().out
    assert code == 0 and "UniPCMultistepScheduler  3      3" in printed
    result = mcdiff.load_result(tmp_path / "r.nc")
    assert list(result["levels"]["solver"].values) == ["UniPCMultistepScheduler", "DDIMScheduler"]


def test_the_cli_refuses_an_unknown_solver(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it while parsing
        main(["multifidelity", "--fidelities", "FooScheduler:3", "8", "-o", str(tmp_path / "r.nc")])
    assert exit_info.value.code == 2
    assert "--fidelities: scheduler FooScheduler is not a diffusers scheduler" in capsys.readouterr().err


# --- results -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlmc_result(probit_model):
    return mcdiff.estimate_multifidelity(
        probit_model, ["brightness", "centroid"], FIDELITIES, ["mc", ("rqmc", "amc", "amc-rqmc")],
        budget_nfe=4000, pilot=32, seed=5, progress=False,
    )


def test_result_records_levels_their_n_nfe_and_variances(mlmc_result, tmp_path):
    summary, levels = mlmc_result["summary"], mlmc_result["levels"]
    assert list(summary["design"].values) == ["mlmc+mc", "mlmc+rqmc/amc/amc-rqmc"]
    assert list(summary["summary"].values) == list(mcdiff.estimators.SUMMARY_FIELDS)
    assert summary["centroid"].dims == ("design", "summary", "axis")
    assert levels["centroid"].dims == ("design", "level", "level_summary", "axis")
    assert list(levels["level_summary"].values) == list(LEVEL_FIELDS)
    np.testing.assert_array_equal(levels["steps"], FIDELITIES)
    np.testing.assert_array_equal(levels["cost_per_eval"], [2, 7, 25])
    np.testing.assert_array_equal(levels["level_design"].sel(design="mlmc+rqmc/amc/amc-rqmc"),
                                  ["rqmc", "amc", "amc-rqmc"])
    np.testing.assert_array_equal(levels["nfe"], levels["n_evals"] * levels["cost_per_eval"])
    np.testing.assert_array_equal(summary["nfe"], levels["nfe"].sum("level"))
    np.testing.assert_array_equal(summary["n_evals"], levels["n_evals"].sum("level"))
    assert (summary["pilot_nfe"] == 32 * 34).all()
    assert abs(int(summary["nfe"].sel(design="mlmc+mc")) - 4000) < 25  # rounding of MC counts only
    for key in ("method", "fidelities", "confidence", "seed", "budget_nfe", "interval"):
        assert key in summary.attrs
    b = mlmc_result["summary"]["brightness"].sel(design="mlmc+mc")
    per_eval, per_nfe = (float(b.sel(summary=f)) for f in ("relative_efficiency", "relative_efficiency_per_nfe"))
    n, nfe = int(summary["n_evals"].sel(design="mlmc+mc")), int(summary["nfe"].sel(design="mlmc+mc") + 32 * 34)
    assert per_nfe == pytest.approx(per_eval * n * 20 / nfe)
    assert mcdiff.load_result(mcdiff.save_result(mlmc_result, tmp_path / "r.nc")).identical(mlmc_result)
    assert "mlmc+rqmc/amc/amc-rqmc" in mcdiff.format_table(mlmc_result)
    assert "amc-rqmc" in mcdiff.format_levels(mlmc_result)


def test_level_means_sum_to_the_estimate(mlmc_result):
    levels = mlmc_result["levels"]["brightness"]
    total = (levels.sel(level_summary="mean") * levels.sel(level_summary="weight")).sum("level")
    np.testing.assert_allclose(total, mlmc_result["summary"]["brightness"].sel(summary="estimate"))


def test_antithetic_levels_are_exact_on_the_affine_model(affine_model):
    result = mcdiff.estimate_multifidelity(affine_model, ["brightness"], [2, 10], ["amc", "amc-rqmc"],
                                           n_evals=[32, 32], progress=False)
    truth = mcdiff.exact_expectation(affine_model, "brightness")
    np.testing.assert_allclose(result["summary"]["brightness"].sel(summary="estimate"), truth, atol=1e-12)


def test_antithetic_control_variate_level_has_calibrated_standard_errors(probit_model):
    """``(level mean - exact level truth) / std_error`` of the pair level of ``cv+amc`` (16 pairs,
    pixel-wise) has SD 1.21-1.29 over 100 repeats in 4 seed blocks (t_15: 1.07; skewed pair
    means add a little); a beta fitted on pair means gave 2.3, since it leaves a heavy-tailed
    residual. 1.5 is over 4 SD of the block-to-block spread above the measured values."""
    coarse, fine = probit_model.with_steps(2), probit_model.with_steps(20)
    truth = {s: mcdiff.exact_expectation(m, "pixel_mean") for s, m in (("coarse", coarse), ("fine", fine))}
    z = []
    for seed in range(100):
        result = mcdiff.estimate_multifidelity(probit_model, ["pixel_mean"], [2, 20], ["amc"], method="cv",
                                               n_evals=[64, 32], pilot=32, seed=seed, progress=False)
        level = result["levels"]["pixel_mean"].sel(design="cv+amc", level=1)
        beta = level.sel(level_summary="coefficient").values
        exact = truth["fine"] - beta * truth["coarse"]
        z.append((level.sel(level_summary="mean").values - exact) / level.sel(level_summary="std_error").values)
    assert np.std(z) < 1.5


def test_control_variate_uses_a_pilot_and_weights_the_coarse_mean_by_beta(probit_model):
    result = mcdiff.estimate_multifidelity(probit_model, ["brightness"], [2, 20], ["amc"], method="cv",
                                           n_evals=[64, 16], pilot=16, progress=False)
    levels = result["levels"]["brightness"].sel(design="cv+amc")
    beta = float(levels.sel(level=1, level_summary="coefficient"))
    assert beta != 1 and float(levels.sel(level=0, level_summary="weight")) == beta
    assert int(result["summary"]["pilot_nfe"].sel(design="cv+amc")) == 16 * 22  # the pair level only


def test_the_cli_writes_a_result_per_method(tmp_path, capsys):
    code = main(["multifidelity", "--fidelities", "2", "8", "--method", "mlmc", "cv", "--statistics", "brightness",
                 "--designs", "amc", "mc/amc", "-n", "16", "8", "--pilot", "8", "-o", str(tmp_path / "r.nc")])
    printed = capsys.readouterr().out
    assert code == 0 and "cv+mc/amc" in printed and "per NFE" in printed
    result = mcdiff.load_result(tmp_path / "r-cv.nc")
    assert list(result["summary"]["design"].values) == ["cv+amc", "cv+mc/amc"]


def test_the_cli_keeps_a_store_per_method_and_resumes_from_it(tmp_path, capsys):
    argv = ["multifidelity", "--fidelities", "2", "8", "--method", "mlmc", "cv", "--statistics", "brightness",
            "--designs", "amc", "-n", "16", "8", "--pilot", "8", "--store", str(tmp_path / "s")]
    assert main([*argv, "-o", str(tmp_path / "a.nc")]) == 0
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"mlmc", "cv"}
    assert main([*argv, "-o", str(tmp_path / "b.nc")]) == 0  # read back from the stores
    for method in ("mlmc", "cv"):
        first, again = (mcdiff.load_result(tmp_path / f"{name}-{method}.nc") for name in "ab")
        assert first["summary"].identical(again["summary"]) and first["levels"].identical(again["levels"])
    capsys.readouterr()
    other = ["--pilot" if a == "--pilot" else a for a in argv]
    other[other.index("--pilot") + 1] = "16"
    assert main([*other, "-o", str(tmp_path / "c.nc")]) == 2
    assert "was written by a different run" in capsys.readouterr().err


def test_the_cli_refuses_cv_with_three_fidelities_before_running(tmp_path, capsys):
    code = main(["multifidelity", "--method", "mlmc", "cv", "-o", str(tmp_path / "r.nc")])
    assert code == 2 and "give 2 fidelities, got [4, 12, 50]" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


class _NoSteps(Sampler):
    image_shape = (1, 2, 2)

    @property
    def noise_spec(self):
        return {"x_T": self.image_shape}

    def sample(self, noise):
        return torch.sigmoid(noise["x_T"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fidelities": [5, 2]}, r"strictly increasing positive step counts \(coarse to fine\), got \[5, 2\]"),
        ({"fidelities": [2, 2, 5]}, "strictly increasing"),
        ({"fidelities": [20]}, "at least two integer step counts"),
        ({"fidelities": [0, 5]}, "strictly increasing positive"),
        ({"n_evals": [2, 8, 8], "designs": ["amc"]},
         r"n_evals=2: level 0 \(2 steps, design 'amc'\) cannot use it: n_evals=2 is too small"),
        ({"n_evals": None, "budget_nfe": 10000, "pilot": 2, "designs": ["amc"]}, r"pilot=2 is too few evaluations: level 0"),
        ({"n_evals": [4, 4]}, r"n_evals needs one count per level \(3\)"),
        ({"n_evals": None}, "exactly one of budget_nfe"),
        ({"budget_nfe": 1000}, "exactly one of budget_nfe"),
        ({"n_evals": None, "budget_nfe": 1000}, ("budget_nfe=1000 is too small: every level gets at least the "
                                               "pilot's 64 evaluations, 2176 NFE")),
        ({"method": "cv"}, "give 2 fidelities"),
        ({"method": "mc"}, "method must be one of"),
        ({"designs": [("mc", "amc")]}, "has 2 entries for 3 levels"),
        ({"designs": ["mc", "mc"]}, "design combination names must be unique"),
    ],
)
def test_bad_input_is_refused(probit_model, kwargs, match):
    args = {"statistics": ["brightness"], "fidelities": FIDELITIES, "designs": ["mc"], "n_evals": [8, 8, 8],
            "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        mcdiff.estimate_multifidelity(probit_model, **args)


def test_a_sampler_that_cannot_change_its_step_count_is_refused():
    with pytest.raises(ValueError, match="_NoSteps cannot change its step count: .* with_steps"):
        mcdiff.estimate_multifidelity(_NoSteps(), designs=["mc"], n_evals=[8, 8, 8], progress=False)


def test_a_stochastic_sampler_is_refused_with_the_reason(probit_model):
    stochastic = GaussianSampler(image_shape=(1, 2, 2), eta=1.0)
    with pytest.raises(ValueError, match="stochastic sampler .* cannot share noise; use a deterministic"):
        mcdiff.estimate_multifidelity(stochastic, fidelities=[2, 5], designs=["mc"], n_evals=[8, 8], progress=False)


# --- unbiasedness: coverage of the exact fine-level truth -------------------------------------------

COMBINATIONS = {
    "mlmc": ["mc", "amc", SobolRQMC(16), SobolRQMC(16, antithetic=True), ("amc-rqmc", "rqmc", "amc"),
             ("mc", "amc-rqmc", "rqmc")],
    "cv": ["mc", "amc", SobolRQMC(16), SobolRQMC(16, antithetic=True), ("rqmc", "amc"), ("amc", "amc-rqmc")],
}


def coverage(model, method: str, repeats: int, combinations: int = 6, fidelities=None,
             designs=None) -> dict[str, np.ndarray]:
    """Hits of the exact 20-step DDIM truth (brightness, and each pixel of pixel_mean) for the first
    ``combinations`` design combinations of ``method`` (or ``designs`` at ``fidelities``)."""
    if fidelities is None:
        fidelities = FIDELITIES if method == "mlmc" else [2, 20]
    designs = COMBINATIONS[method][:combinations] if designs is None else designs
    n_evals = [64] + [32] * (len(fidelities) - 1)
    fine = model.with_steps(fidelities[-1])
    truth = {s: mcdiff.exact_expectation(fine, s) for s in ("brightness", "pixel_mean")}
    hits: dict[str, list] = {}
    for seed in range(repeats):
        summary = mcdiff.estimate_multifidelity(model, list(truth), fidelities, designs, method=method,
                                                n_evals=n_evals, pilot=32, seed=seed, progress=False)["summary"]
        for design in summary["design"].values:
            for stat, exact in truth.items():
                cell = summary[stat].sel(design=design)
                lower, upper = cell.sel(summary="ci_lower").values, cell.sel(summary="ci_upper").values
                hits.setdefault(f"{design} {stat}", []).append((lower <= exact) & (exact <= upper))
    return {key: np.array(value, dtype=float) for key, value in hits.items()}


def _check_coverage(hits: dict[str, np.ndarray], repeats: int) -> None:
    """Each pooled coverage within 3 binomial SE of 95% (4.6% at 200 repeats, 2.9% at 500)."""
    tolerance = 3 * np.sqrt(0.95 * 0.05 / repeats)
    bad = {key: float(h.mean()) for key, h in hits.items() if abs(h.mean() - 0.95) > tolerance}
    assert not bad, f"coverage outside 95% ± {tolerance:.3f}: {bad}"


@pytest.mark.parametrize("method", ["mlmc", "cv"])
def test_intervals_cover_the_fine_truth_in_200_repeats(probit_model, method):
    """The four designs on every level and one mixed combination (all six under -m slow)."""
    _check_coverage(coverage(probit_model, method, 200, combinations=5), 200)


@pytest.mark.parametrize(("method", "design"), [("mlmc", SobolRQMC(16, antithetic=True)), ("cv", "amc")])
def test_intervals_with_a_solver_level_cover_the_fine_truth_in_100_repeats(probit_model, method, design):
    """UniPC at 3 steps under DDIM at 20 (every combination of the study, at 500 repeats:
    ``statistics/results/multifidelity_coverage_solvers.md``). Within 3 binomial SE (6.5% at
    100 repeats): each of the 2 entries per test fails by chance with probability about 0.3%."""
    hits = coverage(probit_model, method, 100, fidelities=[("UniPCMultistepScheduler", 3), 20], designs=[design])
    _check_coverage(hits, 100)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mlmc", "cv"])
def test_intervals_cover_the_fine_truth_in_500_repeats(probit_model, method):
    """Run with ``-m slow``: every combination, 3 binomial SE (false-failure rate about 0.3%
    per entry)."""
    _check_coverage(coverage(probit_model, method, 500), 500)
