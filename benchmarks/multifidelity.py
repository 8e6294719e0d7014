"""Relative efficiency per NFE of multi-fidelity estimators against fine-level plain MC.

For brightness, contrast and centroid: MC, antithetic (amc), RQMC and antithetic RQMC at the
finest step count alone, and multilevel Monte Carlo (``mlmc+D``) and the two-fidelity control
variate (``cv+D``) at several sets of step counts, with design ``D`` on every level or one
design per level (``rqmc/amc``: RQMC on the coarse level, antithetic on the fine pair).
Every estimator spends about the same budget of network function evaluations (NFE); the
pilot that allocates it comes on top and is counted. Efficiency per NFE is

    sigma_L^2 · s_L / (mean NFE · mean std_error^2)

over ``--repeats`` seeds, with ``sigma_L^2`` the per-evaluation variance of fine-level MC
(pooled over its repeats). ``x amc`` is the gain over antithetic sampling alone; its range is
that of ``eff_r / eff_amc,r`` over the repeats ``r`` (each from one run's standard errors,
so it shows how far a single run can be trusted). The allocation of evaluations to levels is
driven by brightness. Writes ``results/multifidelity_<model>.md`` (with ``--tag T``:
``multifidelity_<model>_T.md``; ``--quick`` tags ``quick``).

    python benchmarks/multifidelity.py                          # the bundled digits model
    python benchmarks/multifidelity.py --model gaussian         # the analytic model (probit output)
    python benchmarks/multifidelity.py --quick                  # a small configuration, 1-2 minutes
    python benchmarks/multifidelity.py --methods mlmc --fidelities 12 50 --designs amc-rqmc --tag best
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import mcdiff

STATS = ["brightness", "contrast", "centroid"]
BASELINES = ["mc", "amc", "rqmc", "amc-rqmc"]
ESTIMATORS = [
    ("mlmc", (12, 50), ["amc", "rqmc", "amc-rqmc", ("rqmc", "amc")]),
    ("mlmc", (4, 12, 50), ["amc", "rqmc"]),
    ("mlmc", (8, 25, 50), ["rqmc"]),
    ("cv", (12, 50), ["amc", "rqmc"]),
]
"""``(method, step counts, design combinations)``; every set ends at the same fine step count."""
QUICK = [("mlmc", (12, 50), ["amc", "rqmc"]), ("cv", (12, 50), ["rqmc"])]


def load_sampler(model: str, steps: int, device: str | None) -> mcdiff.DiffusionSampler:
    """The bundled digits model, or a probit-output Gaussian model with a bright off-centre blob."""
    if model == "gaussian":
        y, x = np.mgrid[0:16, 0:16] / 15.0
        mean = 0.2 + 0.6 * np.exp(-((y - 0.35) ** 2 + (x - 0.6) ** 2) / 0.08)
        return mcdiff.GaussianSampler(mean=mean[None], std=0.3, image_shape=(1, 16, 16),
                                      num_inference_steps=steps, output="probit")
    if model == "digits":
        kwargs = {"device": device} if device else {}
        return mcdiff.bundled_model("digits", num_inference_steps=steps, **kwargs)
    sys.exit(f"--model must be 'digits' or 'gaussian', got {model!r}")


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
    fine_steps = {steps[-1] for _, steps, _ in estimators}
    if len(fine_steps) != 1:
        sys.exit(f"every set of step counts must end at the same fine step count, got {sorted(fine_steps)}")
    (fine_steps,) = fine_steps
    fine = load_sampler(args.model, fine_steps, args.device)
    n_fine = mcdiff.SobolRQMC().nearest_n(args.budget_nfe / fine_steps)
    runs: dict = {}
    for seed in range(args.first_seed, args.first_seed + args.repeats):
        base = mcdiff.estimate(fine, STATS, BASELINES, n_evals=n_fine, seed=seed, batch_size=args.batch_size,
                               progress=False)["summary"]
        results = [_rows(base, str, lambda d, s=base: int(s["nfe"].sel(design=d)))]
        for method, steps, designs in estimators:
            summary = mcdiff.estimate_multifidelity(
                fine, STATS, steps, designs, method=method, budget_nfe=args.budget_nfe, pilot=args.pilot,
                seed=seed, batch_size=args.batch_size, progress=False,
            )["summary"]
            total = lambda d, s=summary: int(s["nfe"].sel(design=d) + s["pilot_nfe"].sel(design=d))
            tag = "-".join(map(str, steps))
            results.append(_rows(summary, lambda d, tag=tag: f"{d} ({tag})", total))
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
            eff[estimator] = sigma2.mean() * fine_steps / (values[:, 3].mean() * values[:, 2].mean())
            per_repeat[estimator] = sigma2 * fine_steps / (values[:, 3] * values[:, 2])
        for estimator in estimators:
            values = np.array(runs[estimator, component])
            gains = per_repeat[estimator] / per_repeat["amc"]
            table.append((component, estimator, values[:, 0].mean(), values[:, 1].mean(), values[:, 3].mean(),
                          eff[estimator], eff[estimator] / eff["amc"], gains.min(), gains.max()))
    return table, {"n_fine": n_fine, "fine_steps": fine_steps}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits", help="'digits' (bundled) or 'gaussian' (analytic)")
    parser.add_argument("--budget-nfe", type=int, default=None, help="NFE per estimator and repeat (30000)")
    parser.add_argument("--pilot", type=int, default=None, help="pilot evaluations per level (32)")
    parser.add_argument("--repeats", type=int, default=None, help="seeds averaged per estimator (4)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + repeats - 1")
    parser.add_argument("--quick", action="store_true",
                        help="a small configuration (2 repeats of 6000 NFE, pilot 16, fewer estimators), 1-2 minutes")
    parser.add_argument("--methods", nargs="+", choices=["mlmc", "cv"], default=None,
                        help="run these methods at --fidelities with --designs instead of the built-in set")
    parser.add_argument("--fidelities", type=int, nargs="+", default=[12, 50], help="with --methods")
    parser.add_argument("--designs", nargs="+", default=["amc", "rqmc"],
                        help="with --methods: design names, or one per level joined by '/' (rqmc/amc)")
    parser.add_argument("--tag", default=None, help="output file multifidelity_<model>_<tag>.md")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None, help="for the digits model, e.g. cuda")
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
    table, info = run(args, estimators)
    header = ("statistic", "estimator (step counts)", "estimate", "mean CI width", "mean NFE", "rel. eff. per NFE",
              "x amc", "x amc per repeat")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for component, estimator, estimate, width, nfe, eff, gain, low, high in table:
        lines.append(f"| {component} | {estimator} | {estimate:.5g} | {width:.3g} | {nfe:.0f} | {eff:.3g} | "
                     f"{gain:.2f} | {low:.2f}–{high:.2f} |")
    shown = sys.argv[1:] if argv is None else argv
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/multifidelity.py", *shown])
    seeds = f"seeds {args.first_seed}–{args.first_seed + args.repeats - 1}"
    text = "\n".join([
        f"# Multi-fidelity efficiency per NFE: {args.model}", "", f"`{command}`", "",
        (
            f"Budget {args.budget_nfe} NFE per estimator (single-fidelity designs: {info['n_fine']} evaluations at "
            f"{info['fine_steps']} steps), pilot {args.pilot} evaluations per level (NFE counted), "
            f"{args.repeats} repeats ({seeds}), {time.perf_counter() - start:.0f} s. Efficiency per NFE is against "
            f"MC at {info['fine_steps']} steps; `x amc` is the gain over antithetic sampling alone, pooled over "
            "the repeats, with its range over single repeats."
        ), "", *lines, "",
    ])
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"multifidelity_{args.model}{'_' + tag if tag else ''}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
