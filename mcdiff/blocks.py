"""What a worker runs: a block of addresses through noise, sampler and statistics, in batches.

A :class:`Job` is one stream of evaluations (a design on a seed, its statistics, its model
variant); a :class:`Block` is a contiguous range of a job's addresses that never splits a
group (an antithetic pair or an RQMC replicate). :func:`evaluate_design` turns addresses into
statistic values. The executors (:mod:`mcdiff.executors`) call it, for the runner
(:mod:`mcdiff.runner`), the one loop over evaluations; it knows neither of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from mcdiff.designs import Design
from mcdiff.functionals import Statistic, check_finite
from mcdiff.samplers.base import Sampler


@dataclass(frozen=True)
class Job:
    """One stream of evaluations the runner accumulates: a design on a seed, its statistics, its model.

    ``key`` names the job in a store and in a result (a design's name for
    :func:`~mcdiff.runner.estimate`); ``design`` is the job's address layout (its extendable
    form); ``variant``, when given, is a picklable callable ``sampler -> sampler`` applied where
    the block runs (e.g. the two fidelities of a multi-fidelity level on the same noise).
    """

    key: str
    design: Design
    seed: int
    statistics: tuple[Statistic, ...]
    variant: Callable[[Sampler], Sampler] | None = None


@dataclass(frozen=True)
class Block:
    """Evaluations ``start .. stop - 1`` of ``job`` in a run of ``n_evals``."""

    job: Job
    n_evals: int
    start: int
    stop: int

    @property
    def design(self) -> Design:
        """The job's design."""
        return self.job.design


def evaluate_block(sampler: Sampler, batch_size: int, block: Block) -> dict[str, np.ndarray]:
    """:func:`evaluate_design` of one block on ``sampler`` (already the job's variant)."""
    job = block.job
    return evaluate_design(
        sampler, job.statistics, job.design, block.n_evals, job.seed, batch_size, start=block.start, stop=block.stop
    )


def _check_images(images: torch.Tensor, count: int, sampler: Sampler) -> None:
    expected = (count, *sampler.image_shape)
    if not torch.is_tensor(images) or tuple(images.shape) != expected:
        got = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(
            f"sampler {type(sampler).__name__} returned images of shape {got}; expected "
            f"(B, C, H, W) = {expected} for a batch of {count}"
        )


def evaluate_design(
    sampler: Sampler,
    statistics: Sequence[Statistic],
    design: Design,
    n_evals: int,
    seed: int,
    batch_size: int,
    on_batch: Callable[[int], None] = lambda count: None,
    *,
    start: int = 0,
    stop: int | None = None,
    prefetch: bool | None = None,
) -> dict[str, np.ndarray]:
    """Statistic values ``{name: (stop - start, *own_shape)}`` of evaluations ``start .. stop - 1``.

    By default every evaluation of the run, ``0 .. n_evals - 1``. Batches of ``batch_size``
    (rounded down to whole pairs) are cut from ``start``; ``start`` and ``stop`` must not
    split a pair. Each batch's noise is generated on the sampler's device as the sampler
    asks for it (:meth:`~mcdiff.designs.Design.noise`). With ``prefetch`` (by default when
    the sampler is not on the CPU, or torch uses fewer threads than there are processors)
    the next batch's CPU part, RQMC's Sobol' points, is computed on a second thread while
    the current batch runs, and each batch's step noise is generated one chunk ahead of
    the sampler (:class:`~mcdiff.noise.batch.DesignNoise`); the values are the same.
    """
    step = batch_size - batch_size % design.unit
    first, last = start, n_evals if stop is None else stop
    if first % design.unit or last % design.unit:
        raise ValueError(f"addresses [{first}, {last}) split a pair of design {design.name!r}")
    batches = [(lo, min(last, lo + step)) for lo in range(first, last, step)]

    if prefetch is None:  # threads of their own pay where the model leaves a processor idle
        prefetch = sampler.device.type != "cpu" or torch.get_num_threads() < (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mcdiff-noise") if prefetch else nullcontext() as pool:

        def noise_of(lo: int, hi: int):
            spec, device, dtype = sampler.noise_spec, sampler.device, sampler.dtype
            return design.noise(spec, seed, lo, hi, n_evals, device=device, dtype=dtype, ahead=pool)

        noises = _one_ahead(pool, noise_of, batches) if prefetch else (noise_of(*b) for b in batches)
        values: dict[str, np.ndarray] = {}
        for (lo, hi), noise in zip(batches, noises):
            with torch.inference_mode():
                images = sampler(noise)
            _check_images(images, hi - lo, sampler)
            for stat in statistics:
                batch = stat(images)
                check_finite(stat.name, batch, lo, design.name)
                if stat.name not in values:
                    values[stat.name] = np.empty((last - first, *batch.shape[1:]))
                elif batch.shape[1:] != values[stat.name].shape[1:]:
                    raise ValueError(
                        f"statistic {stat.name!r} changed shape from {values[stat.name].shape[1:]} "
                        f"to {batch.shape[1:]} between batches"
                    )
                values[stat.name][lo - first : hi - first] = batch
            on_batch(hi - lo)
        return values


def _one_ahead(pool: Executor, make: Callable, arguments: Sequence[tuple]) -> Iterator:
    """``make(*a)`` for each ``a`` in order, each made on ``pool`` while the one before is used."""
    future = pool.submit(make, *arguments[0]) if arguments else None
    for k in range(len(arguments)):
        made = future.result()
        if k + 1 < len(arguments):
            future = pool.submit(make, *arguments[k + 1])
        yield made
