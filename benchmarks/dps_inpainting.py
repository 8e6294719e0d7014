"""MC vs antithetic vs RQMC confidence intervals for DPS inpainting on the bundled digits model.

A digit from scikit-learn's ``load_digits`` is the ground truth; a box mask (the centre 4x4,
25% missing) or a random mask (50% missing) hides part of it, and the measurement carries
Gaussian noise ``sigma_y = 0.05`` on the [-1, 1] scale. Diffusion posterior sampling (DDPM,
``--steps`` steps, step size ``--zeta``) draws posterior samples; for each design at equal
evaluations we estimate the inpainting MSE and PSNR on the missing pixels and the mean
brightness of the missing region, over ``--repeats`` seeds. Efficiency is

    rel. eff. = sigma^2 / (N · mean SE^2)

with ``sigma^2`` the per-evaluation variance of MC pooled over its repeats (for MC itself
``sigma^2 = N SE^2``, so this is also ``mean SE_MC^2 / mean SE^2`` at equal N). Writes
``results/dps_inpainting.md``.

    python benchmarks/dps_inpainting.py
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
from mcdiff.designs import MonteCarlo
from mcdiff.inverse import make_mask

DESIGNS = ["mc", "amc", "rqmc", "amc-rqmc"]
MASKS = {"box": 0.25, "random": 0.5}


def missing_brightness(mask: np.ndarray) -> mcdiff.Statistic:
    """Mean intensity of the missing pixels (mask 0) of a grayscale image."""
    missing = torch.as_tensor(mask[0] == 0)
    return mcdiff.Statistic(
        "missing_brightness", lambda images: images[:, 0][:, missing].mean(dim=1), dims=()
    )


def seconds_per_sample(sampler, n: int, batch_size: int) -> float:
    """Wall time per sample of one MC batch run (the runner's inference mode)."""
    noise = MonteCarlo().draw(sampler.noise_spec, 0, 0, n, n)
    noise = {k: torch.from_numpy(v).to(sampler.device, sampler.dtype) for k, v in noise.items()}
    start = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, n, batch_size):
            sampler({k: v[lo : lo + batch_size] for k, v in noise.items()})
    return (time.perf_counter() - start) / n


def run(args) -> tuple[list[str], dict]:
    truth = (mcdiff.digits()[args.digit] + 1) / 2
    base = mcdiff.bundled_model("digits", args.steps, scheduler="DDPMScheduler")
    lines, timing = [], {}
    header = ("mask", "statistic", "design", "estimate", "mean CI width", "NFE", "rel. eff.")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind, fraction in MASKS.items():
        problem = mcdiff.InpaintingProblem(
            truth, make_mask(kind, tuple(truth.shape), fraction), sigma_y=args.sigma_y
        )
        sampler = problem.dps(base, args.zeta)
        stats = [problem.error, missing_brightness(problem.operator.mask)]
        runs = []
        for seed in range(args.repeats):
            result = mcdiff.estimate(
                sampler,
                stats,
                DESIGNS,
                n_evals=args.n_evals,
                seed=seed,
                batch_size=args.batch_size,
                progress=False,
            )
            runs.append(result["summary"].to_dataset())
        components = [
            ("inpainting_error", {"metric": "mse"}, "MSE"),
            ("inpainting_error", {"metric": "psnr"}, "PSNR"),
            ("missing_brightness", {}, "missing brightness"),
        ]
        for name, sel, label in components:
            cells = [s[name].sel(**sel) for s in runs]
            sigma2 = np.mean([float(c.sel(design="mc", summary="variance_per_eval")) for c in cells])
            se2 = {
                d: np.mean([float(c.sel(design=d, summary="std_error")) ** 2 for c in cells]) for d in DESIGNS
            }
            for design in DESIGNS:
                estimate = np.mean([float(c.sel(design=design, summary="estimate")) for c in cells])
                width = np.mean([float(c.sel(design=design, summary="ci_width")) for c in cells])
                lines.append(
                    f"| {kind} | {label} | {design} | {estimate:.4g} | {width:.3g} | {args.n_evals * sampler.nfe} | "
                    f"{sigma2 / (args.n_evals * se2[design]):.3g} |"
                )
        if kind == "box":
            timing = {
                "plain": seconds_per_sample(base, 256, args.batch_size),
                "dps": seconds_per_sample(sampler, 256, args.batch_size),
            }
    return lines, timing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="DDPM steps (default 50)")
    parser.add_argument("--zeta", type=float, default=1.0, help="DPS step size (default 1.0)")
    parser.add_argument("--sigma-y", type=float, default=0.05)
    parser.add_argument("--digit", type=int, default=0, help="index of the ground-truth digit")
    parser.add_argument("-n", "--n-evals", type=int, default=256, help="evaluations per design and repeat")
    parser.add_argument("--repeats", type=int, default=4, help="seeds averaged per design")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    lines, timing = run(args)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/dps_inpainting.py", *sys.argv[1:]])
    text = "\n".join(
        [
            "# DPS inpainting on the bundled digits model: MC vs antithetic vs RQMC",
            "",
            f"`{command}`",
            "",
            (
                f"Digit {args.digit} of `load_digits`; box mask (centre, 25% missing) and random mask (50% missing); "
                f"sigma_y = {args.sigma_y} on the [-1, 1] scale; DPS on DDPM with {args.steps} steps, zeta = {args.zeta}; "
                f"{args.n_evals} evaluations per design and repeat, {args.repeats} repeats (seeds 0..{args.repeats - 1}); "
                f"{time.perf_counter() - start:.0f} s on {args.threads} thread(s). `estimate` and `mean CI width` are "
                "averages over the repeats; `rel. eff.` is sigma^2 / (N · mean SE^2) with sigma^2 from MC pooled over "
                "the repeats (for MC, sigma^2 = N · SE^2, so this is also SE_MC^2 / SE^2 at equal N). NFE counts forward network evaluations "
                f"({args.steps} per sample); each DPS step also back-propagates through the network: measured "
                f"{1e3 * timing['dps']:.1f} ms per DPS sample vs {1e3 * timing['plain']:.1f} ms per plain DDPM sample "
                f"({timing['dps'] / timing['plain']:.1f}x, batch {args.batch_size})."
            ),
            "",
            *lines,
            "",
        ]
    )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "dps_inpainting.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
