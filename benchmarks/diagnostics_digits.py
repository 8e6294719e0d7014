"""Why antithetic noise works on the bundled digits model: the diagnostics table.

Runs :func:`mcdiff.diagnostics.diagnose` under DDIM and ancestral DDPM (whole noise path
negated) and writes ``diagnostics_<model>.md`` (the command that made it and the
tables: PN vs RR pair correlation raw and centred, SSIM, trajectory correlation and the
affine-antisymmetry residual by timestep), the PNG figures and ``diagnostics.nc``.

    python benchmarks/diagnostics_digits.py                     # the bundled digits model
    python benchmarks/diagnostics_digits.py --model gaussian    # the analytic model
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import mcdiff
from mcdiff.diagnostics import diagnose, format_report
from mcdiff.plots import save_figures

SCHEDULERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--n-pairs", type=int, default=128)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    command = "python benchmarks/diagnostics_digits.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    start = time.perf_counter()
    samplers = {n: mcdiff.load_model(args.model, args.steps, scheduler=s) for n, s in SCHEDULERS.items()}
    tree = diagnose(samplers, args.n_pairs, args.seed, n_probes=args.probes)
    seconds = time.perf_counter() - start
    name = Path(args.model).name
    directory = args.output / f"diagnostics_{name}"
    figures = save_figures(tree, directory)
    tree.to_netcdf(directory / "diagnostics.nc")
    report = format_report(tree)
    text = (
        f"# Diagnostics: {name}\n\nMade by `{command.strip()}` in {seconds:.0f} s "
        f"(mcdiff {tree.attrs['mcdiff_version']}). Figures: "
        + ", ".join(f"`{f.relative_to(args.output)}`" for f in figures)
        + f".\n\n```\n{report}\n```\n"
    )
    table = args.output / f"diagnostics_{name}.md"
    table.write_text(text)
    print(report)
    print(f"\nwrote {table} and {directory}/")


if __name__ == "__main__":
    main()
