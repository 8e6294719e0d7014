"""Coverage of every design's CI, and of multi-fidelity CIs, on the Gaussian-mixture preset.

The studies of ``coverage.py`` and ``multifidelity_coverage.py``, run on
``GaussianMixtureSampler.preset("digits")`` (affine output, DDIM): a model with a non-affine
exact score whose answers are known. The truth is the exact answer of the sampler's limit
(``mcdiff.exact_expectation``, the mixture mean); the step count is chosen from
``benchmarks/results/mixture_bias.md`` so that the discretisation bias is small against a CI
half-width at the studied ``n``: 100 steps, where the brightness bias (about -1e-4) is 0.1-0.15
standard errors of an n = 256 estimate (95% half-widths 1.5e-3 to 3e-3). Over 1000 repeats
the tables' ``bias ± SE`` column resolves that bias (|t| up to 6); coverage is what the CI
promises.

Measured (results/mixture_coverage.md, 582 s + 672 s on a shared 2-core CPU): 95% coverage
0.939-0.960 (brightness) and 0.946-0.951 (pixel mean) for every design; multi-fidelity
0.932-0.960 (brightness) and 0.948-0.952 (pixels), all 12 within 3 binomial SE.

- design coverage: mc, amc, rqmc (16 replicates), amc-rqmc at n = 256, 100 DDIM steps,
  1000 repeats, levels 0.8 .. 0.99 (binomial SE 0.69% at 95%);
- multi-fidelity: MLMC on 5 < 10 < 50 steps and the control variate on 5 < 50 steps with
  every design (``multifidelity_coverage.COMBINATIONS``), 500 repeats, truth the exact
  answer of the 50-step fine level's limit.

    python statistics/mixture_coverage.py                        # both, writes results/mixture_coverage.md
    python statistics/mixture_coverage.py --repeats 100 --mf-repeats 50 --output /tmp/quick.md
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import time
from pathlib import Path

import torch

import mcdiff

HERE = Path(__file__).parent
DESIGNS = {name: mcdiff.get_design(name) for name in ("mc", "amc", "rqmc", "amc-rqmc")}
FIDELITIES = {"mlmc": [5, 10, 50], "cv": [5, 50]}


def sibling(name: str):
    """The study module ``statistics/<name>.py`` (loaded by path: ``statistics`` is no package,
    and ``coverage`` would otherwise be coverage.py's own package)."""
    spec = importlib.util.spec_from_file_location(f"mcdiff_statistics_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps of the design study (default 100)")
    parser.add_argument("--n-evals", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--mf-repeats", type=int, default=500, help="multi-fidelity repeats; 0 skips them")
    parser.add_argument("--budget-nfe", type=int, default=8000)
    parser.add_argument("--pilot", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "mixture_coverage.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    coverage, multifidelity = sibling("coverage"), sibling("multifidelity_coverage")
    command = "python " + " ".join(shlex.quote(a) for a in ["statistics/mixture_coverage.py", *sys.argv[1:]])
    sampler = mcdiff.GaussianMixtureSampler.preset("digits", num_inference_steps=args.steps)
    start = time.perf_counter()
    rows = coverage.study(sampler, f"mixture, {args.steps} steps", args.n_evals, args.repeats, DESIGNS,
                          batch_size=1024)
    design_seconds = time.perf_counter() - start
    text = [
        "# Coverage on the Gaussian-mixture preset", "", f"`{command}`; torch threads {args.threads}.", "",
        f"## Every design ({args.repeats} repeats, {design_seconds:.0f} s)", "",
        ("Truth: the exact mixture mean (`exact_expectation`). Pixel-mean coverage is averaged over the 64 "
         "pixels; the header gives each level's binomial SE. `bias ± SE`: mean of estimate − truth over repeats "
         "(pixel mean: averaged over pixels), i.e. the DDIM discretisation bias plus noise; `t`: t-statistic of "
         "the mean standardised error."), "",
        *coverage.format_rows(rows, args.repeats, "model"), "",
    ]
    if args.mf_repeats:
        start = time.perf_counter()
        mf_rows = [
            row for method in ("mlmc", "cv")
            for row in multifidelity.study(sampler, method, args.mf_repeats, args.budget_nfe, args.pilot,
                                           FIDELITIES, batch_size=1024)
        ]
        tolerance, lines = multifidelity.format_rows(mf_rows, args.mf_repeats)
        text += [
            f"## Multi-fidelity ({args.mf_repeats} repeats, {time.perf_counter() - start:.0f} s)", "",
            (f"Fidelities {FIDELITIES}; budget {args.budget_nfe} NFE, pilot {args.pilot} per level; truth the "
             f"exact answer of the fine level's limit; tolerance ±{tolerance:.3f} (3 binomial SE)."), "",
            *lines, "",
        ]
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
