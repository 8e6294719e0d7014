"""Coverage of the RQMC t-interval under two scrambles of Sobol' points: LMS versus nested.

:class:`mcdiff.SobolRQMC` scrambles each replicate either with scipy's linear matrix
scramble plus a digital shift (``scramble="lms"``) or with Owen's nested uniform scramble
(``scramble="nested"``). On the analytic model (:class:`mcdiff.GaussianSampler`, probit
decoder, 16 noise coordinates) the study repeats, for seeds ``0 .. S-1``, an estimate of the
mean brightness ``E[mean_pixels(x_0)]`` with ``n`` evaluations in ``R`` replicates and reports

* coverage of the 95% t-interval over the ``R`` replicate means, with its binomial standard
  error ``sqrt(c (1 - c) / S)``;
* mean CI width, the mean error in units of the mean standard error (about N(0, 1/S) for an
  unbiased estimate), and RMSE of the estimate over its mean standard error (1 for a calibrated
  standard error);
* excess kurtosis of the replicate means pooled over seeds (all ``S R`` of them are i.i.d.;
  0 for a normal error, which the t-interval assumes);
* seconds per draw of ``d = 64``, ``n = 1024`` (16 replicates) noise with each scramble.

Run: ``python statistics/rqmc_scrambling.py [--seeds 1000]`` (about 2 minutes on 2 cores);
writes ``statistics/results/rqmc_scrambling.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

import mcdiff
from mcdiff.estimators import group_means, summarize

SETTINGS = ((8, 512), (16, 1024))
SCRAMBLES = ("lms", "nested")


def sampler() -> mcdiff.GaussianSampler:
    """The analytic model of ``statistics/coverage.py`` with the smooth (probit) decoder."""
    return mcdiff.GaussianSampler(
        mean=np.linspace(0.15, 0.85, 16).reshape(1, 4, 4),
        std=0.25,
        image_shape=(1, 4, 4),
        num_inference_steps=10,
        output="probit",
    )


def study(replicates: int, n_evals: int, scramble: str, seeds: int) -> dict[str, float]:
    """Coverage, its standard error, width, bias/SE, RMSE/SE and excess kurtosis for one design."""
    model = sampler()
    truth = float(mcdiff.exact_expectation(model, "brightness"))
    design = mcdiff.SobolRQMC(replicates, scramble=scramble)
    groups = design.group_ids(n_evals)
    hits, widths, errors, std_errors, means = [], [], [], [], []
    for seed in range(seeds):
        z = design.draw(model.noise_spec, seed, 0, n_evals, n_evals)
        with torch.inference_mode():
            images = model.sample({"x_T": torch.from_numpy(z["x_T"])})
        values = images.double().mean((1, 2, 3)).numpy()
        summary = summarize(values, groups)
        hits.append(summary["ci_lower"] <= truth <= summary["ci_upper"])
        widths.append(summary["ci_upper"] - summary["ci_lower"])
        errors.append(summary["estimate"] - truth)
        std_errors.append(summary["std_error"])
        means.append(group_means(values, groups) - truth)
    coverage = float(np.mean(hits))
    return {
        "coverage": coverage,
        "se": float(np.sqrt(coverage * (1 - coverage) / seeds)),
        "width": float(np.mean(widths)),
        "bias_over_se": float(np.mean(errors) / np.mean(std_errors)),
        "rmse_over_se": float(np.sqrt(np.mean(np.square(errors))) / np.mean(std_errors)),
        "kurtosis": float(stats.kurtosis(np.concatenate(means))),
    }


def draw_seconds(scramble: str, dim: int = 64, n_evals: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` wall time of one ``(n_evals, dim)`` draw with 16 replicates."""
    design = mcdiff.SobolRQMC(16, scramble=scramble)
    best = np.inf
    for seed in range(repeats):
        start = time.perf_counter()
        design.draw({"z": (dim,)}, seed, 0, n_evals, n_evals)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rqmc_scrambling.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        f"# RQMC scrambles: 95% t-interval coverage of brightness ({args.seeds} seeds)",
        "",
        "Model: `GaussianSampler` probit, mean linspace(0.15, 0.85, 16), std 0.25, 10 steps;",
        "`python statistics/rqmc_scrambling.py --seeds " + str(args.seeds) + "`.",
        "",
        "| R | n | scramble | coverage | ± se | mean width | bias / SE | RMSE / SE | excess kurtosis |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    start = time.perf_counter()
    for replicates, n_evals in SETTINGS:
        for scramble in SCRAMBLES:
            row = study(replicates, n_evals, scramble, args.seeds)
            lines.append(
                f"| {replicates} | {n_evals} | {scramble} | {row['coverage']:.3f} | {row['se']:.3f} | "
                f"{row['width']:.3e} | {row['bias_over_se']:+.3f} | {row['rmse_over_se']:.3f} | {row['kurtosis']:+.2f} |"
            )
            print(lines[-1], flush=True)
    speed = {scramble: draw_seconds(scramble) for scramble in SCRAMBLES}
    lines += [
        "",
        "Draw time, d = 64, n = 1024, R = 16 (best of 5): "
        + ", ".join(f"{s} {t * 1e3:.1f} ms" for s, t in speed.items())
        + f" (nested / lms = {speed['nested'] / speed['lms']:.1f}).",
        "",
        f"Study time {time.perf_counter() - start:.0f} s.",
    ]
    print("\n".join(lines[-3:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
