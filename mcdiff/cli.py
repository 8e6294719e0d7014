"""Command line: ``mcdiff estimate``, ``mcdiff multifidelity``, ``mcdiff diagnose`` (and the subcommands
other layers add)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcdiff.designs import DESIGN_NAMES
from mcdiff.diagnostics import diagnose, format_report, load_lpips, save_figures
from mcdiff.functionals import BUILTIN
from mcdiff.multifidelity import METHODS, check_method, estimate_multifidelity
from mcdiff.results import format_levels, format_table, save_result
from mcdiff.runner import estimate
from mcdiff.samplers import DiffusionSampler, GaussianSampler

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


def _add_multifidelity(sub) -> None:
    p = sub.add_parser(
        "multifidelity",
        help="estimate statistics at the finest of several step counts with multilevel Monte Carlo "
        "or a control variate, the cheap samplers run on the same noise",
    )
    p.add_argument("--model", default="gaussian", help=f"model to sample ({', '.join(MODELS)})")
    p.add_argument("--fidelities", type=int, nargs="+", default=[4, 12, 50],
                   help="strictly increasing step counts, coarse to fine (default 4 12 50)")
    p.add_argument("--method", nargs="+", default=["mlmc"], choices=list(METHODS),
                   help="mlmc (telescoping sum) and/or cv (two-fidelity control variate)")
    p.add_argument(
        "--statistics", nargs="+", default=["brightness", "contrast", "centroid"], choices=list(BUILTIN),
        help="the first drives the allocation of evaluations to levels",
    )
    p.add_argument("--designs", nargs="+", default=["mc", "amc", "rqmc"],
                   help=f"one design for all levels ({', '.join(DESIGN_NAMES)}) or one per level joined "
                   "by '/', coarse first, e.g. rqmc/amc/amc")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-nfe", type=int, help="NFE of the final run, allocated over levels (default 20000)")
    budget.add_argument("-n", "--n-evals", type=int, nargs="+", help="evaluations per level instead of a budget")
    p.add_argument("--pilot", type=int, default=64, help="evaluations per level of the pilot run (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("-o", "--output", type=Path, default=Path("mcdiff-multifidelity.nc"),
                   help=".nc or .zarr; with several methods, one file per method (suffix -mlmc, -cv)")
    p.set_defaults(run=_run_multifidelity)


def _run_multifidelity(args) -> None:
    sampler = _load_model(args.model, args.fidelities[-1])
    if args.n_evals is not None:
        budget = None
    else:
        budget = 20000 if args.budget_nfe is None else args.budget_nfe
    designs = [d.split("/") if "/" in d else d for d in args.designs]
    for method in args.method:
        check_method(method, args.fidelities)
    for method in args.method:
        result = estimate_multifidelity(
            sampler,
            statistics=args.statistics,
            fidelities=args.fidelities,
            designs=designs,
            method=method,
            budget_nfe=budget,
            n_evals=args.n_evals,
            pilot=args.pilot,
            seed=args.seed,
            confidence=args.confidence,
            batch_size=args.batch_size,
        )
        output = args.output
        if len(args.method) > 1:
            output = output.with_name(f"{output.stem}-{method}{output.suffix}")
        print(format_table(result))
        print()
        print(format_levels(result))
        print(f"\nwrote {save_result(result, output)}\n")


def _load_diagnose_samplers(model: str, steps: int, ddpm: bool) -> dict:
    """``{"ddim": eta 0, "ddpm": eta 1}`` samplers of ``gaussian`` or a diffusers directory."""
    etas = {"ddim": 0.0, **({"ddpm": 1.0} if ddpm else {})}
    if model == "gaussian":
        return {name: GaussianSampler(num_inference_steps=steps, eta=eta) for name, eta in etas.items()}
    if not Path(model).is_dir():
        raise ValueError(f"--model must be 'gaussian' or a diffusers model directory; {model!r} is neither")
    return {
        name: DiffusionSampler.from_pretrained(model, num_inference_steps=steps, eta=eta)
        for name, eta in etas.items()
    }


def _add_diagnose(sub) -> None:
    p = sub.add_parser(
        "diagnose",
        help="check why antithetic noise works (or not) on a model: pair and trajectory "
        "correlations, affine antisymmetry, diversity",
    )
    p.add_argument("--model", default="gaussian", help="'gaussian' (analytic) or a diffusers model directory")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--n-pairs", type=int, default=64, help="antithetic and independent pairs (64 each)")
    p.add_argument("--probes", type=int, default=8, help="trajectories probed by the antisymmetry test")
    p.add_argument("--timesteps", type=int, nargs="+", help="timesteps for the antisymmetry test")
    p.add_argument(
        "--ddpm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run DDPM (DDIM eta=1, whole noise path negated) beside DDIM (default: yes)",
    )
    p.add_argument(
        "--lpips",
        type=Path,
        help="local LPIPS TorchScript file (see mcdiff.diagnostics.load_lpips); skipped without it",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("-o", "--output", type=Path, default=Path("mcdiff-diagnose"), help="report directory")
    p.set_defaults(run=_run_diagnose)


def _run_diagnose(args) -> None:
    samplers = _load_diagnose_samplers(args.model, args.steps, args.ddpm)
    lpips = load_lpips(args.lpips) if args.lpips is not None else None
    tree = diagnose(
        samplers,
        n_pairs=args.n_pairs,
        seed=args.seed,
        timesteps=args.timesteps,
        n_probes=args.probes,
        lpips=lpips,
        batch_size=args.batch_size,
    )
    tree.attrs["model_source"] = args.model
    args.output.mkdir(parents=True, exist_ok=True)
    report = format_report(tree)
    (args.output / "report.txt").write_text(report + "\n")
    tree.to_netcdf(args.output / "diagnostics.nc")
    figures = save_figures(tree, args.output)
    print(report)
    print(f"\nwrote {args.output / 'report.txt'}, {args.output / 'diagnostics.nc'}, "
          f"{', '.join(f.name for f in figures)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcdiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_estimate(sub)
    _add_multifidelity(sub)
    _add_diagnose(sub)
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
