"""Coverage and cost of sequential stopping: the round's t-interval against anytime-valid confidence sequences.

On the probit analytic model (brightness, first round 16 evaluations, doubling up to a cap),
each rule stops at the first round whose interval is at most the target width; the study
reports how often the interval *at the stopping time* covers the exact expectation (for the
confidence sequences: the sequence's bounds, ``/summary/brightness_sequence``), its binomial
standard error, and the mean number of evaluations spent. The t-rule checks a fresh
t-interval each round, which is not valid at a data-dependent time; the Bernstein and betting
confidence sequences (:mod:`mcdiff.intervals`) hold at every time at once, so at the stop too.

Run: ``python statistics/stopping_coverage.py [--repeats 500]``; writes
``statistics/results/stopping_coverage.md``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import mcdiff

RULES = ("t", "bernstein", "betting")
TARGETS = {"mc": 0.024, "amc": 0.005}
"""Target CI widths per design (as in ``tests/test_stopping.py``: the t-rule stops after 2-3 rounds)."""


def model() -> mcdiff.GaussianSampler:
    """The probit analytic model of ``tests/small_models.probit_gaussian(4)``."""
    return mcdiff.GaussianSampler(
        mean=np.linspace(0.15, 0.85, 16).reshape(1, 4, 4), std=0.25, image_shape=(1, 4, 4),
        num_inference_steps=4, output="probit",
    )


def stopped(sampler, design: str, rule: str, seed: int, max_evals: int) -> tuple[float, float, int, bool]:
    """``(lower, upper, n_evals, reached)`` of one stopped run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summary = mcdiff.estimate(
            sampler, ["brightness"], [design], n_evals=16, seed=seed, batch_size=1024, progress=False,
            target_ci_width=TARGETS[design], max_evals=max_evals, stop_interval=rule,
        )["summary"]
    if rule == "t":
        cell = summary["brightness"].sel(design=design)
        lower, upper = float(cell.sel(summary="ci_lower")), float(cell.sel(summary="ci_upper"))
    else:
        cell = summary["brightness_sequence"].sel(design=design)
        lower, upper = float(cell.sel(sequence_bound="lower")), float(cell.sel(sequence_bound="upper"))
    return lower, upper, int(summary["n_evals"][0]), bool(summary.attrs["target_reached"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--max-evals", type=int, default=1 << 15)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sampler = model()
    truth = float(mcdiff.exact_expectation(sampler, "brightness"))
    rows, start = [], time.perf_counter()
    for design in TARGETS:
        for rule in RULES:
            runs = [stopped(sampler, design, rule, seed, args.max_evals) for seed in range(args.repeats)]
            hits = np.array([lo <= truth <= hi for lo, hi, _, _ in runs])
            sizes = np.array([n for _, _, n, _ in runs])
            reached = np.mean([r for *_, r in runs])
            coverage, se = hits.mean(), np.sqrt(hits.mean() * (1 - hits.mean()) / len(hits))
            rows.append(
                f"| {design} | {TARGETS[design]} | {rule} | {coverage:.3f} ± {se:.3f} | {sizes.mean():,.0f} | "
                f"{np.median(sizes):,.0f} | {reached:.3f} |"
            )
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Sequential stopping: coverage at the stopping time and cost",
            "",
            f"`python statistics/stopping_coverage.py --repeats {args.repeats} --max-evals {args.max_evals}` "
            f"({time.perf_counter() - start:.0f} s). Probit analytic model, brightness, first round 16 "
            f"evaluations, doubling to at most {args.max_evals}; nominal 95%; truth {truth:.6f} (closed form).",
            "",
            "| design | target width | interval | coverage at the stop ± SE | mean evaluations | median | reached |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "The t-rule is cheapest and covers a little under 95%: the round whose t-interval first looks narrow "
            "enough is one whose sample standard deviation came out small. The confidence sequences cover at "
            "least 95% by construction (anytime-valid: Waudby-Smith and Ramdas, JRSS-B 2024) and cost more "
            "evaluations: their width carries a log factor and, for bounded values, does not use the design's "
            "full variance reduction at small counts.",
        ]
    )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "stopping_coverage.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
