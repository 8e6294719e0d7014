"""Command line: ``mcdiff demo``, ``estimate``, ``multifidelity``, ``diagnose``, ``train``, ``bench``."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from mcdiff.atomic import check_directory
from mcdiff.designs import DESIGN_NAMES, SobolRQMC
from mcdiff.diagnostics import diagnose, format_report, load_lpips
from mcdiff.executors import DaskExecutor
from mcdiff.functionals import BUILTIN, check_levels, get_statistic
from mcdiff.inverse import MASKS, InpaintingProblem, make_mask
from mcdiff.models import ANALYTIC, BUNDLED, load_model
from mcdiff.multifidelity import METHODS, check_method, estimate_multifidelity, parse_fidelity
from mcdiff.results import RESULT_SUFFIXES, check_result_path, format_levels, format_table, format_targets, save_result
from mcdiff.runner import DRAWS, DRAWS_LIMIT, estimate
from mcdiff.samplers.dps import check_zeta
from mcdiff.targets import INTERVALS, Quantiles, Spread, parse_exceedance
from mcdiff.samplers.schedulers import SUPPORTED_SCHEDULERS

MODELS = (*ANALYTIC, *BUNDLED)
MODEL_HELP = f"{', '.join(MODELS)}, or a diffusers model directory"
RESULT_HELP = f"result file: {', '.join(RESULT_SUFFIXES)}"


class _RenamedOption(argparse.Action):
    """An option's former name: one line naming the new one, exit status 2."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: error: {option_string} is now {self.new}", file=sys.stderr)
        parser.exit(2)


def _parent(*adders) -> argparse.ArgumentParser:
    """A parent parser of options shared by several sub-commands, each declared once below."""
    parent = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(parent)
    return parent


def _model_options(p) -> None:
    p.add_argument("--model", default="gaussian", help=f"model: {MODEL_HELP}")


def _run_options(p) -> None:
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluations per network call (default 256)")


def _confidence_option(p) -> None:
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")


def _solver_option(p) -> None:
    p.add_argument(
        "--solver", choices=SUPPORTED_SCHEDULERS, metavar="SCHEDULER",
        help="a diffusers scheduler to sample with instead of the default (DDIM; diagnose: DDIM and DDPM): "
        + ", ".join(SUPPORTED_SCHEDULERS),
    )
    p.add_argument("--sampler", action=_RenamedOption, new="--solver")


def _dask_options(p) -> None:
    p.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="Dask scheduler address (tcp://host:8786): run blocks on its workers")
    p.add_argument("--scheduler", action=_RenamedOption, new="--dask-scheduler")


def _store_options(p) -> None:
    p.add_argument(
        "--store", type=Path, help="result store directory: what is computed is saved as it comes; rerun to resume"
    )
    p.add_argument("--block-size", type=int, help="evaluations per block / Dask task (default: a batch)")


@contextmanager
def _executor(address: str | None):
    """A Dask executor on the scheduler at ``address``, or ``None`` (this process)."""
    if not address:
        yield None
        return
    # a lost scheduler is reported in one line (SchedulerLost); the client's own log of it is noise
    logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    with DaskExecutor(address) as executor:
        yield executor


def _add_estimate(sub, parents) -> None:
    p = sub.add_parser(
        "estimate", help="estimate statistics with CIs under several noise designs",
        parents=[parents["model"], parents["run"], parents["confidence"], parents["solver"], parents["dask"],
                 parents["store"]],
    )
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument(
        "--statistics", nargs="+", choices=list(BUILTIN),
        help="default: brightness contrast centroid; with --inpaint, pixel_mean (the posterior mean map)",
    )
    p.add_argument("--designs", nargs="+", default=["mc", "amc", "rqmc"], choices=list(DESIGN_NAMES))
    p.add_argument("-n", "--n-evals", type=int, default=1024, help="evaluations per design")
    p.add_argument("--ddpm", action="store_true", help="ancestral DDPM sampling instead of DDIM (--solver overrides)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (default 0: deterministic)")
    inverse = p.add_argument_group(
        "inverse problem",
        "inpaint a digit from scikit-learn's load_digits with diffusion posterior sampling (DPS); "
        "adds the statistic inpainting_error (MSE and PSNR on the missing pixels)",
    )
    inverse.add_argument("--inpaint", choices=list(MASKS), help="mask: a centred box or random missing pixels")
    inverse.add_argument("--mask-fraction", type=float, help="fraction of pixels missing (default 0.25)")
    inverse.add_argument("--sigma-y", type=float, help="measurement noise on the [-1, 1] scale (default 0.05)")
    inverse.add_argument("--zeta", type=float,
                         help="DPS step size (default 1.0, for tens of steps; 0.5 in the paper at 1000)")
    inverse.add_argument("--ground-truth-index", type=int, help="index of the digit (default 0)")
    inverse.add_argument("--measurement-seed", type=int,
                         help="seed of the measurement noise and the random mask (default 0)")
    p.add_argument("-o", "--output", type=Path, default=Path("mcdiff-result.nc"), help=RESULT_HELP)
    p.add_argument("--draws", choices=list(DRAWS), default="auto",
                   help="where per-evaluation values go: auto (a statistic's in the result when they fit in "
                   f"{DRAWS_LIMIT // 2**20} MiB per design), memory, store (its block files), none")
    targets = p.add_argument_group(
        "targets", "estimands beyond the means of scalar statistics (see mcdiff.targets); printed and saved in /targets"
    )
    targets.add_argument("--quantiles", type=float, nargs="+", metavar="P",
                         help="quantile levels in (0, 1) of every scalar statistic, e.g. 0.05 0.5 0.95")
    targets.add_argument("--exceed", nargs="+", metavar="STAT>VALUE", default=[],
                         help="exceedance probabilities, e.g. 'brightness>0.35' or 'centroid[0]<0.4'")
    targets.add_argument("--spread", action="store_true", help="variance and std of every scalar statistic")
    targets.add_argument("--interval", choices=list(INTERVALS), default="t",
                         help="interval of the exceedances: t (default), or the finite-sample bernstein or betting")
    p.add_argument("--target-ci-width", type=float, help="stop when CI width <= this (doubling n)")
    p.add_argument("--target-rel-width", type=float, help="stop when CI width <= this · |estimate|")
    p.add_argument("--max-evals", type=int, help="budget cap per design for sequential stopping")
    p.add_argument("--stop-interval", choices=list(INTERVALS), default="t",
                   help="interval the stopping rule checks: t (default), or an anytime-valid confidence sequence "
                   "(bernstein, betting) whose interval at the stop covers by construction")
    p.add_argument("--rqmc-grow", choices=["replicates", "points", "adaptive"], default="replicates",
                   help="how rqmc and amc-rqmc grow when stopping doubles the evaluations: add replicates (default), "
                   "extend every replicate's points, or choose at each doubling (SobolRQMC(grow=...))")
    p.set_defaults(run=_run_estimate)


INVERSE_DEFAULTS = {"mask_fraction": 0.25, "sigma_y": 0.05, "zeta": 1.0, "ground_truth_index": 0, "measurement_seed": 0}
"""Defaults of ``mcdiff estimate``'s inverse-problem options, which apply only with ``--inpaint``."""


def _inpainting_problem(args) -> InpaintingProblem | None:
    """The inpainting problem of ``mcdiff estimate --inpaint ...``: a digit, a mask, a measurement.

    ``None`` without ``--inpaint``; then no other inverse-problem option may be given.
    Fills in the options' defaults in ``args``.
    """
    from mcdiff.data import digits

    given = [name for name in INVERSE_DEFAULTS if getattr(args, name) is not None]
    if not args.inpaint:
        if given:
            options = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{options} apply only to an inverse problem: add --inpaint box|random")
        return None
    for name, default in INVERSE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)

    images = digits()
    if not 0 <= args.ground_truth_index < len(images):
        raise ValueError(
            f"--ground-truth-index must be in [0, {len(images) - 1}], got {args.ground_truth_index}"
        )
    truth = (images[args.ground_truth_index] + 1) / 2
    mask = make_mask(args.inpaint, tuple(truth.shape), args.mask_fraction, args.measurement_seed)
    return InpaintingProblem(truth, mask, sigma_y=args.sigma_y, seed=args.measurement_seed)


def _estimate_model(model: str, steps: int, scheduler: str, eta: float, problem=None, zeta: float = 0.0):
    """The sampler of ``mcdiff estimate``, conditioned on ``problem`` by DPS when given."""
    sampler = load_model(model, steps, scheduler=scheduler, eta=eta)
    return sampler if problem is None else problem.dps(sampler, zeta)


def _run_estimate(args) -> None:
    check_result_path(args.output)
    problem = _inpainting_problem(args)
    scheduler = args.solver or ("DDPMScheduler" if args.ddpm else "DDIMScheduler")
    # a factory: Dask workers build the model
    model = partial(_estimate_model, args.model, args.steps, scheduler, args.eta, problem, args.zeta)
    if problem is None:
        statistics = args.statistics or ["brightness", "contrast", "centroid"]
    else:
        check_zeta(args.zeta)
        statistics = [problem.error, *(args.statistics or ["pixel_mean"])]
    options = dict(
        statistics=statistics,
        designs=[SobolRQMC(antithetic=d == "amc-rqmc", grow=args.rqmc_grow) if d.endswith("rqmc") else d
                 for d in args.designs],
        n_evals=args.n_evals,
        seed=args.seed,
        confidence=args.confidence,
        batch_size=args.batch_size,
        store=args.store,
        block_size=args.block_size,
        target_ci_width=args.target_ci_width,
        target_rel_width=args.target_rel_width,
        max_evals=args.max_evals,
        stop_interval=args.stop_interval,
        draws=args.draws,
        targets=_targets(args, statistics),
    )
    with _executor(args.dask_scheduler) as executor:
        result = estimate(model, executor=executor, **options)
    print(format_table(result))
    if "targets" in result.children:
        print()
        print(format_targets(result))
    summary = result["summary"]
    if "stopping_rounds" in summary.attrs:
        reached = "reached" if summary.attrs["target_reached"] else "NOT reached"
        print(f"\nsequential stopping: target {reached} after {summary.attrs['stopping_rounds']} rounds, "
              f"n_evals={int(summary['n_evals'][0])}")
    print(f"\nwrote {save_result(result, args.output)}")


def _targets(args, statistics) -> list:
    """The targets of ``mcdiff estimate``'s options; quantiles and spread of every scalar statistic."""
    exceedances = [parse_exceedance(text, args.interval) for text in args.exceed]
    if not (args.quantiles or args.spread):
        return exceedances
    check_levels(args.quantiles or [0.5])
    scalar = [s.name for s in map(get_statistic, statistics) if s.dims == ()]
    quantiles = [Quantiles(name, args.quantiles) for name in scalar] if args.quantiles else []
    spreads = [Spread(name) for name in scalar] if args.spread else []
    return quantiles + exceedances + spreads


def _add_multifidelity(sub, parents) -> None:
    p = sub.add_parser(
        "multifidelity",
        help="estimate statistics at the finest of several step counts with multilevel Monte Carlo "
        "or a control variate, the cheap samplers run on the same noise",
        parents=[parents["model"], parents["run"], parents["confidence"], parents["dask"], parents["store"]],
    )
    p.add_argument("--fidelities", type=_fidelity, nargs="+", default=[4, 12, 50], metavar="[SOLVER:]STEPS",
                   help="levels coarse to fine (default 4 12 50): step counts of DDIM, strictly increasing, or "
                   "a diffusers scheduler and its step count, e.g. UniPCMultistepScheduler:6 DDIMScheduler:50; "
                   "deterministic solvers only, ordered by strictly increasing NFE per sample")
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
    p.add_argument("-o", "--output", type=Path, default=Path("mcdiff-multifidelity.nc"),
                   help=f"{RESULT_HELP}; with several methods, one file per method (suffix -mlmc, -cv) "
                   "and one store per method (STORE/mlmc, STORE/cv)")
    p.set_defaults(run=_run_multifidelity)


def _fidelity(text: str):
    """An ``--fidelities`` entry: a step count, or a parsed ``SOLVER:STEPS``."""
    try:
        return int(text) if text.strip().isdigit() else parse_fidelity(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _run_multifidelity(args) -> None:
    outputs = {method: args.output for method in args.method}
    if len(args.method) > 1:
        outputs = {m: args.output.with_name(f"{args.output.stem}-{m}{args.output.suffix}") for m in args.method}
    for output in outputs.values():
        check_result_path(output)
    # a factory: Dask workers build the model
    model = partial(load_model, args.model, parse_fidelity(args.fidelities[-1]).steps)
    if args.n_evals is not None:
        budget = None
    else:
        budget = 20000 if args.budget_nfe is None else args.budget_nfe
    designs = [d.split("/") if "/" in d else d for d in args.designs]
    for method in args.method:
        check_method(method, args.fidelities)
    stores = {method: args.store for method in args.method}
    if args.store is not None and len(args.method) > 1:
        stores = {method: args.store / method for method in args.method}
    for method in args.method:
        with _executor(args.dask_scheduler) as executor:
            result = estimate_multifidelity(
                model,
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
                store=stores[method],
                executor=executor,
                block_size=args.block_size,
            )
        print(format_table(result))
        print()
        print(format_levels(result))
        print(f"\nwrote {save_result(result, outputs[method])}\n")


def _diagnose_samplers(model: str, steps: int, ddpm: bool, solver: str | None = None) -> dict:
    """``{"ddim": DDIM, "ddpm": ancestral DDPM}`` samplers of one model, or ``{solver: that scheduler}``."""
    if solver is not None:
        return {solver: load_model(model, steps, scheduler=solver)}
    schedulers = {"ddim": "DDIMScheduler", **({"ddpm": "DDPMScheduler"} if ddpm else {})}
    return {name: load_model(model, steps, scheduler=scheduler) for name, scheduler in schedulers.items()}


def _add_diagnose(sub, parents) -> None:
    p = sub.add_parser(
        "diagnose",
        help="check why antithetic noise works (or not) on a model: pair and trajectory "
        "correlations, affine antisymmetry, diversity",
        parents=[parents["model"], parents["run"], parents["solver"]],
    )
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--n-pairs", type=int, default=64, help="antithetic and independent pairs (64 each)")
    p.add_argument("--probes", type=int, default=8, help="trajectories probed by the antisymmetry test")
    p.add_argument("--timesteps", type=int, nargs="+", help="timesteps for the antisymmetry test")
    p.add_argument(
        "--ddpm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run DDPM (whole noise path negated) beside DDIM (default: yes)",
    )
    p.add_argument(
        "--lpips",
        type=Path,
        help="local LPIPS TorchScript file (see mcdiff.diagnostics.load_lpips); skipped without it",
    )
    p.add_argument("--store", type=Path,
                   help="store directory for the pairs' images (one store per sampler inside); rerun to resume")
    p.add_argument("-o", "--output", type=Path, default=Path("mcdiff-diagnose"), help="report directory")
    p.set_defaults(run=_run_diagnose)


def _check_report_directory(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` is a directory, or can be made one, that this process can write."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot write the report directory {str(path)!r}: it is a file")
    existing = next(p for p in (path, *path.parents) if p.exists())
    check_directory(existing, f"report directory {str(path)!r}")


def _run_diagnose(args) -> None:
    from mcdiff.plots import save_figures

    _check_report_directory(args.output)
    samplers = _diagnose_samplers(args.model, args.steps, args.ddpm, args.solver)
    lpips = load_lpips(args.lpips) if args.lpips is not None else None
    tree = diagnose(
        samplers,
        n_pairs=args.n_pairs,
        seed=args.seed,
        timesteps=args.timesteps,
        n_probes=args.probes,
        lpips=lpips,
        batch_size=args.batch_size,
        store=args.store,
    )
    tree.attrs["model_source"] = args.model
    args.output.mkdir(parents=True, exist_ok=True)
    report = format_report(tree)
    (args.output / "report.txt").write_text(report + "\n")
    save_result(tree, args.output / "diagnostics.nc")
    figures = save_figures(tree, args.output)
    print(report)
    print(f"\nwrote {args.output / 'report.txt'}, {args.output / 'diagnostics.nc'}, "
          f"{', '.join(f.name for f in figures)}")


DEMO_STATISTICS = ("brightness", "contrast", "centroid", "pixel_mean")
DEMO_DESIGNS = ("mc", "amc", "rqmc")


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job on a bundled model: MC, antithetic and RQMC CIs at equal evaluations",
    )
    p.add_argument("--model", default="digits", choices=BUNDLED, help="bundled model (default digits)")
    p.add_argument("-n", "--n-evals", type=int, default=512, help="evaluations per design (16 * 2^m)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=8, help="antithetic pairs shown in the figure")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: robust on a shared machine)")
    p.add_argument("-o", "--output", type=Path, default=Path("mcdiff-demo.nc"), help=RESULT_HELP)
    p.add_argument("--figure", type=Path, default=Path("mcdiff-demo.png"))
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> None:
    import time

    import torch

    from mcdiff.runner import sample_images
    from mcdiff.designs import Antithetic
    from mcdiff.plots import demo_figure

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    if args.pairs < 1:
        raise ValueError(f"--pairs must be >= 1, got {args.pairs}")
    check_result_path(args.output)
    check_directory(args.figure.parent, f"figure {str(args.figure)!r}")
    sampler = load_model(args.model, args.steps)
    result = estimate(sampler, DEMO_STATISTICS, DEMO_DESIGNS, n_evals=args.n_evals, seed=args.seed)
    print(
        f"bundled {args.model} model, DDIM {args.steps} steps: {args.n_evals} evaluations per design "
        f"({args.n_evals * sampler.nfe} network evaluations), seed {args.seed}\n"
    )
    print(format_table(result))
    shown = 2 * args.pairs
    pairs = sample_images(sampler, Antithetic(), max(4, shown), args.seed, shown, stop=shown)
    demo_figure(result, pairs).savefig(args.figure, dpi=120)
    print(f"\nwrote {save_result(result, args.output)} and {args.figure} in {time.perf_counter() - start:.1f} s")


def _add_train(sub) -> None:
    from mcdiff.data import DATASETS
    from mcdiff.training import OBJECTIVES

    p = sub.add_parser("train", help="train a small diffusion model (DDPM objective, EMA, resumable)")
    p.add_argument("--data", default="digits", choices=DATASETS, help="training data set (default digits)")
    p.add_argument("--size", type=int, default=None, help="image side (default: 8 digits, 32 photos, 16 synthetic)")
    p.add_argument("--objective", default="epsilon", choices=OBJECTIVES)
    p.add_argument("--offset-weight", type=float, default=0.1, help="w of the offset objectives")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64], help="channels per U-Net level")
    p.add_argument(
        "--attention-levels", type=int, nargs="*", default=[], help="U-Net levels with self-attention (1: 16x16 of 32x32)"
    )
    p.add_argument("--layers-per-block", type=int, default=1, help="ResNet layers per U-Net level")
    p.add_argument("--snapshots", type=int, nargs="*", default=[], help="steps after which the EMA model is also saved")
    p.add_argument("--init", type=Path, default=None, help="a trained model whose weights start this run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest on a shared machine)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output model directory")
    p.set_defaults(run=_run_train)


def _train_command(args) -> str:
    """The canonical ``mcdiff train`` command line that reproduces ``args``."""
    size = [] if args.size is None else ["--size", str(args.size)]
    attention = ["--attention-levels", *map(str, args.attention_levels)] if args.attention_levels else []
    layers = ["--layers-per-block", str(args.layers_per_block)] if args.layers_per_block != 1 else []
    snapshots = ["--snapshots", *map(str, args.snapshots)] if args.snapshots else []
    init = [] if args.init is None else ["--init", str(args.init)]
    parts = [
        "mcdiff", "train", "--data", args.data, *size, "--objective", args.objective,
        "--offset-weight", repr(args.offset_weight), "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--lr", repr(args.lr), "--ema-decay", repr(args.ema_decay),
        "--channels", *map(str, args.channels), *attention, *layers, *snapshots, *init, "--seed", str(args.seed),
        "--threads", str(args.threads), "-o", str(args.output),
    ]  # fmt: skip
    return " ".join(parts)


def _run_train(args) -> None:
    import torch

    from mcdiff.data import load_dataset
    from mcdiff.training import train

    torch.set_num_threads(args.threads)
    path = train(
        load_dataset(args.data, args.size, args.seed),
        args.output,
        objective=args.objective,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        ema_decay=args.ema_decay,
        offset_weight=args.offset_weight,
        seed=args.seed,
        block_out_channels=args.channels,
        attention_levels=args.attention_levels,
        layers_per_block=args.layers_per_block,
        checkpoint_every=args.checkpoint_every,
        snapshot_steps=args.snapshots,
        init_from=args.init,
        progress=True,
        metadata={"command": _train_command(args), "dataset": args.data},
    )
    print(f"wrote {path}")


CHECKOUT = Path(__file__).resolve().parents[1]
"""Where an editable install's source checkout (with ``benchmarks/``) would be."""


def find_run_all(start: Path, checkout: Path = CHECKOUT) -> Path:
    """``benchmarks/run_all.py`` of the source checkout holding ``start``, else of ``checkout``.

    The benchmarks live beside the package in the repository, not inside it, so ``mcdiff
    bench`` needs a checkout: the working directory's (or one of its parents'), or the one an
    editable install points to.
    """
    start = start.resolve()
    for root in (start, *start.parents, checkout):
        script = root / "benchmarks" / "run_all.py"
        if script.is_file():
            return script
    raise ValueError(
        "mcdiff bench runs the benchmarks of a source checkout (benchmarks/run_all.py), and none was "
        f"found above {start} or at {checkout}: clone the repository and run it there"
    )


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="run every benchmark of a source checkout (benchmarks/run_all.py)")
    p.add_argument("--quick", action="store_true", help="small sizes, a few minutes in all")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    p.add_argument("--list", action="store_true", help="list the benchmarks and their commands, run nothing")
    p.add_argument("--output", type=Path, help="directory of tables and summary")
    p.set_defaults(run=_run_bench)


def _run_bench(args) -> int:
    forwarded = [
        *(["--quick"] if args.quick else []),
        *(["--only", *args.only] if args.only else []),
        *(["--list"] if args.list else []),
        *(["--output", str(args.output)] if args.output else []),
    ]
    return subprocess.run([sys.executable, str(find_run_all(Path.cwd())), *forwarded], check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcdiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    parents = {
        "model": _parent(_model_options),
        "run": _parent(_run_options),
        "confidence": _parent(_confidence_option),
        "solver": _parent(_solver_option),
        "dask": _parent(_dask_options),
        "store": _parent(_store_options),
    }
    _add_demo(sub)
    _add_estimate(sub, parents)
    _add_multifidelity(sub, parents)
    _add_diagnose(sub, parents)
    _add_train(sub)
    _add_bench(sub)
    return parser


def error_message(err: Exception) -> str:
    """The line ``main`` prints for an error the user can fix: its message, an OS error's text and file."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename!r}" if err.filename else err.strerror
    return str(err)


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad input and what the system refuses (a full disk, a missing file, a lost
    scheduler: ``ValueError`` and ``OSError``) are one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except (ValueError, OSError) as err:
        print(f"mcdiff {args.command}: error: {error_message(err)}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
