"""The runner: the one loop over evaluations, from blocks of addresses to accumulated moments.

Every estimator runs its evaluations here (:class:`Evaluations`): :func:`estimate`, the
multi-fidelity estimators (:mod:`mcdiff.multifidelity`) and the diagnostics' image pairs. Work
is cut into *jobs* (a design on a seed with its statistics, :class:`~mcdiff.blocks.Job`) and
*blocks*, each a whole number of batches, and every batch is cut at multiples of the
design's unit, so antithetic partners always share a batch; an RQMC replicate may span many
blocks (its rows are summed as they come). Blocks run on an executor (this process, or a Dask cluster,
:mod:`mcdiff.executors`) and their values are folded into each job's streaming accumulators
(:class:`~mcdiff.moments.GroupMoments`) **in address order**: a block that comes back early waits
(the Dask executor keeps a bounded number in flight), so the result does not depend on the
batch size, the block size, the executor, the order in which blocks finish, or on how often the
run was interrupted and resumed from its store (:mod:`mcdiff.store`): it is the same, bit for
bit. Peak memory is the batch's images, the blocks in flight and seven arrays of each
statistic's size per job, whatever the number of evaluations.

Per-evaluation values (``/draws``) are a choice (``draws=``): ``"memory"`` keeps them in the
result (and in the store's block files when there is a store), ``"store"`` only in the
store's block files (read lazily with :func:`mcdiff.store.open_draws`), ``"none"`` nowhere;
``"auto"`` (the default) keeps a statistic's values in memory when they take at most
:data:`DRAWS_LIMIT` bytes per design at the run's largest size, and otherwise nowhere.
``/draws`` holds the statistics kept in memory; ``/summary``'s attribute ``draws`` says
``"memory"`` only when it holds them all.

Sequential stopping runs in rounds: evaluations ``0 .. n_0 - 1``, then up to ``2 n_0``,
``4 n_0``, ... until every design's interval meets the target or the next round would pass
``max_evals``. Each round adds evaluations at new addresses and keeps all earlier ones;
RQMC designs keep their points per replicate and add replicates
(:meth:`~mcdiff.designs.Design.extendable`), extend every replicate's points
(``SobolRQMC(grow="points")``), or do either as :func:`~mcdiff.estimators.rqmc_growth` decides
at each round's end (``grow="adaptive"``). With a store, each round's accumulators are kept
(:meth:`Evaluations.end_round`), so a resumed run looks at every round again, and makes the
same choices, without per-evaluation values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from mcdiff.blocks import Block, Job
from mcdiff.designs import Design, get_design
from mcdiff.estimators import convergence_rate, group_means, rqmc_growth, summarize_moments
from mcdiff.intervals import bernstein_sequence, betting_sequence
from mcdiff.executors import DaskExecutor, LocalExecutor, Model, ModelInfo, SchedulerLost, check_model
from mcdiff.functionals import Statistic, get_statistic, pixel_mean, probe_images, statistic_identity
from mcdiff.moments import GroupMoments, ReplicateMoments
from mcdiff.noise import GENERATOR
from mcdiff.results import build_result, mcdiff_version, targets_dataset
from mcdiff.targets import INTERVALS, Target
from mcdiff.store import ResultStore
from mcdiff.validation import (
    check_batch_size,
    check_confidence,
    check_seed,
    check_unique_names,
    is_integer,
)

DRAWS = ("auto", "memory", "store", "none")
"""Where per-evaluation values go: see the module."""

DRAWS_LIMIT = 64 * 2**20
"""Bytes of one statistic's per-evaluation values (float64) in one job up to which ``draws="auto"`` keeps them."""


def check_draws(draws: str, store) -> str:
    """``draws`` if it is one of :data:`DRAWS` (``"store"`` needs a store), else ``ValueError``."""
    if draws not in DRAWS:
        raise ValueError(f"draws must be one of {DRAWS}, got {draws!r}")
    if draws == "store" and store is None:
        raise ValueError("draws='store' keeps per-evaluation values in the store's block files: give store=DIR")
    return draws


class _JobState:
    """One job's accumulators, its folded prefix, blocks waiting for their turn and kept values.

    ``memory`` names the statistics whose values are kept in memory, ``stored`` those the
    store's block files hold. A waiting block's values may be ``None``: a block of the store
    (holding every statistic), read when its turn comes.
    """

    def __init__(self, job: Job, largest_n: int, memory: set[str], stored: set[str], store):
        self.job, self.memory, self.stored, self.store = job, memory, stored, store
        self.kind = ReplicateMoments if job.design.interleaved else GroupMoments
        design = job.design
        self.moments = {
            s.name: ReplicateMoments(design.interleaved_layout(largest_n), design.unit, halves=design.grow == "adaptive")
            if design.interleaved
            else GroupMoments(design.group_size(largest_n))
            for s in job.statistics
        }
        self.prefix = 0
        self.waiting: dict[int, tuple[int, dict[str, np.ndarray] | None]] = {}
        self.kept: list[dict[str, np.ndarray]] = []

    @property
    def from_blocks(self) -> bool:
        """Whether the store's blocks hold every statistic, so they (not a state file) are what resumes."""
        return self.store is not None and self.stored == set(self.moments)

    def take(self, start: int, stop: int, values: dict[str, np.ndarray] | None, upto: float = math.inf) -> bool:
        """Queue a block's values and fold every block now next in address order and ending by ``upto``.

        Returns whether any block was folded.
        """
        self.waiting[start] = (stop, values)
        folded = False
        while self.prefix in self.waiting and self.waiting[self.prefix][0] <= upto:
            stop, values = self.waiting.pop(self.prefix)
            if values is None:
                values = self.store.read_block(self.job.key, self.prefix, stop)
            for name, v in values.items():
                self.moments[name].fold(v)
            if self.memory:
                self.kept.append({name: values[name] for name in self.memory})
            self.prefix, folded = stop, True
        return folded

    def covered(self) -> list[tuple[int, int]]:
        """Address ranges already folded or waiting."""
        return [(0, self.prefix), *((a, b) for a, (b, _) in self.waiting.items())]


class Evaluations:
    """The loop: jobs' blocks through an executor into ordered accumulators, a store and one progress bar.

    Parameters
    ----------
    model : Sampler or factory
        What every block runs on (a job's ``variant`` is applied to it where the block runs).
    executor : LocalExecutor or DaskExecutor
    batch_size : int
        Evaluations per sampler call (checked against every job's design by the caller).
    block_size : int, optional
        Evaluations per block, rounded up to whole batches and groups; by default one batch.
    store : ResultStore, optional
        Where accumulators (and kept values) are written as they grow, and read back on resume.
    draws : str
        One of :data:`DRAWS`.
    bar : tqdm
        The progress bar, in evaluations.
    """

    def __init__(self, model: Model, executor, batch_size: int, block_size: int | None, store, draws: str, bar):
        self.model, self.executor, self.batch_size, self.block_size = model, executor, batch_size, block_size
        self.store, self.draws, self.bar = store, draws, bar
        self._jobs: dict[str, _JobState] = {}

    def add(
        self,
        job: Job,
        largest_n: int,
        image_shape: Sequence[int],
        draws: str | None = None,
        keep: Sequence[str] = (),
    ) -> None:
        """Register ``job`` (at most ``largest_n`` evaluations, images of ``image_shape``) and restore its stored state.

        ``draws`` overrides the loop's choice for this job (e.g. ``"memory"`` for a pilot);
        the values of the statistics named in ``keep`` are kept in memory in any case (a target
        that needs them). ``"auto"`` keeps a statistic's values when they take at most
        :data:`DRAWS_LIMIT` bytes at ``largest_n``.

        Raises
        ------
        ValueError
            When the store's job differs, or cannot give the values asked for (``draws="memory"``
            or ``"store"``, or ``keep``, on a store that kept fewer).
        """
        names = [s.name for s in job.statistics]
        probe = probe_images(image_shape, 1)
        size = {s.name: int(np.prod(s(probe).shape[1:])) for s in job.statistics}
        mode = draws or self.draws
        if mode == "memory":
            memory = set(names)
        elif mode == "auto":
            memory = {n for n in names if largest_n * size[n] * 8 <= DRAWS_LIMIT}
        else:
            memory = set()
        memory |= set(keep)
        stored = set() if self.store is None else set(names) if mode == "store" else set(memory)
        if self.store is not None:
            description = {
                "design": repr(job.design),
                "seed": job.seed,
                "statistics": names,
                "variant": repr(job.variant),
                "values": sorted(stored),
            }
            stored = set(self.store.job(job.key, description)["values"])
            lacking = (memory | (set(names) if mode == "store" else set())) - stored
            needed = lacking if mode != "auto" else lacking & set(keep)
            if needed:
                raise ValueError(
                    f"store {str(self.store.path)!r} kept per-evaluation values of {sorted(stored) or 'no statistic'} "
                    f"for job {job.key!r}, so draws={mode!r} cannot be served for {sorted(needed)}: give a new "
                    "store, or draws='none'"
                )
            memory -= lacking
        state = _JobState(job, largest_n, memory, stored, self.store)
        self._jobs[job.key] = state
        if self.store is None:
            return
        if state.from_blocks:  # every value is stored: blocks are refolded in address order as rounds reach them
            for start, stop in self.store.done(job.key):
                state.waiting[start] = (stop, None)
            return
        restored = self.store.read_state(job.key, state.kind)  # the accumulators: resume from the stored prefix
        if restored is None:
            return
        if restored[0] > largest_n:
            raise ValueError(
                f"store {str(self.store.path)!r} holds {restored[0]} evaluations of job {job.key!r} without "
                f"every statistic's per-evaluation values, so it cannot be summarized at {largest_n}: ask for at "
                f"least {restored[0]} evaluations, or give a new store"
            )
        state.prefix, state.moments = restored
        if memory:
            below = [(a, b) for a, b in self.store.done(job.key) if b <= state.prefix]
            if sum(b - a for a, b in below) != state.prefix:
                raise ValueError(
                    f"store {str(self.store.path)!r} lacks block files of job {job.key!r} below its stored state: "
                    f"delete {str(self.store.path / 'jobs' / job.key)!r} to recompute the job"
                )
            state.kept = [{k: v for k, v in self.store.read_block(job.key, a, b).items() if k in memory} for a, b in below]

    def run(self, wanted: Sequence[tuple[Job, int]]) -> None:
        """Evaluate every ``(job, n)`` up to ``n`` evaluations (jobs added before), folding as blocks return."""
        blocks = []
        for job, n in wanted:
            state = self._jobs[job.key]
            if state.prefix in state.waiting:  # stored blocks, folded up to n
                state.take(state.prefix, *state.waiting[state.prefix], upto=n)
            blocks += _missing_blocks(job, n, state.covered(), self.batch_size, self.block_size)
        if blocks and self.store is not None:
            self.store.lock()  # one writer, and a store that cannot be written refused, before any evaluation
        self.bar.total = (self.bar.total or 0) + sum(b.stop - b.start for b in blocks)
        self.bar.refresh()
        for block, values in self.executor.evaluate(self.model, self.batch_size, blocks):
            state = self._jobs[block.job.key]
            if state.stored:
                self.store.write(block.job.key, block.start, block.stop, {n: values[n] for n in state.stored})
            folded = state.take(block.start, block.stop, values, upto=block.n_evals)
            if folded and self.store is not None and not state.from_blocks:
                self.store.write_state(block.job.key, state.prefix, state.moments)
            self.bar.update(block.stop - block.start)

    def end_round(self, job: Job, n: int) -> None:
        """Keep ``job``'s accumulators at a stopping round's end ``n`` in the store, for :meth:`moments` on resume."""
        state = self._jobs[job.key]
        if self.store is not None and not state.from_blocks and state.prefix == n:
            self.store.write_state(job.key, n, state.moments, round_end=True)

    def accumulators(self, job: Job, n: int) -> dict:
        """``job``'s accumulators of evaluations ``0 .. n - 1``: the live ones, or those kept at a round's end."""
        state = self._jobs[job.key]
        if state.prefix > n and self.store is not None and not state.from_blocks:
            kept = self.store.read_state(job.key, state.kind, round_end=n)
            if kept is None:
                raise ValueError(
                    f"store {str(self.store.path)!r} holds the accumulators of {state.prefix} evaluations of job "
                    f"{job.key!r} but not those at the end of the round at {n}: give a new store"
                )
            return kept[1]
        if state.prefix != n:
            blocking = [(a, b) for a, (b, _) in state.waiting.items() if a < n < b]
            raise ValueError(
                f"job {job.key!r} has folded {state.prefix} evaluations, not {n}"
                + (f": stored block {blocking[0]} straddles {n}; ask for {blocking[0][1]} or give a new store" if blocking else "")
            )
        return state.moments

    def regrow(self, job: Job) -> None:
        """Give a registered job its grown design (``SobolRQMC(grow="adaptive")``), accumulators included."""
        state = self._jobs[job.key]
        state.job = job
        for accumulator in state.moments.values():
            accumulator.regrow(job.design.layout)

    def moments(self, job: Job, n: int) -> dict[str, GroupMoments]:
        """The group moments of ``job``'s evaluations ``0 .. n - 1`` (all of them folded by :meth:`run`)."""
        return {name: m.groups() for name, m in self.accumulators(job, n).items()}

    def values(self, job: Job, n: int) -> dict[str, np.ndarray]:
        """Values ``{statistic: (n, *own_shape)}`` of evaluations ``0 .. n - 1`` of the statistics kept in memory."""
        state = self._jobs[job.key]
        return {
            stat.name: np.concatenate([block[stat.name] for block in state.kept])[:n]
            for stat in state.job.statistics
            if stat.name in state.memory
        }


def estimate(
    sampler: Model,
    statistics: Sequence[str | Statistic | Callable] = ("brightness",),
    designs: Sequence[str | Design] = ("mc", "amc", "rqmc"),
    n_evals: int = 1024,
    seed: int = 0,
    confidence: float = 0.95,
    batch_size: int = 256,
    progress: bool | None = None,
    *,
    store: str | Path | None = None,
    executor: LocalExecutor | DaskExecutor | None = None,
    block_size: int | None = None,
    target_ci_width: float | None = None,
    target_rel_width: float | None = None,
    max_evals: int | None = None,
    draws: str = "auto",
    targets: Sequence[Target] = (),
    stop_interval: str = "t",
) -> xr.DataTree:
    """Estimate ``E[f(G(z))]`` for each statistic under each noise design.

    Every design spends the same ``n_evals`` model evaluations, so their CI widths compare
    directly. All input is checked before the first evaluation.

    Parameters
    ----------
    sampler : Sampler or callable
        The model (see :mod:`mcdiff.samplers`), or a picklable factory that builds it (needed
        by :class:`~mcdiff.executors.DaskExecutor`, which builds it once on every worker).
    statistics : sequence
        Built-in names (``"brightness"``, ``"pixel_mean"``, ``"contrast"``, ``"centroid"``),
        :class:`~mcdiff.functionals.Statistic` objects or callables ``images -> (B, ...)``.
    designs : sequence
        ``"mc"``, ``"amc"``, ``"rqmc"``, ``"amc-rqmc"`` or :class:`~mcdiff.designs.Design`.
    n_evals : int
        Model evaluations per design (with a target: of the first round).
    seed : int
        Noise of every evaluation is a function of ``(seed, design, address)``.
    confidence : float
        Level of the t-intervals, in (0, 1).
    batch_size : int
        Evaluations per sampler call; rounded down to whole pairs.
    progress : bool, optional
        Show a progress bar; by default only when stderr is a terminal.
    store : path, optional
        Directory of a :class:`~mcdiff.store.ResultStore`: the accumulators (and kept values)
        are written as blocks are folded, and what is stored there is read instead of
        computed, so an interrupted run resumes where it stopped and gives the uninterrupted
        result, bit for bit.
    executor : LocalExecutor or DaskExecutor, optional
        Where blocks run; by default in this process.
    block_size : int, optional
        Evaluations per block (the unit of store writes and of distributed tasks), rounded up
        to a multiple of both the batch and the group (pair, replicate); by default one batch.
    target_ci_width, target_rel_width : float, optional
        Sequential stopping: double the evaluations round by round until, for every design
        and statistic component, ``ci_width <= target_ci_width`` and
        ``ci_width <= target_rel_width · |estimate|``. Needs ``max_evals``.
    max_evals : int, optional
        Budget cap per design for sequential stopping: no round exceeds it.
    stop_interval : {"t", "bernstein", "betting"}
        The interval the stopping rule checks. ``"t"`` (the default) is the t-interval of each
        round, which covers a little less than its level at the data-dependent stopping time;
        ``"bernstein"`` and ``"betting"`` are anytime-valid confidence sequences over the
        design's group means in address order (:func:`~mcdiff.intervals.bernstein_sequence`,
        :func:`~mcdiff.intervals.betting_sequence`, checked at every round's end), so their
        interval at the stopping time covers with at least the confidence level. They need
        bounded statistics (``Statistic.bounds``) and keep their values in memory; the
        sequence's bounds at the stop are ``/summary/{statistic}_sequence``.
    draws : {"auto", "memory", "store", "none"}
        Where per-evaluation values go (see the module): ``"auto"`` keeps a statistic's values in
        memory (and in the store) when they take at most :data:`DRAWS_LIMIT` bytes per design,
        else nowhere.
    targets : sequence of Target
        Estimands beyond the means (:mod:`mcdiff.targets`: ``Quantiles``, ``Exceedance``,
        ``Spread``, ``Mean`` with a finite-sample interval, ``Ratio``, ``Correlation``,
        ``FunctionOfMeans``), each computed per design from its statistics' values, which are
        kept in memory for it; checked before the first evaluation.

    Returns
    -------
    xarray.DataTree
        ``/summary``, ``/moments``, where values were kept in memory ``/draws``, and with
        targets ``/targets``, as described in :mod:`mcdiff.results`. With a target,
        ``/summary`` also holds ``evals_at_target(design)`` (the first round size at which the
        design met the target, -1 if never) and attributes ``stopping_rounds``,
        ``target_reached`` (1 or 0), ``max_evals`` and the target(s).

    Examples
    --------
    >>> import mcdiff
    >>> result = mcdiff.estimate(mcdiff.GaussianSampler(), ["brightness"], ["mc", "amc"],
    ...                          n_evals=64, progress=False)
    >>> float(result["summary"]["brightness"].sel(design="mc", summary="estimate")) > 0
    True
    """
    check_model(sampler)
    seed = check_seed(seed)
    confidence = check_confidence(confidence)
    stats = [get_statistic(s) for s in statistics]
    resolved = [get_design(d) for d in designs]
    check_unique_names("statistic", [s.name for s in stats])
    check_unique_names("design", [d.name for d in resolved])
    for design in resolved:
        design.check_n(n_evals)
        batch_size = check_batch_size(batch_size, design)
    check_block_size(block_size)
    stopping = _check_stopping(target_ci_width, target_rel_width, max_evals, n_evals, stop_interval, stats)
    draws = check_draws(draws, store)
    executor = LocalExecutor() if executor is None else executor
    info = executor.describe(sampler)
    keep = _check_targets(targets, stats, info.image_shape)
    if stopping is not None and stopping["stop_interval"] != "t":
        grown = [d.name for d in resolved if d.interleaved]
        if grown:
            raise ValueError(
                f"stop_interval={stopping['stop_interval']!r} needs new independent groups every round; design(s) "
                f"{grown} grow their replicates' points instead (grow='points'): use stop_interval='t'"
            )
        keep = tuple(sorted({*keep, *(s.name for s in stats)}))
    layouts = [d.extendable(n_evals) for d in resolved]
    jobs = [Job(d.name, d, seed, tuple(stats)) for d in layouts]
    largest = n_evals if stopping is None else stopping["max_evals"]

    n, rounds, reached_at, round_ends, sequences, rates = n_evals, 0, {}, [], {}, {}
    with (
        ResultStore.open(store, _fingerprint(info, seed, layouts, stats)) if store is not None else contextlib.nullcontext() as results,
        progress_bar(progress, "mcdiff") as bar,
    ):
        loop = Evaluations(sampler, executor, batch_size, block_size, results, draws, bar)
        for job in jobs:
            loop.add(job, largest, info.image_shape, keep=keep)
        while True:
            rounds += 1
            run_guarded(loop, [(job, n) for job in jobs], store)
            if stopping is None:
                break
            round_ends.append(n)
            for job in jobs:
                loop.end_round(job, n)
                if job.key in reached_at:
                    continue
                if stopping["stop_interval"] == "t":
                    met = _meets_target(summarize_moments, loop.moments(job, n), confidence, stopping)
                else:
                    sequences[job.key] = _sequences(loop.values(job, n), job.design, round_ends, stats, confidence, stopping)
                    met = _meets_target(lambda fields, confidence: fields, sequences[job.key], confidence, stopping)
                if met:
                    reached_at[job.key] = n
            if len(reached_at) == len(jobs) or 2 * n > stopping["max_evals"]:
                break
            jobs = [_grown(loop, job, n, confidence, stopping, rates.setdefault(job.key, [])) for job in jobs]
            n *= 2
        moments = {job.key: loop.moments(job, n) for job in jobs}
        kept = {job.key: loop.values(job, n) for job in jobs}

    final = [job.design for job in jobs] if stopping else resolved
    noise = {d.name: d.describe(info.noise_spec) for d in final}
    layout = {s.name: s.layout(next(iter(moments.values()))[s.name].sums["shift"]) for s in stats}
    in_memory = [s for s in stats if all(s.name in v for v in kept.values())]
    where = "memory" if len(in_memory) == len(stats) else ("store" if draws == "store" else "none")
    values = _draws_dataset(kept, final, in_memory, noise, n) if in_memory else None
    computed = None
    if targets:
        per_design = {d.name: {t.name: t.compute(kept[d.name], d.group_ids(n), confidence) for t in targets} for d in final}
        computed = targets_dataset(targets, per_design)
    attrs = {**info.settings, "seed": seed, "draws": where}
    if stopping is None:
        return build_result(moments, layout, confidence, attrs, noise=noise, draws=values, targets=computed)
    reached = len(reached_at) == len(jobs)
    if not reached:
        missing = [job.key for job in jobs if job.key not in reached_at]
        warnings.warn(
            f"target not reached by design(s) {missing} within max_evals={stopping['max_evals']}; "
            f"stopped after {rounds} rounds at n_evals={n}",
            RuntimeWarning,
            stacklevel=2,
        )
    result = build_result(
        moments,
        layout,
        confidence,
        {**attrs, **stopping, "stopping_rounds": rounds, "target_reached": int(reached)},
        noise=noise,
        draws=values,
        targets=computed,
    )
    result["summary"]["evals_at_target"] = xr.DataArray([reached_at.get(job.key, -1) for job in jobs], dims="design")
    for stat in stats if sequences else ():
        bounds = np.stack([np.stack([sequences[job.key][stat.name][f] for f in ("ci_lower", "ci_upper")]) for job in jobs])
        own_dims, coords = layout[stat.name]
        result["summary"][f"{stat.name}_sequence"] = xr.DataArray(
            bounds, dims=("design", "sequence_bound", *own_dims), coords={"sequence_bound": ["lower", "upper"], **coords}
        )
    return result


def _grown(loop: Evaluations, job: Job, n: int, confidence: float, stopping: dict, rates: list[float]) -> Job:
    """``job`` for the next round: an adaptive RQMC design grown as :func:`~mcdiff.estimators.rqmc_growth` says.

    The round's :func:`~mcdiff.estimators.convergence_rate` is that of the statistic component
    whose interval is furthest from its target (``ci_width`` over the width allowed); it is
    appended to ``rates``, the job's rates of earlier rounds. A replicate of one point has no
    rate: its points are extended.
    """
    design = job.design
    if getattr(design, "grow", None) != "adaptive":
        return job
    worst, rate = -np.inf, None
    for accumulator in loop.accumulators(job, n).values() if design.layout.points >= 2 else ():
        fields = summarize_moments(accumulator.groups(), confidence)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.ravel(fields["ci_width"] / _allowed_width(fields, stopping))
        ratio = np.nan_to_num(ratio, nan=0.0, posinf=np.finfo(float).max)
        k = int(np.argmax(ratio))
        if ratio[k] > worst:
            worst, rate = ratio[k], convergence_rate(*(float(np.ravel(v)[k]) for v in accumulator.level_variances()))
    if rate is not None:
        rates.append(rate)
    how = "points" if rate is None else rqmc_growth(rates, design.layout.replicates, confidence)
    grown = dataclasses.replace(job, design=design.grown(how))
    loop.regrow(grown)
    return grown


def _sequences(values, design: Design, round_ends, stats, confidence, stopping) -> dict[str, dict[str, np.ndarray]]:
    """Each statistic's confidence sequence at the last round's end: ``{statistic: {estimate, ci_*}}``.

    The sequence runs over the design's group means in address order and is intersected over
    every round's end so far (the times the rule looks at).
    """
    sequence = bernstein_sequence if stopping["stop_interval"] == "bernstein" else betting_sequence
    n = round_ends[-1]
    groups = design.group_ids(n)
    times = [len(np.unique(groups[:end])) for end in round_ends]
    out = {}
    for stat in stats:
        means = group_means(values[stat.name], groups)
        bounds = sequence(means, stat.bounds, confidence, times=times, name=stat.name)
        out[stat.name] = {
            "estimate": means.mean(axis=0),
            "ci_lower": bounds["ci_lower"][-1],
            "ci_upper": bounds["ci_upper"][-1],
            "ci_width": bounds["ci_width"][-1],
        }
    return out


def sample_runs(
    model: Model,
    designs: Sequence[Design],
    n_evals: int,
    seed: int,
    batch_size: int,
    *,
    store: str | Path | None = None,
    executor: LocalExecutor | DaskExecutor | None = None,
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """Images ``{design: (n_evals, C, H, W)}`` of evaluations ``0 .. n_evals - 1`` of each design, through the loop.

    What :func:`sample_images` gives, run as every estimate is: blocks on the executor, one
    progress bar, and with a store every block kept (job ``images-{design}``), so an
    interrupted run resumes; a store of other images (model, seed, designs) is refused.
    """
    check_model(model)
    seed = check_seed(seed)
    executor = LocalExecutor() if executor is None else executor
    info = executor.describe(model)
    jobs = [Job(f"images-{d.name}", d, seed, (pixel_mean,)) for d in designs]
    fingerprint = {**_fingerprint(info, seed, designs, [pixel_mean]), "images": True}
    with (
        ResultStore.open(store, fingerprint) if store is not None else contextlib.nullcontext() as results,
        progress_bar(progress, "mcdiff images") as bar,
    ):
        loop = Evaluations(model, executor, batch_size, None, results, "memory", bar)
        for job in jobs:
            loop.add(job, n_evals, info.image_shape)
        run_guarded(loop, [(job, n_evals) for job in jobs], store)
        return {job.design.name: loop.values(job, n_evals)["pixel_mean"] for job in jobs}


def sample_images(
    sampler: Model,
    design: Design,
    n_evals: int,
    seed: int,
    batch_size: int,
    *,
    start: int = 0,
    stop: int | None = None,
    executor: LocalExecutor | DaskExecutor | None = None,
) -> np.ndarray:
    """Images ``(stop - start, C, H, W)`` of evaluations ``start .. stop - 1`` of a run of ``n_evals``.

    What estimation hands its statistics at those addresses (the statistic
    :data:`~mcdiff.functionals.pixel_mean`, as float64), evaluated as every block is, by the
    executor: the same noise, generated in the sampler's dtype on its device, in batches of
    ``batch_size``.
    """
    executor = LocalExecutor() if executor is None else executor
    job = Job("images", design, seed, (pixel_mean,))
    block = Block(job, n_evals, start, n_evals if stop is None else stop)
    ((_, values),) = executor.evaluate(sampler, batch_size, [block])
    return values["pixel_mean"]


def _check_targets(targets: Sequence[Target], stats: Sequence[Statistic], image_shape) -> tuple[str, ...]:
    """The statistics whose values the targets need, after checking every target (before any evaluation)."""
    if not targets:
        return ()
    for target in targets:
        if not isinstance(target, Target):
            raise ValueError(
                f"targets must be mcdiff.targets.Target objects (Quantiles, Exceedance, Spread, ...), got {target!r}"
            )
    check_unique_names("target", [t.name for t in targets])
    probe = probe_images(image_shape, 1)
    sizes = {s.name: int(np.prod(s(probe).shape[1:])) for s in stats}
    for target in targets:
        target.check(sizes)
    return tuple(sorted({s for t in targets for s in t.statistics}))


def check_block_size(block_size) -> None:
    """``ValueError`` unless ``block_size`` is a positive integer or ``None``."""
    if block_size is not None and (not is_integer(block_size) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")


def progress_bar(progress: bool | None, desc: str) -> tqdm:
    """The run's one progress bar in evaluations; shown by default only when stderr is a terminal."""
    return tqdm(total=0, disable=not (sys.stderr.isatty() if progress is None else progress), unit="eval", desc=desc)


def run_guarded(loop: Evaluations, wanted: Sequence[tuple[Job, int]], store) -> None:
    """:meth:`Evaluations.run`, a lost Dask scheduler reported with what the store keeps."""
    try:
        loop.run(wanted)
    except SchedulerLost as err:
        raise SchedulerLost(f"{err}; {_resume_hint(store)}") from None


def _resume_hint(store: str | Path | None) -> str:
    """What a run interrupted mid-way keeps: its store's blocks, or nothing without a store."""
    if store is None:
        return (
            "the evaluations done so far are lost (no store): give a store (store=DIR, mcdiff estimate "
            "--store DIR) to keep every finished block and resume from it"
        )
    return (
        f"every finished block is kept in store {str(store)!r}: rerun with the same store (--store) "
        "once the scheduler is back and the run resumes, bit-identical to an uninterrupted one"
    )


def _check_stopping(target_ci_width, target_rel_width, max_evals, n_evals, stop_interval, stats) -> dict | None:
    """The stopping rule's settings as result attributes, or ``None`` without a target."""
    targets = {"target_ci_width": target_ci_width, "target_rel_width": target_rel_width}
    for name, value in targets.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    if stop_interval not in INTERVALS:
        raise ValueError(f"stop_interval must be one of {INTERVALS}, got {stop_interval!r}")
    targets = {name: float(value) for name, value in targets.items() if value is not None}
    if not targets:
        if max_evals is not None:
            raise ValueError(
                "max_evals caps sequential stopping: give target_ci_width or target_rel_width too"
            )
        return None
    if not is_integer(max_evals) or max_evals < n_evals:
        raise ValueError(
            f"sequential stopping needs a budget cap max_evals, an integer >= n_evals={n_evals} "
            f"(the first round), got {max_evals!r}"
        )
    if stop_interval != "t":
        unbounded = [s.name for s in stats if s.bounds is None]
        if unbounded:
            raise ValueError(
                f"stop_interval={stop_interval!r} is a confidence sequence for bounded values: statistic(s) "
                f"{unbounded} declare no bounds; give Statistic(..., bounds=(lo, hi)) or stop_interval='t'"
            )
    return {**targets, "max_evals": int(max_evals), "stop_interval": stop_interval}


def _allowed_width(fields: dict, stopping: dict) -> np.ndarray:
    """The widest interval each component may have: ``target_ci_width`` and ``target_rel_width · |estimate|``, where given."""
    allowed = np.full(np.shape(fields["estimate"]), stopping.get("target_ci_width", np.inf))
    if "target_rel_width" in stopping:
        allowed = np.minimum(allowed, stopping["target_rel_width"] * np.abs(fields["estimate"]))
    return allowed


def _meets_target(fields_of: Callable, per_statistic: dict, confidence: float, stopping: dict) -> bool:
    """Whether every statistic component's interval (``fields_of(x, confidence)`` of each value) meets the targets."""
    for x in per_statistic.values():
        fields = fields_of(x, confidence)
        if not np.all(fields["ci_width"] <= _allowed_width(fields, stopping)):
            return False
    return True


def _fingerprint(info: ModelInfo, seed: int, layouts: Sequence[Design], stats: Sequence[Statistic]) -> dict:
    """What determines every stored value: model, seed, address layout, statistics, noise, version.

    The model is its settings with its ``weights_sha256``; each statistic is its name and its
    :func:`~mcdiff.functionals.statistic_identity` on probe images of the model's image shape.
    A store made by another noise generator (mcdiff < 0.2 drew all noise with numpy on the
    CPU) differs in ``noise_generator`` and ``mcdiff_version``, and is refused by name.
    """
    return {
        "model": info.settings,
        "seed": seed,
        "designs": {d.name: repr(d) for d in layouts},
        "statistics": [s.name for s in stats],
        "statistic_identity": {s.name: statistic_identity(s, info.image_shape) for s in stats},
        "noise_spec": info.noise_spec,
        "noise_generator": GENERATOR,
        "mcdiff_version": mcdiff_version(),
    }


def _missing_blocks(
    job: Job, n_evals: int, covered: Sequence[tuple[int, int]], batch_size: int, block_size: int | None
) -> list[Block]:
    """Blocks covering the addresses ``0 .. n_evals - 1`` of ``job`` outside the ``covered`` ranges.

    Blocks lie on a grid of ``size`` evaluations, ``size`` a multiple of the batch (itself a
    multiple of the design's unit), so they never split an antithetic pair and hold whole
    batches. They may split an RQMC replicate: the accumulators keep its rows open until it
    is complete (:class:`~mcdiff.moments.GroupMoments`), so memory does not grow with the
    replicate's size.
    """
    design = job.design
    base = batch_size - batch_size % design.unit
    size = base * -(-(block_size or base) // base)
    todo = np.ones(n_evals, dtype=bool)
    for start, stop in covered:
        todo[start:stop] = False
    blocks = []
    for cell in range(0, n_evals, size):
        flags = np.concatenate([[False], todo[cell : cell + size], [False]])
        edges = np.flatnonzero(np.diff(flags.astype(np.int8)))
        blocks += [Block(job, n_evals, cell + int(a), cell + int(b)) for a, b in zip(edges[::2], edges[1::2])]
    return blocks


def _draws_dataset(kept, designs, stats, noise, n_evals) -> xr.Dataset:
    """``/draws`` from each design's kept values ``{design: {statistic: (n, *own_shape)}}``."""
    names = [d.name for d in designs]
    data_vars = {}
    for stat in stats:
        stacked = np.stack([kept[name][stat.name] for name in names])
        own_dims, coords = stat.layout(stacked[0, 0])
        data_vars[stat.name] = xr.DataArray(stacked, dims=("design", "draw", *own_dims), coords=coords)
    return xr.Dataset(
        data_vars,
        coords={
            "design": names,
            "group": (("design", "draw"), np.stack([d.group_ids(n_evals) for d in designs])),
            "address": ("draw", np.arange(n_evals)),
            "noise": ("design", [noise[name] for name in names]),
        },
    )
