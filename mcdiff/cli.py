"""Command line: ``mcdiff estimate``, ``mcdiff diagnose`` (and the subcommands other layers add)."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from mcdiff.designs import DESIGN_NAMES
from mcdiff.diagnostics import diagnose, format_report, load_lpips, save_figures
from mcdiff.executors import DaskExecutor
from mcdiff.functionals import BUILTIN
from mcdiff.results import format_table, save_result
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
    p.add_argument(
        "--store", type=Path, help="result store directory: blocks are saved as computed; rerun to resume"
    )
    p.add_argument("--block-size", type=int, help="evaluations per block / Dask task (default: a batch)")
    p.add_argument("--target-ci-width", type=float, help="stop when CI width <= this (doubling n)")
    p.add_argument("--target-rel-width", type=float, help="stop when CI width <= this · |estimate|")
    p.add_argument("--max-evals", type=int, help="budget cap per design for sequential stopping")
    p.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786): run blocks on its workers")
    p.set_defaults(run=_run_estimate)


def _run_estimate(args) -> None:
    model = partial(_load_model, args.model, args.steps)  # a factory: Dask workers build the model
    options = dict(
        statistics=args.statistics,
        designs=args.designs,
        n_evals=args.n_evals,
        seed=args.seed,
        confidence=args.confidence,
        batch_size=args.batch_size,
        store=args.store,
        block_size=args.block_size,
        target_ci_width=args.target_ci_width,
        target_rel_width=args.target_rel_width,
        max_evals=args.max_evals,
    )
    if args.scheduler:
        with DaskExecutor(args.scheduler) as executor:
            result = estimate(model, executor=executor, **options)
    else:
        result = estimate(model, **options)
    print(format_table(result))
    summary = result["summary"]
    if "stopping_rounds" in summary.attrs:
        reached = "reached" if summary.attrs["target_reached"] else "NOT reached"
        print(f"\nsequential stopping: target {reached} after {summary.attrs['stopping_rounds']} rounds, "
              f"n_evals={int(summary['n_evals'][0])}")
    print(f"\nwrote {save_result(result, args.output)}")


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
