"""Command line: ``mcdiff estimate`` (and the subcommands other layers add)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcdiff.designs import DESIGN_NAMES
from mcdiff.functionals import BUILTIN
from mcdiff.results import format_table, save_result
from mcdiff.runner import estimate
from mcdiff.samplers import GaussianSampler

MODELS = ("gaussian",)


def _load_model(name: str, steps: int):
    if name == "gaussian":
        return GaussianSampler(num_inference_steps=steps)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def _add_estimate(sub) -> None:
    p = sub.add_parser("estimate", help="estimate statistics with CIs under several noise designs")
    p.add_argument("--model", default="gaussian", help=f"model to sample ({', '.join(MODELS)})")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument(
        "--statistics", nargs="+", default=["brightness", "contrast", "centroid"], choices=list(BUILTIN)
    )
    p.add_argument("--designs", nargs="+", default=["mc", "amc", "rqmc"], choices=list(DESIGN_NAMES))
    p.add_argument("-n", "--n-evals", type=int, default=1024, help="evaluations per design")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("-o", "--output", type=Path, default=Path("mcdiff-result.nc"), help=".nc or .zarr")
    p.set_defaults(run=_run_estimate)


def _run_estimate(args) -> None:
    sampler = _load_model(args.model, args.steps)
    result = estimate(
        sampler,
        statistics=args.statistics,
        designs=args.designs,
        n_evals=args.n_evals,
        seed=args.seed,
        confidence=args.confidence,
        batch_size=args.batch_size,
    )
    print(format_table(result))
    print(f"\nwrote {save_result(result, args.output)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcdiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_estimate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ValueError as err:
        print(f"mcdiff {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
