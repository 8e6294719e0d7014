"""Coverage and bias of every design's confidence interval on the analytic model.

For each decoder of :class:`mcdiff.GaussianSampler` (``probit``: smooth; ``clip``: clamped to
[0, 1]), sample size and confidence level, the study repeats ``mcdiff.estimate`` with seeds
0 .. R-1 and reports how often the CI covers the exact expectation, the binomial standard
error of that coverage, the bias of the estimate (raw, with its standard error, and as the
t-statistic of the standardised error), and the mean CI width. Truths are closed form
(``mcdiff.exact_expectation``).

Run: ``python statistics/coverage.py [--repeats 500]`` (about 7 minutes on 2 cores);
writes ``statistics/results/coverage.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import mcdiff
from mcdiff.results import summarize_draws

DESIGNS = {
    "mc": mcdiff.MonteCarlo(),
    "amc": mcdiff.Antithetic(),
    "rqmc (R=16)": mcdiff.SobolRQMC(16),
    "rqmc (R=8)": mcdiff.SobolRQMC(8),
    "amc-rqmc (R=16)": mcdiff.SobolRQMC(16, antithetic=True),
}
LEVELS = (0.8, 0.9, 0.95, 0.99)
STATS = ("brightness", "pixel_mean")


def gaussian_model(output: str) -> mcdiff.GaussianSampler:
    """The analytic model of this study: 1x4x4, means 0.15 .. 0.85, std 0.25, 10 DDIM steps."""
    return mcdiff.GaussianSampler(
        mean=np.linspace(0.15, 0.85, 16).reshape(1, 4, 4),
        std=0.25,
        image_shape=(1, 4, 4),
        num_inference_steps=10,
        output=output,
    )


def study(
    sampler: mcdiff.Sampler, label_of_model: str, n_evals: int, repeats: int, designs: dict = DESIGNS, batch_size: int = 256
) -> list[tuple]:
    """Rows ``(label_of_model, n, statistic, design, coverages, bias, bias_se, t, width_95)``.

    ``sampler`` must know its exact answers (``expected_image``). ``coverages`` has one entry
    per level of :data:`LEVELS` (pixel-wise coverage averaged over the pixels). With ``e_r``
    the error of repeat r averaged over components, ``bias = mean_r e_r`` and
    ``bias_se = sd_r(e_r) / sqrt(R)``; ``t`` is the t-statistic of the mean standardised
    error ``(estimate - truth) / std_error`` over repeats.
    """
    truth = {s: mcdiff.exact_expectation(sampler, s) for s in STATS}
    labels = list(designs)
    designs = list(designs.values())
    hits = {(s, d, c): [] for s in STATS for d in labels for c in LEVELS}
    errors = {(s, d): [] for s in STATS for d in labels}
    standardised = {(s, d): [] for s in STATS for d in labels}
    widths = {(s, d): [] for s in STATS for d in labels}
    for seed in range(repeats):
        # two RQMC designs share the name "rqmc": run each design on its own
        for label, design in zip(labels, designs):
            result = mcdiff.estimate(
                sampler, STATS, [design], n_evals=n_evals, seed=seed, batch_size=batch_size, progress=False
            )
            draws = result["draws"].to_dataset()
            for level in LEVELS:
                summary = summarize_draws(draws, level)
                for stat in STATS:
                    cell = summary[stat].isel(design=0)
                    lower = cell.sel(summary="ci_lower").values
                    upper = cell.sel(summary="ci_upper").values
                    hits[stat, label, level].append(np.mean((lower <= truth[stat]) & (truth[stat] <= upper)))
                    if level == 0.95:
                        est = cell.sel(summary="estimate").values
                        se = cell.sel(summary="std_error").values
                        widths[stat, label].append(float(cell.sel(summary="ci_width").mean()))
                        errors[stat, label].append(np.mean(est - truth[stat]))
                        with np.errstate(divide="ignore", invalid="ignore"):
                            standardised[stat, label].append(np.nanmean((est - truth[stat]) / se))
    rows = []
    for stat in STATS:
        for label in labels:
            z = np.array(standardised[stat, label])
            e = np.array(errors[stat, label])
            rows.append((
                label_of_model, n_evals, stat, label,
                [float(np.mean(hits[stat, label, level])) for level in LEVELS],
                e.mean(), e.std(ddof=1) / np.sqrt(len(e)), z.mean() / (z.std(ddof=1) / np.sqrt(len(z))),
                float(np.mean(widths[stat, label])),
            ))
    return rows


def format_rows(rows: list[tuple], repeats: int, model_column: str) -> list[str]:
    """A Markdown table of :func:`study` rows; **low** marks coverage 3 binomial SE below the level."""
    binomial = [np.sqrt(level * (1 - level) / repeats) for level in LEVELS]
    header = (
        f"| {model_column} | n | statistic | design | "
        + " | ".join(f"coverage {level:.2f} (± {se:.3f})" for level, se in zip(LEVELS, binomial))
        + " | bias ± SE | t of error / SE | mean 95% CI width |"
    )
    lines = [header, "|" + "---|" * (8 + len(LEVELS) - 1)]
    for model, n, stat, design, coverages, bias, bias_se, t, width in rows:
        cells = [f"{c:.3f}" + (" **low**" if c < level - 3 * se else "")
                 for c, level, se in zip(coverages, LEVELS, binomial)]
        lines.append(f"| {model} | {n} | {stat} | {design} | " + " | ".join(cells)
                     + f" | {bias:+.1e} ± {bias_se:.1e} | {t:+.2f} | {width:.3g} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--outputs", nargs="+", default=["probit", "clip"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    rows = [r for out in args.outputs for n in args.sizes for r in study(gaussian_model(out), out, n, args.repeats)]
    lines = format_rows(rows, args.repeats, "output")
    elapsed = time.time() - start
    command = (f"python statistics/coverage.py --repeats {args.repeats} --sizes {' '.join(map(str, args.sizes))} "
               f"--outputs {' '.join(args.outputs)}")
    text = (
        f"# Coverage and bias of every design's CI on the analytic model\n\nCommand: `{command}` ({elapsed:.0f} s, "
        f"torch threads {args.threads}; RQMC with mcdiff's default nested Owen scrambling).\n"
        f"Pixel-mean coverage is averaged over the 16 pixels; the header gives each level's binomial SE "
        f"over {args.repeats} repeats. **low** marks coverage more than 3 binomial SE below the level. "
        f"`bias ± SE`: mean of estimate − truth over repeats (pixel mean: averaged over pixels) and its "
        f"standard error. `t`: t-statistic of the mean standardised error (estimate − truth) / std_error; "
        f"|t| < 3 is consistent with an unbiased estimator.\n\n" + "\n".join(lines) + "\n"
    )
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "coverage.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
