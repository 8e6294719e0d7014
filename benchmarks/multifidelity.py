"""Relative efficiency per NFE of multi-fidelity estimators against fine-level plain MC.

For brightness, contrast and centroid: MC, antithetic (amc), RQMC and antithetic RQMC at the
finest step count alone, and multilevel Monte Carlo (``mlmc+D``) and the two-fidelity control
variate (``cv+D``, coarsest and finest step counts) with each design ``D`` on every level, plus
mixed combinations. Every estimator spends about the same budget of network function
evaluations (NFE); efficiency per NFE is

    sigma_L^2 · s_L / (mean NFE · mean std_error^2)

over ``--repeats`` seeds, with ``sigma_L^2`` the per-evaluation variance of fine-level MC
(pooled over its repeats) and NFE including the pilot. ``x amc`` is the gain over antithetic
sampling alone. The allocation of evaluations to levels is driven by brightness. Writes
``results/multifidelity_<model>.md``.

    python benchmarks/multifidelity.py                          # the bundled digits model
    python benchmarks/multifidelity.py --model gaussian         # the analytic model (probit output)
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
MULTIFIDELITY = {
    "mlmc": ["mc", "amc", "rqmc", "amc-rqmc", ("rqmc", "amc", "amc"), ("amc-rqmc", "amc", "amc")],
    "cv": ["mc", "amc", "rqmc", "amc-rqmc", ("rqmc", "amc")],
}


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


def _rows(summary, label_of, nfe_of) -> dict:
    """``{(estimator, component): (estimate, ci_width, std_error^2, nfe)}`` of one run."""
    out = {}
    for design in summary["design"].values:
        for stat in STATS:
            var = summary[stat].sel(design=design)
            comps = [("", var)] if var.ndim == 1 else [(f"[{a}]", var.sel(axis=a)) for a in var["axis"].values]
            for suffix, cell in comps:
                out[label_of(design), stat + suffix] = (
                    float(cell.sel(summary="estimate")), float(cell.sel(summary="ci_width")),
                    float(cell.sel(summary="std_error")) ** 2, nfe_of(design),
                )
    return out


def run(args) -> tuple[list[tuple], dict]:
    steps = args.fidelities
    fine = load_sampler(args.model, steps[-1], args.device)
    n_fine = mcdiff.SobolRQMC().nearest_n(args.budget_nfe / steps[-1])
    runs: dict = {}
    for seed in range(args.repeats):
        base = mcdiff.estimate(fine, STATS, BASELINES, n_evals=n_fine, seed=seed, batch_size=args.batch_size,
                               progress=False)["summary"]
        results = [_rows(base, str, lambda d, s=base: int(s["nfe"].sel(design=d)))]
        sigma2 = {stat: base[stat].sel(design="mc", summary="variance_per_eval") for stat in STATS}
        for method, designs in MULTIFIDELITY.items():
            fidelities = steps if method == "mlmc" else [steps[0], steps[-1]]
            summary = mcdiff.estimate_multifidelity(
                fine, STATS, fidelities, designs, method=method, budget_nfe=args.budget_nfe, pilot=args.pilot,
                seed=seed, batch_size=args.batch_size, progress=False,
            )["summary"]
            total = lambda d, s=summary: int(s["nfe"].sel(design=d) + s["pilot_nfe"].sel(design=d))
            results.append(_rows(summary, str, total))
        for rows in results:
            for key, value in rows.items():
                runs.setdefault(key, []).append(value)
        for stat in STATS:
            var = sigma2[stat]
            comps = [("", var)] if var.ndim == 0 else [(f"[{a}]", var.sel(axis=a)) for a in var["axis"].values]
            for suffix, cell in comps:
                runs.setdefault(("sigma2", stat + suffix), []).append(float(cell))
    table = []
    components = [c for (e, c) in runs if e == "sigma2"]
    estimators = list(dict.fromkeys(e for (e, _) in runs if e != "sigma2"))
    for component in components:
        sigma2 = np.mean(runs["sigma2", component])
        eff = {}
        for estimator in estimators:
            values = np.array(runs[estimator, component])
            eff[estimator] = sigma2 * steps[-1] / (values[:, 3].mean() * values[:, 2].mean())
        for estimator in estimators:
            values = np.array(runs[estimator, component])
            table.append((component, estimator, values[:, 0].mean(), values[:, 1].mean(), values[:, 3].mean(),
                          eff[estimator], eff[estimator] / eff["amc"]))
    return table, {"n_fine": n_fine}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits", help="'digits' (bundled) or 'gaussian' (analytic)")
    parser.add_argument("--fidelities", type=int, nargs="+", default=[4, 12, 50])
    parser.add_argument("--budget-nfe", type=int, default=50_000, help="NFE per estimator and repeat")
    parser.add_argument("--pilot", type=int, default=64, help="pilot evaluations per level")
    parser.add_argument("--repeats", type=int, default=8, help="seeds averaged per estimator")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None, help="for the digits model, e.g. cuda")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    table, info = run(args)
    header = ("statistic", "estimator", "estimate", "mean CI width", "mean NFE", "rel. eff. per NFE", "x amc")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for component, estimator, estimate, width, nfe, eff, gain in table:
        lines.append(f"| {component} | {estimator} | {estimate:.5g} | {width:.3g} | {nfe:.0f} | {eff:.3g} | "
                     f"{gain:.2f} |")
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/multifidelity.py", *sys.argv[1:]])
    text = "\n".join([
        f"# Multi-fidelity efficiency per NFE: {args.model}", "", f"`{command}`", "",
        (
            f"Fidelities {args.fidelities} (cv: {args.fidelities[0]} and {args.fidelities[-1]}); budget "
            f"{args.budget_nfe} NFE per estimator (single-fidelity designs: {info['n_fine']} evaluations at "
            f"{args.fidelities[-1]} steps), pilot {args.pilot} per level, {args.repeats} repeats, "
            f"{time.perf_counter() - start:.0f} s. Efficiency per NFE is against MC at {args.fidelities[-1]} "
            "steps, pilot NFE included; `x amc` is the gain over antithetic sampling alone."
        ), "", *lines, "",
    ])
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"multifidelity_{args.model}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
