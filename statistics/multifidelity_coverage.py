"""Coverage of multi-fidelity 95% CIs of the exact fine-level truth on the analytic model.

The probit-output Gaussian model (1x4x4, non-affine, so antithetic pairs do not cancel) is
sampled at fidelities 2 < 5 < 20 (MLMC) and 2 < 20 (control variate) with the full pipeline:
a pilot per level, Giles' allocation of a budget of NFE, the final run on independent
streams and the Welch–Satterthwaite t-interval. The truth is the 20-step sampler's exact
expectation (``mcdiff.exact_expectation``). Each coverage is Binomial(R, 0.95)/R if the
intervals are exact: SE 0.97% at R = 500, so |coverage - 0.95| < 2.9% is 3 SE.

Measured (results/multifidelity_coverage.md, 653 s on a shared 2-core CPU): brightness and
the pooled per-pixel coverage are within 3 SE of 0.95 for all 12 combinations. Before the
control variate's ``beta`` became the per-evaluation regression slope, it was the slope of
group means; for an antithetic pair level that slope cancels the leading even term of
``f_20 - beta f_2`` (beta 13-17 per pixel against 4-6) and leaves pair means with kurtosis
40-140, so the pixel-wise intervals of cv+amc-rqmc and cv+rqmc/amc covered 0.904 and 0.886
(brightness, an average of 16 such pixels, still covered). The price: brightness efficiency
per NFE of the antithetic control variates fell from 13-22 to 5-8 on this model.

With ``--study solvers`` the levels have solvers of their own, the level combinations of
``benchmarks/multifidelity.py`` on this model (:data:`SOLVER_STUDY`): UniPC, DPM-Solver++ 2M
or DEIS at 2-5 steps as coarse levels under DDIM at 20 steps, whose exact expectation is the
truth (the coarse levels need none: they cancel in the telescoping sum).

    python statistics/multifidelity_coverage.py                  # 500 repeats, writes results/multifidelity_coverage.md
    python statistics/multifidelity_coverage.py --repeats 50     # a quick look
    python statistics/multifidelity_coverage.py --study solvers  # writes results/multifidelity_coverage_solvers.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import mcdiff
from mcdiff.designs import SobolRQMC
from mcdiff.multifidelity import parse_fidelity

FIDELITIES = {"mlmc": [2, 5, 20], "cv": [2, 20]}
COMBINATIONS = {
    "mlmc": ["mc", "amc", SobolRQMC(16), SobolRQMC(16, antithetic=True), ("amc-rqmc", "rqmc", "amc"),
             ("mc", "amc-rqmc", "rqmc")],
    "cv": ["mc", "amc", SobolRQMC(16), SobolRQMC(16, antithetic=True), ("rqmc", "amc"), ("amc", "amc-rqmc")],
}
STATS = ("brightness", "pixel_mean")

UNIPC, DPM, DEIS = "UniPCMultistepScheduler", "DPMSolverMultistepScheduler", "DEISMultistepScheduler"
SOLVER_STUDY = [
    ("mlmc", [(UNIPC, 3), 20], ["amc", SobolRQMC(16), SobolRQMC(16, antithetic=True), ("rqmc", "amc")]),
    ("mlmc", [(DPM, 3), 20], ["amc", SobolRQMC(16), SobolRQMC(16, antithetic=True)]),
    ("mlmc", [(DEIS, 3), 20], ["amc", SobolRQMC(16, antithetic=True)]),
    ("cv", [(UNIPC, 3), 20], ["amc", SobolRQMC(16), SobolRQMC(16, antithetic=True)]),
    ("mlmc", [(UNIPC, 2), (UNIPC, 5), 20], [SobolRQMC(16), SobolRQMC(16, antithetic=True)]),
]
"""``(method, levels coarse to fine, design combinations)`` of ``--study solvers``."""


def gaussian_model() -> mcdiff.GaussianSampler:
    """The probit-output analytic model of this study (1x4x4, means 0.15 .. 0.85, std 0.25)."""
    return mcdiff.GaussianSampler(mean=np.linspace(0.15, 0.85, 16).reshape(1, 4, 4), std=0.25,
                                  image_shape=(1, 4, 4), output="probit")


def study(
    model: mcdiff.Sampler,
    method: str,
    repeats: int,
    budget_nfe: int,
    pilot: int,
    fidelities: dict = FIDELITIES,
    batch_size: int = 256,
    combinations: dict = COMBINATIONS,
) -> list[tuple]:
    """Rows ``(method, design, coverage brightness, coverage pixel_mean, mean NFE, efficiency)``.

    ``fidelities[method]`` are the levels, ``combinations[method]`` the design combinations. The
    truth is ``exact_expectation`` of the finest level: ``model.with_steps(steps)``, or
    ``model.with_scheduler(solver, steps)`` for a level with a solver.
    """
    top = parse_fidelity(fidelities[method][-1])
    fine = model.with_steps(top.steps) if top.solver is None else model.with_scheduler(top.solver, top.steps)
    truth = {s: mcdiff.exact_expectation(fine, s) for s in STATS}
    hits, nfe, efficiency = {}, {}, {}
    for seed in range(repeats):
        summary = mcdiff.estimate_multifidelity(
            model, list(STATS), fidelities[method], combinations[method], method=method, budget_nfe=budget_nfe,
            pilot=pilot, seed=seed, batch_size=batch_size, progress=False,
        )["summary"]
        for design in summary["design"].values:
            for stat, exact in truth.items():
                cell = summary[stat].sel(design=design)
                inside = (cell.sel(summary="ci_lower").values <= exact) & (exact <= cell.sel(summary="ci_upper").values)
                hits.setdefault((design, stat), []).append(np.mean(inside))
            total = summary["nfe"].sel(design=design) + summary["pilot_nfe"].sel(design=design)
            nfe.setdefault(design, []).append(int(total))
            eff = summary["brightness"].sel(design=design, summary="relative_efficiency_per_nfe")
            efficiency.setdefault(design, []).append(float(eff))
    return [
        (method, design, np.mean(hits[design, "brightness"]), np.mean(hits[design, "pixel_mean"]),
         np.mean(nfe[design]), np.median(efficiency[design]))
        for design in nfe
    ]


def format_rows(rows: list[tuple], repeats: int) -> tuple[float, list[str]]:
    """The 3-binomial-SE tolerance and a Markdown table of :func:`study` rows."""
    tolerance = 3 * np.sqrt(0.95 * 0.05 / repeats)
    header = ("method", "design per level", "coverage brightness", "coverage pixel_mean (pooled)",
              "mean NFE incl. pilot", "median rel. eff. per NFE (brightness)", "within 3 SE")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, design, brightness, pixels, nfe, eff in rows:
        ok = abs(brightness - 0.95) < tolerance and abs(pixels - 0.95) < tolerance
        lines.append(f"| {method} | {design} | {brightness:.3f} | {pixels:.3f} | {nfe:.0f} | {eff:.3g} | "
                     f"{'yes' if ok else 'NO'} |")
    return tolerance, lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--budget-nfe", type=int, default=2000)
    parser.add_argument("--pilot", type=int, default=32)
    parser.add_argument("--study", choices=["steps", "solvers"], default="steps",
                        help="levels of one solver at several step counts, or levels with solvers of their own")
    parser.add_argument("--output", type=Path, default=None,
                        help="default results/multifidelity_coverage.md (--study solvers: _solvers.md)")
    args = parser.parse_args(argv)
    if args.output is None:
        name = "multifidelity_coverage" + ("_solvers" if args.study == "solvers" else "")
        args.output = Path(__file__).parent / "results" / f"{name}.md"
    start = time.perf_counter()
    model = gaussian_model()
    if args.study == "steps":
        cases, levels_text = [(m, FIDELITIES[m], COMBINATIONS[m]) for m in ("mlmc", "cv")], f"Fidelities {FIDELITIES}"
    else:
        cases, levels_text = SOLVER_STUDY, "Levels (solver:steps, coarse to fine) in the first column"
    rows = []
    for method, levels, combinations in cases:
        label = method if args.study == "steps" else f"{method} ({' < '.join(str(parse_fidelity(f)) for f in levels)})"
        rows += [(label, *row[1:]) for row in study(model, method, args.repeats, args.budget_nfe, args.pilot,
                                                     {method: levels}, combinations={method: combinations})]
    tolerance, lines = format_rows(rows, args.repeats)
    command = "python " + " ".join(shlex.quote(a) for a in ["statistics/multifidelity_coverage.py", *sys.argv[1:]])
    text = "\n".join([
        f"# Multi-fidelity coverage ({args.repeats} repeats, 95% CIs)", "", f"`{command}`", "",
        (
            f"{levels_text}; budget {args.budget_nfe} NFE, pilot {args.pilot} per level; tolerance "
            f"±{tolerance:.3f} (3 binomial SE). {time.perf_counter() - start:.0f} s."
        ), "", *lines, "",
    ])
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
