"""Discretisation bias of DDIM on the Gaussian-mixture preset against the exact answer.

The mixture's score is exact, so what a finite step count gets wrong is the sampler's own
discretisation (plus the schedule's end points: DDIM starts from ``sqrt(a_T) E[x_0] + z`` at its first
timestep and returns the denoised estimate at t = 0). For each step count the script runs one
large antithetic-RQMC estimate (``SobolRQMC(16, antithetic=True)``, the design with the
smallest standard error here) of

- ``brightness`` and ``pixel_mean`` of the affine output (exact: the mixture mean), and
- ``probit brightness``: the brightness of ``Phi((Y - 1/2) / 0.25)`` applied to the same
  images (exact: ``exact_expectation`` of the preset with ``output="probit"``),

and prints bias = estimate - exact with its standard error (pixel mean: the largest |bias|
over the 64 pixels, and the pixels' median SE; and the root mean square over pixels of
bias / SE, about 1 where the bias is below the noise). Writes ``results/mixture_bias.md``.

    python benchmarks/mixture_bias.py                      # 2^16 evaluations at 10, 20, 50, 100, 200 steps
    python benchmarks/mixture_bias.py --n-evals 4096 --steps 10 20 --output /tmp
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mcdiff
from mcdiff.samplers.gaussian import decode

PROBIT_WIDTH = 0.25
probit_brightness = mcdiff.Statistic(
    "probit_brightness", lambda images: decode(images, "probit", PROBIT_WIDTH).mean(dim=(-3, -2, -1)), dims=()
)
"""Brightness of the probit decoder ``Phi((Y - 1/2) / w)`` applied to affine-output images ``Y``."""


def measure(steps: int, n_evals: int, seed: int) -> dict[str, float]:
    """Bias and standard error of the three statistics at ``steps`` DDIM steps."""
    sampler = mcdiff.GaussianMixtureSampler.preset("digits", num_inference_steps=steps)
    exact = {
        "brightness": mcdiff.exact_expectation(sampler, "brightness"),
        "pixel_mean": mcdiff.exact_expectation(sampler, "pixel_mean"),
        "probit_brightness": mcdiff.exact_expectation(
            mcdiff.GaussianMixtureSampler.preset("digits", output="probit", probit_width=PROBIT_WIDTH), "brightness"
        ),
    }
    start = time.perf_counter()
    summary = mcdiff.estimate(
        sampler, ["brightness", "pixel_mean", probit_brightness], [mcdiff.SobolRQMC(16, antithetic=True)],
        n_evals=n_evals, seed=seed, batch_size=1024, progress=False,
    )["summary"]
    row = {"steps": steps, "seconds": time.perf_counter() - start}
    for name, truth in exact.items():
        cell = summary[name].isel(design=0)
        bias = cell.sel(summary="estimate").values - truth
        se = cell.sel(summary="std_error").values
        worst = np.unravel_index(np.argmax(np.abs(bias)), np.shape(bias)) if np.ndim(bias) else ()
        row[name] = (float(bias[worst]), float(np.median(se)), float(truth[worst]))
        row[name + "_rms_z"] = float(np.sqrt(np.mean((bias / se) ** 2)))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    parser.add_argument("--n-evals", type=int, default=2**16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results",
                        help="directory of mixture_bias.md (default benchmarks/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = [measure(steps, args.n_evals, args.seed) for steps in args.steps]
    header = ("DDIM steps", "brightness bias ± SE", "pixel_mean: largest abs(bias) ± median SE",
              "pixel_mean: RMS of bias / SE", "probit brightness bias ± SE", "seconds")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row[name][0]:+.2e} ± {row[name][1]:.1e}" for name in ("brightness", "pixel_mean", "probit_brightness")]
        cells.insert(2, f"{row['pixel_mean_rms_z']:.2f}")
        lines.append(f"| {row['steps']} | " + " | ".join(cells) + f" | {row['seconds']:.0f} |")
    truth = rows[0]
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/mixture_bias.py", *sys.argv[1:]])
    text = "\n".join([
        "# Discretisation bias of DDIM on the Gaussian-mixture preset", "",
        (f"`{command}`: {time.perf_counter() - start:.0f} s, torch threads {args.threads}; "
         f"{args.n_evals} evaluations per step count, antithetic RQMC (16 replicates), seed {args.seed}."), "",
        (f"Exact answers (the data distribution): brightness {truth['brightness'][2]:.6f}, probit brightness "
         f"(w = {PROBIT_WIDTH}) {truth['probit_brightness'][2]:.6f}. Bias = estimate - exact."), "",
        *lines, "",
    ])
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "mixture_bias.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
