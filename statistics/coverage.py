"""Coverage and bias of every design's confidence interval on the analytic model.

For each decoder of :class:`mcdiff.GaussianSampler` (``probit``: smooth; ``clip``: clamped to
[0, 1]), sample size and confidence level, the study repeats ``mcdiff.estimate`` with seeds
0 .. R-1 and reports how often the CI covers the exact expectation, the binomial standard
error of that coverage, the bias of the estimate in units of its standard error, and the
mean CI width. Truths are closed form (``GaussianSampler.expected_value``).

Run: ``python statistics/coverage.py [--repeats 500]`` (about 3 minutes on 2 cores);
writes ``statistics/results/coverage.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

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


def study(output: str, n_evals: int, repeats: int) -> list[tuple]:
    """Rows ``(output, n, statistic, design, level, coverage, se, bias_in_se, width)``."""
    sampler = mcdiff.GaussianSampler(
        mean=np.linspace(0.15, 0.85, 16).reshape(1, 4, 4),
        std=0.25,
        image_shape=(1, 4, 4),
        num_inference_steps=10,
        output=output,
    )
    truth = {s: sampler.expected_value(s) for s in STATS}
    designs = list(DESIGNS.values())
    labels = list(DESIGNS)
    hits = {(s, d, c): [] for s in STATS for d in labels for c in LEVELS}
    errors = {(s, d): [] for s in STATS for d in labels}
    widths = {(s, d, c): [] for s in STATS for d in labels for c in LEVELS}
    for seed in range(repeats):
        # two RQMC designs share the name "rqmc": run each design on its own
        for label, design in zip(labels, designs):
            result = mcdiff.estimate(sampler, STATS, [design], n_evals=n_evals, seed=seed, progress=False)
            draws = result["draws"].to_dataset()
            for level in LEVELS:
                summary = summarize_draws(draws, level)
                for stat in STATS:
                    cell = summary[stat].isel(design=0)
                    lower = cell.sel(summary="ci_lower").values
                    upper = cell.sel(summary="ci_upper").values
                    hits[stat, label, level].append(np.mean((lower <= truth[stat]) & (truth[stat] <= upper)))
                    widths[stat, label, level].append(float(cell.sel(summary="ci_width").mean()))
                    if level == 0.95:
                        est = cell.sel(summary="estimate").values
                        se = cell.sel(summary="std_error").values
                        with np.errstate(divide="ignore", invalid="ignore"):
                            errors[stat, label].append(np.nanmean((est - truth[stat]) / se))
    rows = []
    for stat in STATS:
        for label in labels:
            z = np.array(errors[stat, label])
            bias = z.mean() / (z.std(ddof=1) / np.sqrt(len(z)))  # t-statistic of the mean error
            for level in LEVELS:
                cover = float(np.mean(hits[stat, label, level]))
                se = np.sqrt(level * (1 - level) / repeats)
                rows.append((output, n_evals, stat, label, level, cover, se, bias, np.mean(widths[stat, label, level])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--outputs", nargs="+", default=["probit", "clip"])
    args = parser.parse_args()
    start = time.time()
    rows = [r for out in args.outputs for n in args.sizes for r in study(out, n, args.repeats)]
    header = "| output | n | statistic | design | level | coverage | binomial SE | mean error / SE (t) | mean CI width |"
    lines = [header, "|" + "---|" * 9]
    for out, n, stat, design, level, cover, se, bias, width in rows:
        flag = " **low**" if cover < level - 3 * se else ""
        lines.append(
            f"| {out} | {n} | {stat} | {design} | {level:.2f} | {cover:.3f}{flag} | {se:.3f} | {bias:+.2f} | {width:.3g} |"
        )
    elapsed = time.time() - start
    command = f"python statistics/coverage.py --repeats {args.repeats} --sizes {' '.join(map(str, args.sizes))} --outputs {' '.join(args.outputs)}"
    text = (
        f"# Coverage of every design's CI on the analytic model\n\nCommand: `{command}` ({elapsed:.0f} s).\n"
        f"Pixel-mean coverage is averaged over the 16 pixels. **low** marks coverage more than 3 "
        f"binomial SE below the level. The t column tests the mean standardised error (bias): |t| < 3 "
        f"is consistent with an unbiased estimator.\n\n" + "\n".join(lines) + "\n"
    )
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "coverage.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
