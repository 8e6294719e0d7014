"""The runner: blocks of addresses → noise → sampler → statistics → result.

This is the only module with loops over evaluations, devices and progress bars. Work is cut
into *blocks* of whole groups (pairs, replicates), each a whole number of batches, and every
batch is cut at multiples of the design's unit, so antithetic partners always share a batch
and no block splits a replicate. Noise is regenerated from ``(seed, design, address)``, so the
result does not depend on the batch size, the block size, the executor (this process or a
Dask cluster, :mod:`mcdiff.executors`) or on how often the run was interrupted and resumed
from its store (:mod:`mcdiff.store`).

Sequential stopping runs in rounds: evaluations ``0 .. n_0 - 1``, then up to ``2 n_0``,
``4 n_0``, ... until every design's interval meets the target or the next round would pass
``max_evals``. Each round adds evaluations at new addresses and keeps all earlier ones;
RQMC designs keep their points per replicate and add replicates
(:meth:`~mcdiff.designs.Design.extendable`).
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from mcdiff.blocks import Block
from mcdiff.designs import Design, get_design
from mcdiff.estimators import summarize
from mcdiff.executors import DaskExecutor, LocalExecutor, Model, ModelInfo, SchedulerLost, check_model
from mcdiff.functionals import Statistic, get_statistic, statistic_identity
from mcdiff.noise import GENERATOR
from mcdiff.results import build_result, mcdiff_version
from mcdiff.store import ResultStore
from mcdiff.validation import (
    check_batch_size,
    check_confidence,
    check_seed,
    check_unique_names,
    is_integer,
)


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
        Directory of a :class:`~mcdiff.store.ResultStore`: every block is written as soon as
        it is computed, and evaluations already stored there are read instead of computed,
        so an interrupted run resumes where it stopped and gives the uninterrupted result.
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

    Returns
    -------
    xarray.DataTree
        ``/summary`` and ``/draws`` as described in :mod:`mcdiff.results`. With a target,
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
    if block_size is not None and (not is_integer(block_size) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
    stopping = _check_stopping(target_ci_width, target_rel_width, max_evals, n_evals)
    if progress is None:
        progress = sys.stderr.isatty()
    executor = LocalExecutor() if executor is None else executor
    info = executor.describe(sampler)
    layouts = [d.extendable(n_evals) for d in resolved]
    results = ResultStore.open(store, _fingerprint(info, seed, layouts, stats)) if store is not None else None

    n, rounds, reached_at = n_evals, 0, {}
    with (
        results or contextlib.nullcontext(),
        tqdm(total=0, disable=not progress, unit="eval", desc="mcdiff") as bar,
    ):
        chunks = {d.name: results.read(d.name) if results else [] for d in layouts}
        while True:
            rounds += 1
            blocks = [
                b for d in layouts for b in _missing_blocks(d, n, chunks[d.name], batch_size, block_size)
            ]
            if blocks and results is not None:
                results.lock()  # one writer, and a store that cannot be written refused, before any evaluation
            bar.total += sum(b.stop - b.start for b in blocks)
            bar.refresh()
            try:
                for block, values in executor.evaluate(sampler, stats, seed, batch_size, blocks):
                    if results is not None:
                        results.write(block.design.name, block.start, block.stop, values)
                    chunks[block.design.name].append((block.start, block.stop, values))
                    bar.update(block.stop - block.start)
            except SchedulerLost as err:
                raise SchedulerLost(f"{err}; {_resume_hint(store)}") from None
            per_design = {d.name: _assemble(chunks[d.name], n) for d in layouts}
            if stopping is None:
                break
            for d in layouts:
                if d.name in reached_at:
                    continue
                if _meets_target(per_design[d.name], d.group_ids(n), confidence, stopping):
                    reached_at[d.name] = n
            if len(reached_at) == len(layouts) or 2 * n > stopping["max_evals"]:
                break
            n *= 2

    draws = _draws_dataset(per_design, layouts if stopping else resolved, stats, info, n)
    attrs = {**info.settings, "seed": seed}
    if stopping is None:
        return build_result(draws, confidence, attrs)
    reached = len(reached_at) == len(layouts)
    if not reached:
        missing = [d.name for d in layouts if d.name not in reached_at]
        warnings.warn(
            f"target not reached by design(s) {missing} within max_evals={stopping['max_evals']}; "
            f"stopped after {rounds} rounds at n_evals={n}",
            RuntimeWarning,
            stacklevel=2,
        )
    result = build_result(
        draws, confidence, {**attrs, **stopping, "stopping_rounds": rounds, "target_reached": int(reached)}
    )
    result["summary"]["evals_at_target"] = xr.DataArray(
        [reached_at.get(d.name, -1) for d in layouts], dims="design"
    )
    return result


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


def _check_stopping(target_ci_width, target_rel_width, max_evals, n_evals) -> dict | None:
    """The stopping rule's settings as result attributes, or ``None`` without a target."""
    targets = {"target_ci_width": target_ci_width, "target_rel_width": target_rel_width}
    for name, value in targets.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive number or None, got {value!r}")
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
    return {**targets, "max_evals": int(max_evals)}


def _meets_target(
    values: dict[str, np.ndarray], groups: np.ndarray, confidence: float, stopping: dict
) -> bool:
    """Whether every statistic component's interval meets the absolute and relative targets."""
    for v in values.values():
        fields = summarize(v, groups, confidence)
        width = fields["ci_width"]
        if not np.all(width <= stopping.get("target_ci_width", np.inf)):
            return False
        if not np.all(width <= stopping.get("target_rel_width", np.inf) * np.abs(fields["estimate"])):
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
    design: Design, n_evals: int, chunks, batch_size: int, block_size: int | None
) -> list[Block]:
    """Blocks covering the addresses ``0 .. n_evals - 1`` that ``chunks`` do not hold.

    Blocks lie on a grid of ``size`` evaluations, ``size`` a multiple of the batch and of the
    group, so they never split a pair or a replicate and hold whole batches.
    """
    step = batch_size - batch_size % design.unit
    base = math.lcm(step, design.group_size(n_evals))
    size = base * -(-(block_size or base) // base)
    todo = np.ones(n_evals, dtype=bool)
    for start, stop, _ in chunks:
        todo[start:stop] = False
    blocks = []
    for cell in range(0, n_evals, size):
        flags = np.concatenate([[False], todo[cell : cell + size], [False]])
        edges = np.flatnonzero(np.diff(flags.astype(np.int8)))
        blocks += [
            Block(design, n_evals, cell + int(a), cell + int(b)) for a, b in zip(edges[::2], edges[1::2])
        ]
    return blocks


def _assemble(chunks, n_evals: int) -> dict[str, np.ndarray]:
    """Values ``{statistic: (n_evals, *own_shape)}`` of addresses ``0 .. n_evals - 1`` from blocks."""
    out: dict[str, np.ndarray] = {}
    for start, stop, values in chunks:
        if start >= n_evals:
            continue
        for name, v in values.items():
            if name not in out:
                out[name] = np.empty((n_evals, *v.shape[1:]))
            elif v.shape[1:] != out[name].shape[1:]:
                raise ValueError(
                    f"statistic {name!r} has shape {v.shape[1:]} in one block and "
                    f"{out[name].shape[1:]} in another"
                )
            out[name][start : min(stop, n_evals)] = v[: min(stop, n_evals) - start]
    return out


def _draws_dataset(per_design, designs, stats, sampler, n_evals) -> xr.Dataset:
    names = [d.name for d in designs]
    data_vars = {}
    for stat in stats:
        stacked = np.stack([per_design[name][stat.name] for name in names])
        own_dims = stat.own_dims(stacked[0])
        data_vars[stat.name] = xr.DataArray(
            stacked, dims=("design", "draw", *own_dims), coords=dict(stat.coords)
        )
    return xr.Dataset(
        data_vars,
        coords={
            "design": names,
            "group": (("design", "draw"), np.stack([d.group_ids(n_evals) for d in designs])),
            "address": ("draw", np.arange(n_evals)),
            "noise": ("design", [d.describe(sampler.noise_spec) for d in designs]),
        },
    )
