"""A large reference run of the Gaussian-mixture preset's finite-step law (no closed form gives it).

``GaussianMixtureSampler.preset("digits", num_inference_steps=S)`` (DDIM, eta 0, affine
output) maps its noise non-linearly, so only the limit law (the data, ``mcdiff.exact_law``)
is exact; at S steps the law is shifted by the discretisation bias
(``benchmarks/results/mixture_bias.md``). This script estimates the finite-step answers once,
with mcdiff's own estimators (``mcdiff.estimate`` with the targets of ``mcdiff.targets``),
under antithetic RQMC with 64 replicates (63 degrees of freedom for every standard error),
for two statistics:

- ``brightness`` (a mixture of ten near-normal laws: unimodal);
- ``pixel_mean_36``: pixel (4, 4), flattened component 36 of ``pixel_mean`` (bimodal:
  digit 0 leaves it at 0, most other digits ink it);

and records, each with its standard error: the mean, the variance and standard deviation,
quantiles at :data:`LEVELS`, and ``P(f > c)`` at thresholds ``c`` the limit law's quantiles at
:data:`THRESHOLD_LEVELS` rounded to 3 decimals. Writes ``mcdiff/samplers/mixture_reference.json``
(read by ``GaussianMixtureSampler.reference_answers`` and ``statistics/targets_coverage.py``) and
``statistics/results/mixture_reference.md``.

    python statistics/mixture_reference.py                   # 2^22 evaluations at 10 steps
    python statistics/mixture_reference.py --n-evals 65536 --json /tmp/r.json --output /tmp/r.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mcdiff
from mcdiff.samplers.mixture import REFERENCE_FILE

HERE = Path(__file__).parent
LEVELS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
THRESHOLD_LEVELS = (0.01, 0.1, 0.5, 0.9, 0.99)
PIXEL = 36
STATISTICS = {
    "brightness": (mcdiff.get_statistic("brightness"), None),
    f"pixel_mean_{PIXEL}": (
        mcdiff.Statistic(f"pixel_mean_{PIXEL}", lambda images: images.flatten(1)[:, PIXEL], dims=(), linear=True),
        PIXEL,
    ),
}


def measure(steps: int, n_evals: int, replicates: int, seed: int) -> tuple[dict, dict, float]:
    """``(answers, limit answers, seconds)`` of every statistic at ``steps`` DDIM steps."""
    sampler = mcdiff.GaussianMixtureSampler.preset("digits", num_inference_steps=steps)
    thresholds, targets = {}, []
    for name, (stat, _) in STATISTICS.items():
        thresholds[name] = np.round(mcdiff.exact_quantile(sampler, stat, THRESHOLD_LEVELS), 3)
        targets += [mcdiff.Quantiles(name, LEVELS), mcdiff.Spread(name)]
        targets += [mcdiff.Exceedance(name, float(c)) for c in thresholds[name]]
    start = time.perf_counter()
    result = mcdiff.estimate(
        sampler, [stat for stat, _ in STATISTICS.values()], [mcdiff.SobolRQMC(replicates, antithetic=True)],
        n_evals=n_evals, seed=seed, batch_size=4096, progress=False, targets=targets,
    )
    seconds = time.perf_counter() - start
    summary, found = result["summary"].to_dataset().isel(design=0), result["targets"].to_dataset().isel(design=0)

    def pair(cell) -> list[float]:
        return [float(cell.sel(**{cell.dims[-1]: "estimate"})), float(cell.sel(**{cell.dims[-1]: "std_error"}))]

    answers, limits = {}, {}
    for name, (stat, component) in STATISTICS.items():
        quantiles, spread = found[f"{name}_quantiles"], found[f"{name}_spread"]
        exceed = [found[t.name] for t in targets if t.kind == "exceedance" and t.statistics == (name,)]
        answers[name] = {
            "statistic": "brightness" if component is None else "pixel_mean",
            "component": component,
            "mean": pair(summary[name]),
            "variance": pair(spread.isel({spread.dims[0]: 0})),
            "std": pair(spread.isel({spread.dims[0]: 1})),
            "levels": list(LEVELS),
            "quantiles": quantiles.sel(target_summary="estimate").values.tolist(),
            "quantiles_se": quantiles.sel(target_summary="std_error").values.tolist(),
            "thresholds": thresholds[name].tolist(),
            "exceedance": [pair(cell)[0] for cell in exceed],
            "exceedance_se": [pair(cell)[1] for cell in exceed],
        }
        law = mcdiff.exact_law(sampler, stat)
        limits[name] = {
            "mean": float(law.mean()),
            "variance": float(law.variance()),
            "quantiles": law.quantile(LEVELS).tolist(),
            "exceedance": (1 - law.cdf(thresholds[name])).tolist(),
        }
    return answers, limits, seconds


def z_cell(estimate: float, error: float, limit: float) -> str:
    """An ``estimate ± SE (z vs the limit)`` cell."""
    return f"{estimate:.6g} ± {error:.1e} ({(estimate - limit) / error:+.1f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--n-evals", type=int, default=2**22)
    parser.add_argument("--replicates", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", type=Path, default=REFERENCE_FILE)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "mixture_reference.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in ["statistics/mixture_reference.py", *sys.argv[1:]])
    design = f"amc-rqmc, {args.replicates} replicates (SobolRQMC({args.replicates}, antithetic=True)), seed {args.seed}"
    recorded = {"model": "GaussianMixtureSampler.preset('digits'), DDIMScheduler, eta 0, affine output",
                "design": design, "command": command, "steps": {}}
    text = [
        "# Reference answers of the mixture preset's finite-step law", "",
        (f"`nice -n 19 {command}`; torch threads {args.threads}. `GaussianMixtureSampler.preset(\"digits\")`, DDIM "
         f"(eta 0), affine output; {args.n_evals} evaluations per step count, {design}; every answer "
         "from `mcdiff.estimate` with targets (`Quantiles`, `Exceedance`, `Spread`; the mean from `/summary`). "
         f"Recorded in `{args.json.name}` (`GaussianMixtureSampler.reference_answers`)."), "",
        ("Each cell: estimate ± standard error (z = (estimate − limit) / SE, the limit law being the data's, "
         "`mcdiff.exact_law`: |z| ≫ 1 is the discretisation bias resolved). Thresholds `c` are the limit law's "
         f"quantiles at {THRESHOLD_LEVELS} rounded to 3 decimals. `pixel_mean_{PIXEL}`: pixel (4, 4), bimodal."), "",
    ]
    for steps in args.steps:
        answers, limits, seconds = measure(steps, args.n_evals, args.replicates, args.seed)
        recorded["steps"][str(steps)] = {"n_evals": args.n_evals, "seconds": round(seconds, 1), "statistics": answers}
        text += [f"## {steps} DDIM steps ({seconds:.0f} s)", ""]
        for name, a in answers.items():
            lim = limits[name]
            rows = [("mean", *a["mean"], lim["mean"]), ("variance", *a["variance"], lim["variance"]),
                    ("std", *a["std"], np.sqrt(lim["variance"]))]
            rows += [(f"quantile {p:g}", *cell) for p, *cell in
                     zip(LEVELS, a["quantiles"], a["quantiles_se"], lim["quantiles"])]
            rows += [(f"P(f > {c:g})", *cell) for c, *cell in
                     zip(a["thresholds"], a["exceedance"], a["exceedance_se"], lim["exceedance"])]
            text += [f"### {name}", "", "| target | estimate ± SE (z vs limit) | limit law |", "|---|---|---|"]
            text += [f"| {label} | {z_cell(e, s, x)} | {x:.6g} |" for label, e, s, x in rows] + [""]
    args.json.write_text(json.dumps(recorded, indent=1) + "\n")
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
