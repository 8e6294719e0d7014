"""Multi-fidelity estimation: the same noise through one network at several solvers and step counts.

A cheap few-step sampler and an expensive many-step one, fed the same noise, give strongly
coupled outputs, so the cheap one carries most of the information at a fraction of the cost
(counted in network function evaluations, NFE). A fidelity is a step count of the sampler's
own solver (``12``) or a solver and a step count (``("UniPCMultistepScheduler", 6)`` or
``"UniPCMultistepScheduler:6"``): a high-order solver at a few steps lands closer to the
converged ODE solution on the same ``x_T`` than a few-step DDIM, so it tracks the fine
level more closely. Fidelities are ordered coarse to fine by strictly increasing NFE per
sample ``c_0 < ... < c_L`` (counted by each level's dry run, ``2T - 1`` for Heun); with
``f_l`` the statistic of the level-``l`` sample:

- ``"mlmc"`` (multilevel Monte Carlo): ``E f_L = E f_0 + sum_{l>=1} E[f_l - f_{l-1}]``. Level
  ``l`` evaluates ``f_l`` and ``f_{l-1}`` on the *same* noise addresses of its own stream;
  levels use independent streams (:func:`~mcdiff.designs.stream_seed`), so their variances add.
- ``"cv"`` (two-fidelity control variate): ``E f_1 = beta E f_0 + E[f_1 - beta f_0]``: level 1
  runs the coupled pair, level 0 the cheap sampler alone on an independent stream, so the
  interval includes the variance of the estimate of ``E f_0``. ``beta`` is the regression slope
  of ``f_1`` on ``f_0`` over the evaluations of a pilot run independent of both, so the
  estimator is unbiased given ``beta`` (see :func:`~mcdiff.estimators.control_variate_coefficient`
  for why per evaluation, not per group).

Each level may use any design (MC, antithetic, RQMC, antithetic RQMC); its mean and standard
error come from :func:`~mcdiff.estimators.summarize` over that design's groups, and
:func:`~mcdiff.estimators.combine_levels` sums the levels with a Welch–Satterthwaite
t-interval. With a budget, the evaluations per level follow Giles' allocation
(:func:`~mcdiff.estimators.level_allocation`) from pilot variances and NFE costs
``C_0 = c_0``, ``C_l = c_l + c_{l-1}``.

Only deterministic solvers are supported (DDIM with eta = 0, DPM-Solver++ 2M, UniPC, DEIS,
Euler, Heun, ...: each consumes ``x_T`` alone), so every level sees exactly the same noise
address. A stochastic solver injects noise at every step, as many draws as it has steps, so
its levels would consume different noise and the coupling of ``f_l`` and ``f_{l-1}`` is not
defined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from mcdiff.blocks import Job
from mcdiff.designs import Design, get_design, stream_seed
from mcdiff.estimators import (
    combine_levels,
    control_variate_coefficient,
    level_allocation,
    summarize,
    summarize_moments,
)
from mcdiff.executors import DaskExecutor, LocalExecutor, ModelInfo, check_model
from mcdiff.functionals import Statistic, get_statistic, statistic_identity
from mcdiff.noise import GENERATOR
from mcdiff.results import CombinationEstimate, build_multifidelity_result, mcdiff_version
from mcdiff.runner import Evaluations, check_block_size, progress_bar, run_guarded
from mcdiff.store import ResultStore
from mcdiff.samplers.base import Sampler
from mcdiff.samplers.schedulers import scheduler_class
from mcdiff.validation import check_batch_size, check_confidence, check_seed, check_unique_names, is_integer

METHODS = ("mlmc", "cv")
"""Multi-fidelity estimators: multilevel Monte Carlo and the two-fidelity control variate."""

_FINAL, _PILOT = 0, 1
"""Stream keys of the final and the pilot evaluations (with the level index)."""


@dataclass(frozen=True)
class Fidelity:
    """One level's sampler: ``steps`` steps of ``solver``, or of the sampler's own solver (``None``).

    ``solver`` is a diffusers scheduler class name (``"UniPCMultistepScheduler"``), built from
    the sampler's scheduler configuration by its ``with_scheduler``.
    """

    steps: int
    solver: str | None = None

    def __str__(self) -> str:
        """``"12"`` or ``"UniPCMultistepScheduler:6"`` (the CLI's form)."""
        return str(self.steps) if self.solver is None else f"{self.solver}:{self.steps}"

    def describe(self) -> str:
        """``"12 steps"`` or ``"UniPCMultistepScheduler, 6 steps"`` (for messages)."""
        return f"{self.steps} steps" if self.solver is None else f"{self.solver}, {self.steps} steps"


_FIDELITY_FORMS = (
    "a step count (12), a (solver, steps) pair ((\"UniPCMultistepScheduler\", 6)) or a string "
    "\"UniPCMultistepScheduler:6\""
)


def parse_fidelity(entry: int | str | tuple[str, int] | Fidelity) -> Fidelity:
    """A :class:`Fidelity` from a step count, a ``(solver, steps)`` pair or ``"solver:steps"``.

    ``steps`` must be a positive integer; ``solver`` a diffusers scheduler class name with a
    ``step()`` (:func:`~mcdiff.samplers.schedulers.scheduler_class`), checked here. Whether the
    solver is deterministic is known once the level's sampler is built
    (:func:`fidelity_samplers`).
    """
    if isinstance(entry, Fidelity):
        solver, steps = entry.solver, entry.steps
    elif is_integer(entry):
        solver, steps = None, entry
    elif isinstance(entry, str):
        solver, _, count = entry.rpartition(":")
        if not count.strip().isdigit():
            raise ValueError(f"fidelity {entry!r} is not {_FIDELITY_FORMS}")
        solver, steps = (solver.strip() or None), int(count)
    elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str) and is_integer(entry[1]):
        solver, steps = entry
    else:
        raise ValueError(f"fidelity {entry!r} is not {_FIDELITY_FORMS}")
    if steps < 1:
        raise ValueError(f"fidelity {entry!r}: the step count must be a positive integer, got {steps}")
    if solver is not None:
        scheduler_class(solver)  # raises, naming the supported schedulers
    return Fidelity(int(steps), solver)


def check_fidelities(fidelities: Sequence[int | str | tuple[str, int] | Fidelity]) -> tuple[Fidelity, ...]:
    """At least two parsed fidelities (see :func:`parse_fidelity`), coarse to fine.

    Plain step counts must be strictly increasing positive integers, as before solvers could
    differ; the order of mixed fidelities (by strictly increasing NFE) is checked by
    :func:`fidelity_samplers`, which counts each level's NFE.
    """
    entries = None if isinstance(fidelities, (str, bytes)) or not isinstance(fidelities, Iterable) else list(fidelities)
    if entries is None or len(entries) < 2:
        raise ValueError(
            f"fidelities must be at least two integer step counts, e.g. [4, 12, 50], or levels with a solver, "
            f"e.g. [(\"UniPCMultistepScheduler\", 6), 50]; got {fidelities!r}"
        )
    if all(is_integer(e) for e in entries) and (entries[0] < 1 or any(b <= a for a, b in pairwise(entries))):
        raise ValueError(
            f"fidelities must be strictly increasing positive step counts (coarse to fine), got {[int(e) for e in entries]}"
        )
    return tuple(parse_fidelity(e) for e in entries)


def _listing(fidelities: Sequence) -> str:
    """``"[4, 12, 50]"`` or ``"[UniPCMultistepScheduler:6, 50]"``."""
    return "[" + ", ".join(str(parse_fidelity(f)) for f in fidelities) + "]"


def check_method(method: str, fidelities: Sequence) -> str:
    """Return ``method`` if it is in :data:`METHODS` and fits the number of fidelities."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "cv" and len(fidelities) != 2:
        raise ValueError(
            f"method 'cv' is a two-fidelity control variate: give 2 fidelities, got {_listing(fidelities)}"
        )
    return method


def solver_name(sampler: Sampler) -> str:
    """The class name of ``sampler``'s scheduler, or of the sampler itself when it has none."""
    return type(getattr(sampler, "scheduler", sampler)).__name__


def fidelity_samplers(sampler: Sampler, fidelities: Sequence) -> list[Sampler]:
    """Copies of ``sampler`` at each fidelity, checked to consume the same noise and to cost more in turn.

    A plain step count calls ``sampler.with_steps(steps)``, a level with a solver
    ``sampler.with_scheduler(solver, steps)``. Every level must be deterministic (declare the
    same noise, ``x_T`` alone for a diffusion sampler) and the NFE per sample must strictly
    increase from the coarsest level to the finest.
    """
    levels = check_fidelities(fidelities)
    samplers = []
    for fidelity in levels:
        method = "with_steps" if fidelity.solver is None else "with_scheduler"
        rebuild = getattr(sampler, method, None)
        if not callable(rebuild):
            what = "step count" if fidelity.solver is None else "solver"
            signature = "(num_inference_steps)" if fidelity.solver is None else "(scheduler, num_inference_steps)"
            raise ValueError(
                f"sampler {type(sampler).__name__} cannot change its {what}: multi-fidelity estimation "
                f"needs a {method}{signature} method returning a copy (as DiffusionSampler has)"
            )
        samplers.append(rebuild(fidelity.steps) if fidelity.solver is None else rebuild(fidelity.solver, fidelity.steps))
    specs = [dict(s.noise_spec) for s in samplers]
    stochastic = [str(f) for f, s in zip(levels, samplers) if getattr(s, "stochastic", False)]
    if stochastic or any(spec != specs[0] for spec in specs):
        raise ValueError(
            f"the sampler consumes different noise at different fidelities ({specs[0]} at {levels[0]}, "
            f"{specs[-1]} at {levels[-1]}; stochastic levels: {stochastic or 'none'}): a stochastic sampler "
            "(eta > 0, DDPM, ancestral or SDE solvers) injects one noise tensor per step, so its levels cannot "
            "share noise; use a deterministic sampler (DDIM, eta=0, or DPM-Solver++ 2M, UniPC, DEIS)"
        )
    nfe = [int(s.nfe) for s in samplers]
    if any(b <= a for a, b in pairwise(nfe)):
        raise ValueError(
            "fidelities must be ordered coarse to fine by strictly increasing NFE per sample, got "
            + ", ".join(f"{f} ({n} NFE)" for f, n in zip(levels, nfe))
        )
    return samplers


def _resolve_combinations(designs, n_levels: int) -> list[tuple[str, list[Design]]]:
    """``[(label, [design of each level])]`` from names/designs or per-level sequences."""
    combos = []
    for entry in designs:
        if isinstance(entry, (str, Design)):
            level_designs = [get_design(entry)] * n_levels
        else:
            level_designs = [get_design(d) for d in entry]
            if len(level_designs) != n_levels:
                raise ValueError(
                    f"design combination {[d.name for d in level_designs]} has {len(level_designs)} entries "
                    f"for {n_levels} levels: give one design per level, or one name for all"
                )
        names = [d.name for d in level_designs]
        combos.append(("/".join(names) if len(set(names)) > 1 else names[0], level_designs))
    return combos


def _check_level_n(design: Design, n: int, level: int, fidelity: Fidelity, what: str) -> None:
    try:
        design.check_n(n)
    except ValueError as err:
        raise ValueError(
            f"{what}: level {level} ({fidelity.describe()}, design {design.name!r}) cannot use it: {err}"
        ) from None


class _CoupledSampler(Sampler):
    """Two fidelities of one sampler on the same noise: images ``(B, 2C, H, W)``, fine first.

    One call draws each address's noise once and feeds it to both, so the two fidelities of a
    level can never see different addresses.
    """

    def __init__(self, fine: Sampler, coarse: Sampler):
        self.fine, self.coarse = fine, coarse
        channels, height, width = fine.image_shape
        self.image_shape = (2 * channels, height, width)
        self.nfe = fine.nfe + coarse.nfe
        self.device, self.dtype = fine.device, fine.dtype

    @property
    def noise_spec(self) -> dict[str, tuple[int, ...]]:
        return self.fine.noise_spec

    def sample(self, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.fine(noise), self.coarse(noise)], dim=1)


@dataclass(frozen=True)
class LevelSampler:
    """The model variant of one level (:class:`~mcdiff.blocks.Job`): fidelity ``level`` alone, or
    coupled with the one below it (``coupled``), built from the base sampler where blocks run."""

    fidelities: tuple[Fidelity, ...]
    level: int
    coupled: bool

    def __call__(self, sampler: Sampler) -> Sampler:
        samplers = fidelity_samplers(sampler, self.fidelities)
        if not self.coupled:
            return samplers[self.level]
        return _CoupledSampler(samplers[self.level], samplers[self.level - 1])


@dataclass(frozen=True)
class _LevelFacts:
    """What the estimator needs to know of the levels, asked where the model lives."""

    fidelities: tuple[Fidelity, ...]

    def __call__(self, sampler: Sampler) -> dict:
        samplers = fidelity_samplers(sampler, self.fidelities)
        return {
            "sample_nfe": [int(s.nfe) for s in samplers],
            "solvers": [solver_name(s) for s in samplers],
            "settings": dict(samplers[-1].describe()),
        }


def _on_channels(stat: Statistic, part: str, channels: int) -> Statistic:
    """``stat`` of the fine (first ``channels``) or coarse (last) half of coupled images."""
    window = slice(0, channels) if part == "fine" else slice(channels, 2 * channels)
    return Statistic(f"{part}:{stat.name}", lambda images: stat(images[:, window]), stat.dims, stat.coords)


def _level_statistic(stat: Statistic, beta: np.ndarray, channels: int) -> Statistic:
    """The level values ``f_l - beta f_{l-1}`` of coupled images, named as ``stat``."""
    beta = np.asarray(beta, dtype=np.float64)

    def values(images):
        return stat(images[:, :channels]) - beta * stat(images[:, channels:])

    return Statistic(stat.name, values, stat.dims, stat.coords)


def estimate_multifidelity(
    sampler: Sampler,
    statistics: Sequence[str | Statistic | Callable] = ("brightness",),
    fidelities: Sequence[int] = (4, 12, 50),
    designs: Sequence[str | Design | Sequence[str | Design]] = ("mc", "amc", "rqmc"),
    method: str = "mlmc",
    budget_nfe: int | None = None,
    n_evals: Sequence[int] | None = None,
    pilot: int = 64,
    seed: int = 0,
    confidence: float = 0.95,
    batch_size: int = 256,
    progress: bool | None = None,
    *,
    store: str | Path | None = None,
    executor: LocalExecutor | DaskExecutor | None = None,
    block_size: int | None = None,
) -> xr.DataTree:
    """Estimate ``E[f(G_L(z))]`` at the finest fidelity with a multi-fidelity estimator.

    Every evaluation runs through the runner's loop (:class:`~mcdiff.runner.Evaluations`): one
    progress bar, the store and its resume, the Dask executor, values accumulated in address
    order, so the result is the same bit for bit locally, on Dask and after a resume.

    Parameters
    ----------
    sampler : Sampler or factory
        A deterministic sampler with ``with_steps`` (e.g. DDIM with ``eta=0``), and
        ``with_scheduler`` for levels with a solver of their own (as
        :class:`~mcdiff.samplers.diffusion.DiffusionSampler` has); its own step count is not used.
        A picklable factory that builds it for :class:`~mcdiff.executors.DaskExecutor`.
    statistics : sequence
        As for :func:`~mcdiff.runner.estimate`. The first one drives the allocation (its
        pilot variances averaged over its components).
    fidelities : sequence
        Levels coarse to fine, exactly two for ``"cv"``: step counts of the sampler's own
        solver (strictly increasing, ``[12, 50]``) or levels with a solver,
        ``[("UniPCMultistepScheduler", 6), ("DDIMScheduler", 50)]`` or
        ``["UniPCMultistepScheduler:6", 50]`` (see :func:`parse_fidelity`), ordered by strictly
        increasing NFE per sample.
    designs : sequence
        Design combinations: a design (name or object) used on every level, or a sequence
        of one design per level (coarse first), e.g. ``["amc", ("rqmc", "amc", "amc")]``.
    method : {"mlmc", "cv"}
        Multilevel Monte Carlo or the two-fidelity control variate (see the module).
    budget_nfe : int, optional
        NFE of the final run, split over levels by Giles' allocation from a pilot and rounded
        to each design's allowed counts, never below ``pilot`` evaluations per level: a level
        with very few groups gets an unreliable variance and, since antithetic pair means are
        skewed, a t-interval that covers too rarely. The pilot's NFE come on top.
    n_evals : sequence of int, optional
        Evaluations per level instead of ``budget_nfe`` (exactly one of the two).
    pilot : int
        Evaluations per level of the pilot run (independent stream) that gives the allocation
        and ``beta``; run only when needed (a budget, or ``"cv"``).
    seed : int
        Level ``l`` of the final run draws its noise with ``stream_seed(seed, 0, l)``, of the
        pilot with ``stream_seed(seed, 1, l)``.
    confidence : float
        Level of the intervals, in (0, 1).
    batch_size : int
        Evaluations per sampler call; rounded down to whole pairs.
    progress : bool, optional
        Show a progress bar; by default only when stderr is a terminal.
    store : path, optional
        Directory of a :class:`~mcdiff.store.ResultStore` for the pilot's and the levels'
        evaluations; a rerun with the same store resumes (a store of another run is refused).
    executor : LocalExecutor or DaskExecutor, optional
        Where blocks run; by default in this process.
    block_size : int, optional
        Evaluations per block, as for :func:`~mcdiff.runner.estimate`.

    Returns
    -------
    xarray.DataTree
        ``/summary`` (one row ``"{method}+{design}"`` per combination, fields
        :data:`~mcdiff.estimators.SUMMARY_FIELDS`, ``n_evals``, ``nfe``, ``pilot_nfe``) and
        ``/levels`` (per level: solver, steps, NFE per sample; per combination and level:
        ``n_evals``, NFE, mean, standard error,
        variances, weight and ``beta``), see :func:`~mcdiff.results.build_multifidelity_result`.

    Examples
    --------
    >>> import mcdiff
    >>> model = mcdiff.GaussianSampler(output="probit")
    >>> result = mcdiff.estimate_multifidelity(model, ["brightness"], fidelities=[2, 8], designs=["amc"],
    ...                                        n_evals=[64, 16], progress=False)
    >>> int(result["summary"]["nfe"].sel(design="mlmc+amc"))
    288
    """
    check_model(sampler)
    seed = check_seed(seed)
    confidence = check_confidence(confidence)
    levels = check_fidelities(fidelities)
    check_method(method, levels)
    if (budget_nfe is None) == (n_evals is None):
        raise ValueError("give exactly one of budget_nfe (allocated from a pilot) and n_evals (per level)")
    stats = [get_statistic(s) for s in statistics]
    check_unique_names("statistic", [s.name for s in stats])
    check_block_size(block_size)
    n_levels = len(levels)
    combos = _resolve_combinations(designs, n_levels)
    labels = [f"{method}+{label}" for label, _ in combos]
    check_unique_names("design combination", labels)
    executor = LocalExecutor() if executor is None else executor
    info = executor.describe(sampler)
    facts = executor.inspect(sampler, _LevelFacts(levels))
    sample_nfe = facts["sample_nfe"]
    costs = np.array([sample_nfe[0]] + [a + b for a, b in pairwise(sample_nfe)], dtype=float)
    if budget_nfe is not None:
        pilot_levels = tuple(range(n_levels))
    else:
        pilot_levels = (1,) if method == "cv" else ()
    for label, level_designs in combos:
        for level, design in enumerate(level_designs):
            batch_size = check_batch_size(batch_size, design)
            if n_evals is not None:
                if len(n_evals) != n_levels:
                    raise ValueError(f"n_evals needs one count per level ({n_levels}), got {list(n_evals)}")
                _check_level_n(design, n_evals[level], level, levels[level], f"n_evals={n_evals[level]}")
            if level in pilot_levels:
                _check_level_n(design, pilot, level, levels[level], f"pilot={pilot} is too few evaluations")
    minimum = pilot * costs.sum()
    if budget_nfe is not None and (not is_integer(budget_nfe) or budget_nfe < minimum):
        raise ValueError(
            f"budget_nfe={budget_nfe!r} is too small: every level gets at least the pilot's {pilot} evaluations, "
            f"{minimum:.0f} NFE at costs {costs.tolist()} per evaluation"
        )
    inputs = {
        "method": method,
        "fidelities": [str(f) for f in levels],
        "combinations": {label: [repr(d) for d in ds] for label, (_, ds) in zip(labels, combos)},
        "budget_nfe": budget_nfe,
        "n_evals": None if n_evals is None else [int(n) for n in n_evals],
        "pilot": pilot,
    }
    plan = _Plan(levels, stats, seed, info.image_shape, costs, confidence)
    with (
        ResultStore.open(store, _fingerprint(info, seed, inputs, stats)) if store is not None else nullcontext() as results,
        progress_bar(progress, "mcdiff multifidelity") as bar,
    ):
        loop = Evaluations(sampler, executor, batch_size, block_size, results, "none", bar)
        pilots = [
            {level: plan.job(label, level, design, pilot, _PILOT, loop) for level, design in enumerate(ds) if level in pilot_levels}
            for label, (_, ds) in zip(labels, combos)
        ]
        run_guarded(loop, [(job, pilot) for jobs in pilots for job in jobs.values()], store)
        fits = [
            plan.fit(loop, jobs, ds, method, budget_nfe, n_evals, pilot) for jobs, (_, ds) in zip(pilots, combos)
        ]
        finals = [
            [plan.job(label, level, design, n, _FINAL, loop, fit.beta) for level, (design, n) in enumerate(zip(ds, fit.counts))]
            for label, (_, ds), fit in zip(labels, combos, fits)
        ]
        run_guarded(loop, [(job, n) for jobs, fit in zip(finals, fits) for job, n in zip(jobs, fit.counts)], store)
        rows = [
            plan.combine(loop, label, ds, jobs, fit, method, sample_nfe[-1], pilot, pilot_levels)
            for label, (_, ds), jobs, fit in zip(labels, combos, finals, fits)
        ]
    attrs = {
        **facts["settings"],
        "seed": seed,
        "method": method,
        "fidelities": [f.steps for f in levels],
        "solvers": facts["solvers"],
        "budget_nfe": -1 if budget_nfe is None else int(budget_nfe),
        "allocated_for": stats[0].name,
        "interval": "t with Welch-Satterthwaite degrees of freedom over independent levels",
    }
    level_info = {"solver": facts["solvers"], "steps": [f.steps for f in levels], "sample_nfe": sample_nfe}
    return build_multifidelity_result(rows, stats, level_info, confidence, attrs)


def _fingerprint(info: ModelInfo, seed: int, inputs: dict, stats: Sequence[Statistic]) -> dict:
    """What determines every stored value of a multi-fidelity run (as the runner's, with its levels)."""
    return {
        "model": info.settings,
        "seed": seed,
        "multifidelity": inputs,
        "statistics": [s.name for s in stats],
        "statistic_identity": {s.name: statistic_identity(s, info.image_shape) for s in stats},
        "noise_spec": info.noise_spec,
        "noise_generator": GENERATOR,
        "mcdiff_version": mcdiff_version(),
    }


@dataclass(frozen=True)
class _Fit:
    """What the pilot gives one combination: ``beta``, weights, pilot variances and evaluations per level."""

    beta: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    pilot_variance: dict[str, dict[int, np.ndarray]]
    counts: list[int]


@dataclass(frozen=True)
class _Plan:
    """The jobs of a multi-fidelity run and what is computed from their accumulators."""

    levels: tuple[Fidelity, ...]
    stats: Sequence[Statistic]
    seed: int
    image_shape: tuple[int, ...]
    costs: np.ndarray
    confidence: float

    def job(self, label: str, level: int, design: Design, n: int, stage: int, loop: Evaluations, beta=None) -> Job:
        """The job of ``level`` of combination ``label`` at ``stage`` (pilot: values kept; final: level values)."""
        channels = self.image_shape[0]
        coupled = level > 0
        if not coupled:
            statistics = tuple(self.stats)
        elif stage == _PILOT:
            statistics = tuple(_on_channels(s, part, channels) for part in ("fine", "coarse") for s in self.stats)
        else:
            statistics = tuple(_level_statistic(s, beta[s.name], channels) for s in self.stats)
            if level == len(self.levels) - 1:
                statistics += tuple(_on_channels(s, "fine", channels) for s in self.stats)
        stage_name = "pilot" if stage == _PILOT else "final"
        key = f"{label.replace('/', '_')}.L{level}.{stage_name}"
        job = Job(key, design, stream_seed(self.seed, stage, level), statistics, LevelSampler(self.levels, level, coupled))
        shape = (channels * (1 + coupled), *self.image_shape[1:])
        loop.add(job, n, shape, draws="memory" if stage == _PILOT else None)
        return job

    def fit(self, loop, pilots: dict[int, Job], level_designs, method, budget_nfe, n_evals, pilot) -> _Fit:
        """``beta`` (``"cv"``), weights, pilot variances and the allocation of one combination."""
        n_levels = len(level_designs)
        runs = {}
        for level, job in pilots.items():
            values = loop.values(job, pilot)
            if level == 0:
                runs[level] = (values, None)
            else:
                runs[level] = tuple({s.name: values[f"{part}:{s.name}"] for s in self.stats} for part in ("fine", "coarse"))
        if method == "cv":
            fine, coarse = runs[1]
            beta = {s.name: control_variate_coefficient(fine[s.name], coarse[s.name]) for s in self.stats}
            weights = {s.name: np.stack([beta[s.name], np.ones_like(beta[s.name])]) for s in self.stats}
        else:
            beta = {s.name: np.float64(1.0) for s in self.stats}
            weights = {s.name: np.ones(n_levels) for s in self.stats}
        pilot_variance = {s.name: {} for s in self.stats}
        for level, (fine, coarse) in runs.items():
            groups = level_designs[level].group_ids(pilot)
            for s in self.stats:
                values = fine[s.name] if coarse is None else fine[s.name] - beta[s.name] * coarse[s.name]
                fields = summarize(values, groups, self.confidence)
                pilot_variance[s.name][level] = pilot * fields["std_error"] ** 2
        if budget_nfe is not None:
            first = self.stats[0].name
            weighted = [np.mean(weights[first][level] ** 2 * pilot_variance[first][level]) for level in range(n_levels)]
            wanted = level_allocation(np.array(weighted), self.costs, budget_nfe)
            counts = [design.nearest_n(max(n, pilot)) for design, n in zip(level_designs, wanted)]
        else:
            counts = [int(n) for n in n_evals]
        return _Fit(beta, weights, pilot_variance, counts)

    def combine(self, loop, label, level_designs, jobs, fit: _Fit, method, fine_nfe, pilot, pilot_levels) -> CombinationEstimate:
        """Level summaries and their combination for one design combination.

        Efficiency is against plain MC at the finest fidelity: ``sigma_L^2 / (N · std_error^2)`` per
        evaluation (``N = sum_l n_l`` noise addresses) and ``sigma_L^2 c_L / ((NFE + pilot NFE) ·
        std_error^2)`` per NFE, with ``sigma_L^2`` the pooled variance of ``f_L`` at the top level and
        ``c_L`` its NFE per sample.
        """
        n_levels, counts = len(level_designs), fit.counts
        level_fields = {s.name: [] for s in self.stats}
        estimates, errors = {s.name: [] for s in self.stats}, {s.name: [] for s in self.stats}
        for level, (job, n) in enumerate(zip(jobs, counts)):
            moments = loop.moments(job, n)
            for s in self.stats:
                out = summarize_moments(moments[s.name], self.confidence)
                estimates[s.name].append(out["estimate"])
                errors[s.name].append(out["std_error"])
                coefficient = fit.beta[s.name] if level > 0 else np.zeros_like(out["estimate"])
                level_fields[s.name].append(
                    {
                        "mean": out["estimate"],
                        "std_error": out["std_error"],
                        "variance_per_eval": out["variance_per_eval"],
                        "effective_variance": n * out["std_error"] ** 2,
                        "pilot_effective_variance": fit.pilot_variance[s.name].get(
                            level, np.full_like(out["estimate"], np.nan)
                        ),
                        "weight": np.broadcast_to(fit.weights[s.name][level], out["estimate"].shape),
                        "coefficient": np.broadcast_to(coefficient, out["estimate"].shape),
                    }
                )
        top = loop.moments(jobs[-1], counts[-1])
        n_groups = np.array([n // d.group_size(n) for d, n in zip(level_designs, counts)])
        nfe = int(sum(n * c for n, c in zip(counts, self.costs)))
        pilot_nfe = int(sum(pilot * self.costs[level] for level in pilot_levels))
        summary = {}
        for s in self.stats:
            combined = combine_levels(
                np.stack(estimates[s.name]), np.stack(errors[s.name]), n_groups, fit.weights[s.name], self.confidence
            )
            fine_variance = summarize_moments(top[f"fine:{s.name}"], self.confidence)["variance_per_eval"]
            with np.errstate(divide="ignore", invalid="ignore"):
                per_eval = fine_variance / (sum(counts) * combined["std_error"] ** 2)
                per_nfe = fine_variance * fine_nfe / ((nfe + pilot_nfe) * combined["std_error"] ** 2)
            nu = combined["dof"]
            with np.errstate(divide="ignore", invalid="ignore"):
                corrected = np.where(nu > 2, per_eval * (nu - 2) / nu, np.nan)
            summary[s.name] = {
                **combined,
                "variance_per_eval": fine_variance,
                "relative_efficiency": per_eval,
                "relative_efficiency_per_nfe": per_nfe,
                "relative_efficiency_vs_mc": np.full_like(per_eval, np.nan),
                "relative_efficiency_corrected": corrected,
            }
        return CombinationEstimate(
            label=label,
            designs=[d.name for d in level_designs],
            n_evals=counts,
            n_groups=n_groups.tolist(),
            pilot_n_evals=[pilot if level in pilot_levels else 0 for level in range(n_levels)],
            nfe=nfe,
            pilot_nfe=pilot_nfe,
            level_costs=self.costs,
            summary=summary,
            levels=level_fields,
        )
