"""The runner: batches of addresses → noise → sampler → statistics → result.

This is the only module with loops over evaluations, devices and progress bars. Batches
are cut at multiples of the design's unit, so antithetic partners always share a batch;
noise is regenerated from ``(seed, design, address)``, so the result does not depend on the
batch size.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from mcdiff.designs import Design, check_seed, get_design
from mcdiff.estimators import check_confidence
from mcdiff.functionals import Statistic, get_statistic
from mcdiff.results import build_result
from mcdiff.samplers.base import Sampler

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
) -> dict[str, np.ndarray]:
    """Statistic values ``{name: (n_evals, *own_shape)}`` of every evaluation of a design."""
    step = batch_size - batch_size % design.unit
    spec = sampler.noise_spec
    values: dict[str, np.ndarray] = {}
    for start in range(0, n_evals, step):
        stop = min(n_evals, start + step)
        noise = {
            name: torch.from_numpy(z).to(device=sampler.device, dtype=sampler.dtype)
            for name, z in design.draw(spec, seed, start, stop, n_evals).items()
        }
        with torch.inference_mode():
            images = sampler(noise)
        _check_images(images, stop - start, sampler)
        for stat in statistics:
            batch = stat(images)
            bad = ~np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)
            if bad.any():
                addresses = (np.flatnonzero(bad) + start).tolist()
                raise ValueError(
                    f"statistic {stat.name!r} is not finite (NaN or inf) at evaluations "
                    f"{addresses[:10]}{' ...' if len(addresses) > 10 else ''} of design {design.name!r}"
                )
            if stat.name not in values:
                values[stat.name] = np.empty((n_evals, *batch.shape[1:]))
            elif batch.shape[1:] != values[stat.name].shape[1:]:
                raise ValueError(
                    f"statistic {stat.name!r} changed shape from {values[stat.name].shape[1:]} "
                    f"to {batch.shape[1:]} between batches"
                )
            values[stat.name][start:stop] = batch
        on_batch(stop - start)
    return values


def estimate(
    sampler: Sampler,
    statistics: Sequence[str | Statistic | Callable] = ("brightness",),
    designs: Sequence[str | Design] = ("mc", "amc", "rqmc"),
    n_evals: int = 1024,
    seed: int = 0,
    confidence: float = 0.95,
    batch_size: int = 256,
    progress: bool | None = None,
) -> xr.DataTree:
    """Estimate ``E[f(G(z))]`` for each statistic under each noise design.

    Every design spends the same ``n_evals`` model evaluations, so their CI widths compare
    directly. All input is checked before the first evaluation.

    Parameters
    ----------
    sampler : Sampler
        The model (see :mod:`mcdiff.samplers`).
    statistics : sequence
        Built-in names (``"brightness"``, ``"pixel_mean"``, ``"contrast"``, ``"centroid"``),
        :class:`~mcdiff.functionals.Statistic` objects or callables ``images -> (B, ...)``.
    designs : sequence
        ``"mc"``, ``"amc"``, ``"rqmc"``, ``"amc-rqmc"`` or :class:`~mcdiff.designs.Design`.
    n_evals : int
        Model evaluations per design.
    seed : int
        Noise of every evaluation is a function of ``(seed, design, address)``.
    confidence : float
        Level of the t-intervals, in (0, 1).
    batch_size : int
        Evaluations per sampler call; rounded down to whole pairs.
    progress : bool, optional
        Show a progress bar; by default only when stderr is a terminal.

    Returns
    -------
    xarray.DataTree
        ``/summary`` and ``/draws`` as described in :mod:`mcdiff.results`.

    Examples
    --------
    >>> import mcdiff
    >>> result = mcdiff.estimate(mcdiff.GaussianSampler(), ["brightness"], ["mc", "amc"],
    ...                          n_evals=64, progress=False)
    >>> float(result["summary"]["brightness"].sel(design="mc", summary="estimate")) > 0
    True
    """
    seed = check_seed(seed)
    confidence = check_confidence(confidence)
    stats = [get_statistic(s) for s in statistics]
    resolved = [get_design(d) for d in designs]
    for label, names in (("statistic", [s.name for s in stats]), ("design", [d.name for d in resolved])):
        if not names:
            raise ValueError(f"at least one {label} is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"{label} names must be unique, got {names}")
    for design in resolved:
        design.check_n(n_evals)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < design.unit:
            raise ValueError(
                f"batch_size={batch_size!r} cannot hold a pair of design {design.name!r}: "
                f"use an integer >= {design.unit}"
            )
    if progress is None:
        progress = sys.stderr.isatty()

    per_design = {}
    with tqdm(total=n_evals * len(resolved), disable=not progress, unit="eval", desc="mcdiff") as bar:
        for design in resolved:
            bar.set_postfix_str(design.name)
            per_design[design.name] = evaluate_design(
                sampler, stats, design, n_evals, seed, batch_size, on_batch=bar.update
            )
    draws = _draws_dataset(per_design, resolved, stats, sampler, n_evals)
    attrs = {**sampler.describe(), "seed": seed}
    return build_result(draws, confidence, attrs)


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
