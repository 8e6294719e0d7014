"""Relative efficiency per NFE of multi-fidelity estimators against fine-level plain MC.

For brightness, contrast and centroid: MC, antithetic (amc), RQMC and antithetic RQMC at the
finest level alone, and multilevel Monte Carlo (``mlmc+D``) and the two-fidelity control
variate (``cv+D``) at several sets of levels, each a step count of DDIM (``12``) or a solver
and its step count (``UniPC:8``: UniPC at 8 steps as the coarse level under DDIM at 50), with
design ``D`` on every level or one design per level (``rqmc/amc``: RQMC on the coarse level,
antithetic on the fine pair).
Every estimator spends about the same budget of network function evaluations (NFE); the
pilot that allocates it comes on top and is counted. Efficiency per NFE is

    sigma_L^2 · c_L / (mean NFE · mean std_error^2)

over ``--repeats`` seeds, with ``c_L`` the fine level's NFE per sample and ``sigma_L^2`` the
per-evaluation variance of fine-level MC
(pooled over its repeats). ``x amc`` is the gain over antithetic sampling alone; its range is
that of ``eff_r / eff_amc,r`` over the repeats ``r`` (each from one run's standard errors,
so it shows how far a single run can be trusted). The allocation of evaluations to levels is
driven by brightness. Writes ``results/multifidelity_<model>.md`` (with ``--tag T``:
``multifidelity_<model>_T.md``; ``--quick`` tags ``quick``).

    python benchmarks/multifidelity.py                          # the bundled digits model
    python benchmarks/multifidelity.py --model gaussian         # the analytic model (probit output)
    python benchmarks/multifidelity.py --model photos --methods mlmc --fidelities UniPCMultistepScheduler:8 50 \
        --designs amc --budget-nfe 3200 --repeats 2 --pilot 16   # the photos model, reduced (~20 min on one core)
    python benchmarks/multifidelity.py --quick                  # a small configuration, 1-2 minutes
    python benchmarks/multifidelity.py --methods mlmc --fidelities 12 50 --designs amc-rqmc --tag best
    python benchmarks/multifidelity.py --tracking                # how closely coarse candidates track the fine level

``--tracking`` measures, before any estimator is run, how closely each coarse candidate
(solver, steps) tracks the fine sampler on the same noise: one antithetic run of ``--n-track``
evaluations per candidate, the same addresses for all. For each statistic it reports the
correlation of ``f_c`` and ``f_L`` over evaluations, ``Var(f_L - f_c) / Var(f_L)`` per evaluation
and over antithetic pair means, and the gain over antithetic sampling alone that two-level
MLMC with antithetic pairs on both levels would reach at Giles' allocation with these
variances and no pilot, ``V_L C_L / (sqrt(V_0 C_0) + sqrt(V_1 C_1))^2`` (pair-mean variances
``V``, NFE costs ``C``: ``C_0`` the candidate's, ``C_1`` both). Writes
``results/multifidelity_<model>_tracking.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import mcdiff
from mcdiff.estimators import level_allocation
from mcdiff.multifidelity import parse_fidelity, solver_name

STATS = ["brightness", "contrast", "centroid"]
BASELINES = ["mc", "amc", "rqmc", "amc-rqmc"]
UNIPC, DPM = "UniPCMultistepScheduler", "DPMSolverMultistepScheduler"
ESTIMATORS = [
    ("mlmc", (12, 50), ["amc", "rqmc", "amc-rqmc"]),
    ("mlmc", ((UNIPC, 8), 50), ["amc", "rqmc", "amc-rqmc", ("rqmc", "amc")]),
    ("mlmc", ((UNIPC, 10), 50), ["amc", "rqmc", "amc-rqmc"]),
    ("mlmc", ((UNIPC, 6), 50), ["amc", "amc-rqmc"]),
    ("mlmc", ((DPM, 8), 50), ["amc", "rqmc", "amc-rqmc"]),
    ("cv", ((UNIPC, 8), 50), ["amc", "rqmc", "amc-rqmc"]),
    ("mlmc", ((UNIPC, 4), (UNIPC, 10), 50), ["rqmc", "amc-rqmc"]),
]
"""``(method, levels coarse to fine, design combinations)``; every set ends at the same fine level.
Coarse levels chosen from ``--tracking`` (``results/multifidelity_digits_tracking.md``): UniPC
and DPM-Solver++ 2M at 8-10 steps track DDIM 50 best per NFE; DDIM at 12 steps for contrast."""
QUICK = [("mlmc", ((UNIPC, 8), 50), ["amc", "rqmc"]), ("cv", (12, 50), ["rqmc"])]


def load_sampler(model: str, steps: int, device: str | None) -> mcdiff.DiffusionSampler:
    """A bundled model (digits, photos), or a probit-output Gaussian model with a bright off-centre blob."""
    if model == "gaussian":
        y, x = np.mgrid[0:16, 0:16] / 15.0
        mean = 0.2 + 0.6 * np.exp(-((y - 0.35) ** 2 + (x - 0.6) ** 2) / 0.08)
        return mcdiff.GaussianSampler(mean=mean[None], std=0.3, image_shape=(1, 16, 16),
                                      num_inference_steps=steps, output="probit")
    if model in ("digits", "photos"):
        kwargs = {"device": device} if device else {}
        return mcdiff.bundled_model(model, num_inference_steps=steps, **kwargs)
    sys.exit(f"--model must be 'digits', 'photos' or 'gaussian', got {model!r}")


TRACKING = [("DDIMScheduler", 12), ("DDIMScheduler", 8), ("DPMSolverMultistepScheduler", 5),
            ("DPMSolverMultistepScheduler", 6), ("DPMSolverMultistepScheduler", 8), ("DPMSolverMultistepScheduler", 10),
            ("UniPCMultistepScheduler", 4), ("UniPCMultistepScheduler", 5), ("UniPCMultistepScheduler", 6),
            ("UniPCMultistepScheduler", 8), ("UniPCMultistepScheduler", 10), ("DEISMultistepScheduler", 6)]
"""Coarse candidates ``(solver, steps)`` of ``--tracking``, against the fine DDIM sampler."""


def short_name(fidelity) -> str:
    """``"UniPC:6"`` for ``("UniPCMultistepScheduler", 6)``, ``"12"`` for a plain step count."""
    fidelity = parse_fidelity(fidelity)
    if fidelity.solver is None:
        return str(fidelity.steps)
    return f"{fidelity.solver.removesuffix('Scheduler').removesuffix('Multistep')}:{fidelity.steps}"


def tracking(args, fine_steps: int) -> list[tuple]:
    """Rows ``(statistic, candidate, NFE, corr, Var(f_L - f_c)/Var f_L per evaluation, the same over
    antithetic pair means, predicted x amc)`` for each candidate of :data:`TRACKING`, on the same noise."""
    fine = load_sampler(args.model, fine_steps, args.device)

    def draws(sampler):
        return mcdiff.estimate(sampler, STATS, ["amc"], n_evals=args.n_track, seed=args.first_seed,
                               batch_size=args.batch_size, progress=False)["draws"].sel(design="amc")

    fine_draws = draws(fine)
    pairs = fine_draws["group"].values

    def pair_variance(x):
        return np.var(np.bincount(pairs, weights=x) / np.bincount(pairs), ddof=1)

    rows = []
    for solver, steps in TRACKING:
        coarse = fine.with_scheduler(solver, steps)
        coarse_draws = draws(coarse)
        for stat in STATS:
            for (suffix, f_fine), (_, f_coarse) in zip(_components(fine_draws[stat]), _components(coarse_draws[stat])):
                a, b = f_fine.values, f_coarse.values
                v_fine, v_coarse, v_diff = pair_variance(a), pair_variance(b), pair_variance(a - b)
                spent = np.sqrt(v_coarse * coarse.nfe) + np.sqrt(v_diff * (fine.nfe + coarse.nfe))
                rows.append((stat + suffix, short_name((solver, steps)), coarse.nfe, np.corrcoef(a, b)[0, 1],
                             np.var(a - b, ddof=1) / np.var(a, ddof=1), v_diff / v_fine, v_fine * fine.nfe / spent**2))
    return rows


def _components(var):
    """``[(suffix, cell)]``: the statistic itself, or one entry per centroid axis."""
    return [("", var)] if "axis" not in var.dims else [(f"[{a}]", var.sel(axis=a)) for a in var["axis"].values]


def _rows(summary, label_of, nfe_of) -> dict:
    """``{(estimator, component): (estimate, ci_width, std_error^2, nfe)}`` of one run."""
    out = {}
    for design in summary["design"].values:
        for stat in STATS:
            for suffix, cell in _components(summary[stat].sel(design=design)):
                out[label_of(design), stat + suffix] = (
                    float(cell.sel(summary="estimate")), float(cell.sel(summary="ci_width")),
                    float(cell.sel(summary="std_error")) ** 2, nfe_of(design),
                )
    return out


def run(args, estimators) -> tuple[list[tuple], dict]:
    fine_levels = {parse_fidelity(steps[-1]) for _, steps, _ in estimators}
    if len(fine_levels) != 1:
        sys.exit(f"every set of fidelities must end at the same fine level, got {sorted(map(str, fine_levels))}")
    (fine_level,) = fine_levels
    fine = load_sampler(args.model, fine_level.steps, args.device)
    if fine_level.solver is not None:
        fine = fine.with_scheduler(fine_level.solver, fine_level.steps)
    n_fine = mcdiff.SobolRQMC().nearest_n(args.budget_nfe / fine.nfe)
    runs: dict = {}
    allocations: dict = {}
    for seed in range(args.first_seed, args.first_seed + args.repeats):
        base = mcdiff.estimate(fine, STATS, BASELINES, n_evals=n_fine, seed=seed, batch_size=args.batch_size,
                               progress=False)["summary"]
        results = [_rows(base, str, lambda d, s=base: int(s["nfe"].sel(design=d)))]
        for method, steps, designs in estimators:
            result = mcdiff.estimate_multifidelity(
                fine, STATS, steps, designs, method=method, budget_nfe=args.budget_nfe, pilot=args.pilot,
                seed=seed, batch_size=args.batch_size, progress=False,
            )
            summary = result["summary"]
            total = lambda d, s=summary: int(s["nfe"].sel(design=d) + s["pilot_nfe"].sel(design=d))
            tag = "-".join(short_name(f) for f in steps)
            results.append(_rows(summary, lambda d, tag=tag: f"{d} ({tag})", total))
            levels = result["levels"]
            for design in levels["design"].values:
                allocations.setdefault(f"{design} ({tag})", []).append(levels.sel(design=design))
        for rows in results:
            for key, value in rows.items():
                runs.setdefault(key, []).append(value)
        for stat in STATS:
            for suffix, cell in _components(base[stat].sel(design="mc", summary="variance_per_eval")):
                runs.setdefault(("sigma2", stat + suffix), []).append(float(cell))
    table = []
    components = [c for (e, c) in runs if e == "sigma2"]
    estimators = list(dict.fromkeys(e for (e, _) in runs if e != "sigma2"))
    for component in components:
        sigma2 = np.array(runs["sigma2", component])
        eff, per_repeat = {}, {}
        for estimator in estimators:
            values = np.array(runs[estimator, component])
            eff[estimator] = sigma2.mean() * fine.nfe / (values[:, 3].mean() * values[:, 2].mean())
            per_repeat[estimator] = sigma2 * fine.nfe / (values[:, 3] * values[:, 2])
        for estimator in estimators:
            values = np.array(runs[estimator, component])
            gains = per_repeat[estimator] / per_repeat["amc"]
            table.append((component, estimator, values[:, 0].mean(), values[:, 1].mean(), values[:, 3].mean(),
                          eff[estimator], eff[estimator] / eff["amc"], gains.min(), gains.max()))
    info = {"n_fine": n_fine, "fine": f"{solver_name(fine)} at {fine_level.steps} steps ({fine.nfe} NFE)",
            "fine_short": short_name((solver_name(fine), fine_level.steps)),
            "allocation": [row for label, cells in allocations.items() for row in rate_allocation(label, cells)]}
    return table, info


def rate_allocation(label: str, cells: list) -> list[tuple]:
    """What an allocation that knows each level's RQMC rate would gain over the one the run used.

    Per level ``l`` (brightness, the statistic that drives the allocation), the variance of the
    level's weighted mean is modelled as ``V_l n^(-alpha_l)``. The rate comes from the run
    itself, at two sizes: the pilot (``n_p`` evaluations, variance per evaluation ``P_l``) and
    the final run (``n_l``, ``F_l = n_l · std_error^2``), pooled over the repeats::

        alpha_l = 1 - mean log(F_l / P_l) / mean log(n_l / n_p)

    and ``V_l = w_l^2 mean(std_error^2 n_l^alpha_l)``. Returns one row ``(label, rates, counts
    used, rate-aware counts, variance at the counts used / variance at the rate-aware optimum)``,
    the optimum from :func:`mcdiff.estimators.level_allocation` with ``rates`` on the same NFE
    (real-valued: an upper bound on what the rate-aware allocation could gain, before rounding
    to each design's counts and with the rates known exactly). Empty where a level had no
    pilot or the final run no more evaluations than the pilot.
    """
    stat = STATS[0]
    n = np.array([cell["n_evals"].values for cell in cells], dtype=float)
    n_pilot = np.array([cell["pilot_n_evals"].values for cell in cells], dtype=float)
    if (n_pilot == 0).any() or (n <= n_pilot).any():
        return []
    fields = np.array([cell[stat].sel(level_summary=["std_error", "pilot_effective_variance", "weight"]).values
                       for cell in cells])
    std_error2, pilot_variance, weight = fields[:, :, 0] ** 2, fields[:, :, 1], fields[:, :, 2]
    rates = 1 - np.log(n * std_error2 / pilot_variance).mean(0) / np.log(n / n_pilot).mean(0)
    rates = np.clip(rates, 0.5, 3.0)
    coefficient = (weight**2 * std_error2 * n**rates).mean(0)
    costs = cells[0]["cost_per_eval"].values
    used = n.mean(0)
    best = level_allocation(coefficient, costs, float((used * costs).sum()), rates)
    ratio = (coefficient * used**-rates).sum() / (coefficient * best**-rates).sum()
    return [(label, rates, used, best, ratio)]


def table_head(header: tuple[str, ...]) -> list[str]:
    """The header and rule lines of a Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def write(path: Path, text: str) -> None:
    """Write a result file (creating its folder) and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)


def write_tracking(args, command: str, start: float) -> None:
    """Run :func:`tracking` against the 50-step sampler and write ``multifidelity_<model>_tracking.md``."""
    rows = tracking(args, 50)
    header = ("statistic", "coarse level", "NFE", "corr(f_c, f_50)", "Var(f_50 - f_c) / Var f_50",
              "the same over pair means", "predicted x amc (mlmc+amc)")
    lines = table_head(header)
    lines += [f"| {stat} | {name} | {nfe} | {corr:.4f} | {ratio:.4f} | {pair_ratio:.3f} | {gain:.2f} |"
              for stat, name, nfe, corr, ratio, pair_ratio, gain in rows]
    text = "\n".join([
        f"# Coarse levels against DDIM 50 on the same noise: {args.model}", "", f"`{command}`", "",
        (
            f"{args.n_track} evaluations ({args.n_track // 2} antithetic pairs, seed {args.first_seed}) per "
            f"candidate, the same addresses for all, {time.perf_counter() - start:.0f} s. The predicted gain is "
            "that of two-level MLMC with antithetic pairs on both levels at Giles' allocation, with these pair-mean "
            "variances, over antithetic sampling alone at 50 steps (no pilot, no rounding)."
        ), "", *lines, "",
    ])
    write(args.output / f"multifidelity_{args.model}_tracking.md", text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits", help="'digits' or 'photos' (bundled) or 'gaussian' (analytic)")
    parser.add_argument("--budget-nfe", type=int, default=None, help="NFE per estimator and repeat (30000)")
    parser.add_argument("--pilot", type=int, default=None, help="pilot evaluations per level (32)")
    parser.add_argument("--repeats", type=int, default=None, help="seeds averaged per estimator (4)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + repeats - 1")
    parser.add_argument("--quick", action="store_true",
                        help="a small configuration (2 repeats of 6000 NFE, pilot 16, fewer estimators), 1-2 minutes")
    parser.add_argument("--methods", nargs="+", choices=["mlmc", "cv"], default=None,
                        help="run these methods at --fidelities with --designs instead of the built-in set")
    parser.add_argument("--fidelities", nargs="+", default=["12", "50"],
                        help="with --methods: step counts or SOLVER:STEPS, e.g. UniPCMultistepScheduler:6 50")
    parser.add_argument("--tracking", action="store_true",
                        help="measure how closely coarse candidates track the fine level instead (see above)")
    parser.add_argument("--n-track", type=int, default=1024, help="evaluations per candidate of --tracking")
    parser.add_argument("--designs", nargs="+", default=["amc", "rqmc"],
                        help="with --methods: design names, or one per level joined by '/' (rqmc/amc)")
    parser.add_argument("--tag", default=None, help="output file multifidelity_<model>_<tag>.md")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None, help="for a bundled model, e.g. cuda")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    for name, full, quick in [("budget_nfe", 30_000, 6000), ("repeats", 4, 2), ("pilot", 32, 16)]:
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.methods:
        designs = [tuple(d.split("/")) if "/" in d else d for d in args.designs]
        estimators = [(method, tuple(args.fidelities), designs) for method in args.methods]
    else:
        estimators = QUICK if args.quick else ESTIMATORS
    tag = args.tag if args.tag is not None else ("quick" if args.quick else "")
    start = time.perf_counter()
    shown = sys.argv[1:] if argv is None else argv
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/multifidelity.py", *shown])
    if args.tracking:
        write_tracking(args, command, start)
        return
    table, info = run(args, estimators)
    header = ("statistic", "estimator (levels)", "estimate", "mean CI width", "mean NFE", "rel. eff. per NFE",
              "x amc", "x amc per repeat")
    lines = table_head(header)
    for component, estimator, estimate, width, nfe, eff, gain, low, high in table:
        lines.append(f"| {component} | {estimator} | {estimate:.5g} | {width:.3g} | {nfe:.0f} | {eff:.3g} | "
                     f"{gain:.2f} | {low:.2f}–{high:.2f} |")
    header = ("estimator (levels)", "fitted rate per level", "evaluations per level (used)",
              "rate-aware optimum", "variance used / optimum")
    allocation = table_head(header)
    for label, rates, used, best, ratio in info["allocation"]:
        allocation.append(f"| {label} | {' / '.join(f'{r:.2f}' for r in rates)} | "
                          f"{' / '.join(f'{n:.0f}' for n in used)} | {' / '.join(f'{n:.0f}' for n in best)} | "
                          f"{ratio:.3f} |")
    if not info["allocation"]:
        allocation = ["No estimator qualifies: a level's final run had no more evaluations than its pilot."]
    seeds = f"seeds {args.first_seed}–{args.first_seed + args.repeats - 1}"
    text = "\n".join([
        f"# Multi-fidelity efficiency per NFE: {args.model}", "", f"`{command}`", "",
        (
            f"Budget {args.budget_nfe} NFE per estimator (single-fidelity designs: {info['n_fine']} evaluations of "
            f"{info['fine']}), pilot {args.pilot} evaluations per level (NFE counted), "
            f"{args.repeats} repeats ({seeds}), {time.perf_counter() - start:.0f} s. Efficiency per NFE is against "
            f"MC at the fine level ({info['fine_short']}); `x amc` is the gain over antithetic sampling alone, pooled "
            "over the repeats, with its range over single repeats. Levels are coarse to fine: a step count of DDIM, "
            "or solver:steps (DPMSolver = DPM-Solver++ 2M)."
        ), "", *lines, "",
        "## Allocation with fitted variance rates (brightness)", "",
        (
            "Each level's variance rate `alpha` fitted from its pilot and final run (`rate_allocation`); the last "
            "column is how much smaller the variance would be at the same NFE had the evaluations been allocated "
            "for these rates (`level_allocation(..., rates)`) instead of by Giles' 1/n allocation from the pilot: "
            "1.000 means no gain. Real-valued counts, rates taken as known: an upper bound."
        ), "", *allocation, "",
    ])
    write(args.output / f"multifidelity_{args.model}{'_' + tag if tag else ''}.md", text)


if __name__ == "__main__":
    main()
