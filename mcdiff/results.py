"""Result objects: the xarray DataTree with ``/summary`` and ``/draws``, saved to NetCDF or Zarr.

Schema (see ARCHITECTURE.md):

- ``/summary``: one variable per statistic, dims ``("design", "summary", *own_dims)`` with
  ``summary`` in :data:`~mcdiff.estimators.SUMMARY_FIELDS`, plus ``n_evals(design)`` and
  ``nfe(design)`` and the coordinate ``noise(design)``; attributes record the confidence
  level, model, sampler settings, seed, mcdiff version and ``draws`` (where per-evaluation
  values went: ``"memory"``, ``"store"`` or ``"none"``).
- ``/moments``: one variable per statistic, dims ``("design", "moment", *own_dims)`` with
  ``moment`` in :data:`~mcdiff.moments.MOMENT_FIELDS`, plus ``n_groups(design)`` and
  ``group_size(design)``: the streaming accumulators, enough to recompute ``/summary`` and
  :func:`variance_map` (:func:`result_moments`).
- ``/draws`` (only where the run kept per-evaluation values in memory): one variable per
  statistic, dims ``("design", "draw", *own_dims)``, with coordinates ``group(design, draw)``,
  ``address(draw)`` and ``noise(design)``. Values kept in a store instead are read lazily with
  :func:`mcdiff.store.open_draws`.

Multi-fidelity results (:func:`build_multifidelity_result`) have the same ``/summary`` (plus
``pilot_nfe(design)``) and, instead of ``/draws``, ``/levels``: one variable per statistic,
dims ``("design", "level", "level_summary", *own_dims)`` with ``level_summary`` in
:data:`LEVEL_FIELDS`, and per design and level the design name, ``n_evals``, ``n_groups``,
``pilot_n_evals`` and ``nfe``; coordinates ``solver(level)`` (the scheduler class name),
``steps(level)``, ``sample_nfe(level)`` (NFE of one sample at that fidelity) and
``cost_per_eval(level)`` (NFE of one evaluation of the level: ``sample_nfe`` of the level and
of the one below it).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np
import xarray as xr

from mcdiff.atomic import check_directory, replace_atomically
from mcdiff.estimators import (
    SUMMARY_FIELDS,
    VARIANCE_FIELDS,
    moments_of,
    relative_efficiency_vs_mc,
    spread_interval,
    summarize_moments,
)
from mcdiff.moments import MOMENT_FIELDS, GroupMoments
from mcdiff.targets import TARGET_FIELDS

LEVEL_FIELDS = (
    "mean",
    "std_error",
    "variance_per_eval",
    "effective_variance",
    "pilot_effective_variance",
    "weight",
    "coefficient",
)
"""Labels of the ``level_summary`` coordinate of ``/levels``: the level values' mean, its
standard error, their pooled variance per evaluation, ``n · std_error^2`` (variance per
evaluation under the level's design) in the final run and in the pilot (NaN without one), the
weight of the level's mean in the sum, and ``beta``, the coefficient of ``f_{l-1}`` in the
level values ``f_l - beta f_{l-1}`` (0 at level 0)."""


def mcdiff_version() -> str:
    """Installed mcdiff version, or ``"unknown"`` when run from a bare source tree."""
    try:
        return metadata.version("mcdiff")
    except metadata.PackageNotFoundError:
        return "unknown"


Layout = dict[str, tuple[tuple[str, ...], dict]]
"""Per statistic its own dims and their coordinates: ``{name: (own_dims, {dim: values})}``."""


def summary_dataset(
    moments: dict[str, dict[str, GroupMoments]], layout: Layout, confidence: float, nfe_per_eval: int = 1
) -> xr.Dataset:
    """The ``/summary`` Dataset from each design's accumulated moments ``{design: {statistic: moments}}``.

    ``relative_efficiency_vs_mc`` is filled when design ``"mc"`` is among the designs.
    """
    designs = list(moments)
    summary = {}
    for name, (own_dims, coords) in layout.items():
        rows = []
        for design in designs:
            fields = summarize_moments(moments[design][name], confidence)
            rows.append(np.stack([fields[f] for f in SUMMARY_FIELDS]))
        data = np.stack(rows)
        _warn_degenerate(name, designs, data[:, SUMMARY_FIELDS.index("std_error")])
        if "mc" in designs:
            width = SUMMARY_FIELDS.index("ci_width")
            vs_mc = SUMMARY_FIELDS.index("relative_efficiency_vs_mc")
            data[:, vs_mc] = relative_efficiency_vs_mc(data[designs.index("mc"), width], data[:, width])
        summary[name] = xr.DataArray(data, dims=("design", "summary", *own_dims), coords=coords)
    n_evals = np.array([next(iter(moments[d].values())).n_evals for d in designs])
    out = xr.Dataset(summary, coords={"design": designs, "summary": list(SUMMARY_FIELDS)})
    out["n_evals"] = ("design", n_evals)
    out["nfe"] = ("design", n_evals * nfe_per_eval)
    out.attrs["confidence"] = confidence
    return out


def _warn_degenerate(name: str, designs: Sequence[str], std_errors: np.ndarray) -> None:
    """A ``RuntimeWarning`` for each design whose interval has width 0 at some component (all group means equal)."""
    for design, errors in zip(designs, std_errors):
        zero = int(np.sum(np.asarray(errors) == 0))
        if zero:
            warnings.warn(
                f"statistic {name!r} under design {design!r}: the interval has width 0 at {zero} of "
                f"{np.size(errors)} components (every group mean is equal: a discrete statistic, or a constant "
                "one); its relative efficiency is NaN there. With a bounded statistic, a finite-sample interval "
                "holds (mcdiff.targets.Mean(..., interval='betting', bounds=...)); or use more groups",
                RuntimeWarning,
                stacklevel=3,
            )


def moments_dataset(moments: dict[str, dict[str, GroupMoments]], layout: Layout) -> xr.Dataset:
    """The ``/moments`` Dataset: per statistic ``(design, moment, *own_dims)``, with ``n_groups`` and ``group_size``."""
    designs = list(moments)
    data = {
        name: xr.DataArray(
            np.stack([np.stack([moments[d][name].sums[f] for f in MOMENT_FIELDS]) for d in designs]),
            dims=("design", "moment", *own_dims),
            coords=coords,
        )
        for name, (own_dims, coords) in layout.items()
    }
    first = [next(iter(moments[d].values())) for d in designs]
    out = xr.Dataset(data, coords={"design": designs, "moment": list(MOMENT_FIELDS)})
    out["n_groups"] = ("design", [m.n_groups for m in first])
    out["group_size"] = ("design", [m.group_size for m in first])
    return out


def result_moments(result: xr.DataTree, statistic: str) -> dict[str, GroupMoments]:
    """``{design: GroupMoments}`` of one statistic, restored from a result's ``/moments``."""
    if "moments" not in result.children:
        raise ValueError("this result has no /moments (it is not from mcdiff.estimate)")
    node = result["moments"].to_dataset()
    if statistic not in node.data_vars:
        raise ValueError(f"statistic {statistic!r} is not in this result; it has {list(node.data_vars)}")
    out = {}
    for design in node["design"].values:
        row = node.sel(design=design)
        sums = {f: row[statistic].sel(moment=f).values for f in MOMENT_FIELDS}
        out[str(design)] = GroupMoments.from_state(int(row["group_size"]), int(row["n_groups"]), sums)
    return out


def summarize_draws(draws: xr.Dataset, confidence: float, nfe_per_eval: int = 1) -> xr.Dataset:
    """The ``/summary`` Dataset recomputed from a ``/draws`` Dataset (equal to the run's own, bit for bit)."""
    designs = [str(d) for d in draws["design"].values]
    moments = {
        d: {
            name: moments_of(var.sel(design=d).values, draws["group"].sel(design=d).values)
            for name, var in draws.data_vars.items()
        }
        for d in designs
    }
    layout = {
        name: (var.dims[2:], {k: var[k].values for k in var.dims[2:] if k in var.coords})
        for name, var in draws.data_vars.items()
    }
    out = summary_dataset(moments, layout, confidence, nfe_per_eval)
    if "noise" in draws.coords:
        out = out.assign_coords(noise=draws["noise"])
    return out


def variance_map(result: xr.DataTree, statistic: str = "pixel_mean") -> xr.DataArray:
    """Variance of a statistic's values across the sampler's randomness, with a CI per design.

    For ``pixel_mean`` under a posterior sampler (e.g. DPS) this is the pixel-wise posterior
    variance map. Computed from the result's ``/moments`` (no per-evaluation values needed) by
    :func:`~mcdiff.estimators.spread_interval` (delta-method t-interval over the design's
    groups) at the result's confidence level.

    Returns
    -------
    xarray.DataArray
        dims ``("design", "summary", *own_dims)``, ``summary`` in
        :data:`~mcdiff.estimators.VARIANCE_FIELDS`.
    """
    per_design = result_moments(result, statistic)
    template = result["moments"][statistic]
    confidence = float(result["summary"].attrs["confidence"])
    rows = []
    for moments in per_design.values():
        fields = spread_interval(moments, confidence)
        rows.append(np.stack([fields[f] for f in VARIANCE_FIELDS]))
    own_dims = template.dims[2:]
    coords = {"design": list(per_design), "summary": list(VARIANCE_FIELDS)}
    coords.update({d: template[d].values for d in own_dims if d in template.coords})
    out = xr.DataArray(
        np.stack(rows), dims=("design", "summary", *own_dims), coords=coords, name=f"{statistic}_variance"
    )
    out.attrs["confidence"] = confidence
    return out


def targets_dataset(targets: Sequence, fields: dict[str, dict[str, dict[str, np.ndarray]]]) -> xr.Dataset:
    """The ``/targets`` Dataset: one variable per target, dims ``("design", [f"{name}_level",] "target_summary")``.

    ``fields`` is ``{design: {target name: {field: array}}}`` (:meth:`mcdiff.targets.Target.compute`);
    each variable's attributes say its ``kind``, ``statistics``, ``component`` and options.
    """
    designs = list(fields)
    data = {}
    for target in targets:
        rows = np.stack([np.stack([fields[d][target.name][f] for f in TARGET_FIELDS], axis=-1) for d in designs])
        dims, coords = ("design", "target_summary"), {}
        if target.levels is not None:
            dims = ("design", f"{target.name}_level", "target_summary")
            coords = {f"{target.name}_level": list(target.levels)}
        attrs = {
            "kind": target.kind,
            "statistics": ",".join(target.statistics),
            "component": -1 if target.component is None else target.component,
            **{k: str(v) for k, v in target.options if k not in ("levels", "fn")},
        }
        data[target.name] = xr.DataArray(rows, dims=dims, coords=coords, attrs=attrs)
    return xr.Dataset(data, coords={"design": designs, "target_summary": list(TARGET_FIELDS)})


def build_result(
    moments: dict[str, dict[str, GroupMoments]],
    layout: Layout,
    confidence: float,
    attrs: dict,
    *,
    noise: dict[str, str],
    draws: xr.Dataset | None = None,
    targets: xr.Dataset | None = None,
) -> xr.DataTree:
    """A result DataTree from each design's moments; ``attrs`` (seed, model settings) go on ``/summary``.

    ``noise`` describes each design's noise (a coordinate of ``/summary``); ``draws``, when
    the run kept per-evaluation values, becomes ``/draws``; ``targets`` (:func:`targets_dataset`)
    becomes ``/targets``.
    """
    nfe = int(attrs.get("nfe_per_sample", 1))
    summary = summary_dataset(moments, layout, confidence, nfe)
    summary = summary.assign_coords(noise=("design", [noise[d] for d in moments]))
    summary.attrs.update({**attrs, "confidence": confidence, "mcdiff_version": mcdiff_version()})
    nodes = {"summary": summary, "moments": moments_dataset(moments, layout)}
    if draws is not None:
        nodes["draws"] = draws
    if targets is not None:
        nodes["targets"] = targets
    return xr.DataTree.from_dict(nodes)


@dataclass(frozen=True)
class CombinationEstimate:
    """One design combination of a multi-fidelity run: a row of ``/summary``, a slab of ``/levels``.

    Lists run over levels, coarse first; arrays have the statistic's own shape.
    """

    label: str
    """The row's ``design`` coordinate, ``"{method}+{designs}"``, e.g. ``"mlmc+amc"``."""
    designs: list[str]
    """One design name per level."""
    n_evals: list[int]
    """Evaluations of the final run, per level."""
    n_groups: list[int]
    """Independent groups (evaluations, pairs, replicates) of the final run, per level."""
    pilot_n_evals: list[int]
    """Evaluations of the pilot run, per level (0 where a level had none)."""
    nfe: int
    """Network function evaluations of the final run."""
    pilot_nfe: int
    """Network function evaluations of the pilot run."""
    level_costs: np.ndarray
    """NFE of one evaluation of each level ``(L,)``: its fidelity's and the one below's."""
    summary: dict[str, dict[str, np.ndarray]]
    """``{statistic: {field: array}}`` over :data:`~mcdiff.estimators.SUMMARY_FIELDS`."""
    levels: dict[str, list[dict[str, np.ndarray]]]
    """``{statistic: [{field: array} per level]}`` over :data:`LEVEL_FIELDS`."""


def build_multifidelity_result(
    rows: Sequence[CombinationEstimate],
    statistics: list,
    level_info: dict[str, list],
    confidence: float,
    attrs: dict,
) -> xr.DataTree:
    """A multi-fidelity result DataTree (``/summary`` and ``/levels``), a design row per combination.

    ``level_info`` holds one entry per level for each of ``solver`` (scheduler class name),
    ``steps`` and ``sample_nfe``; they become coordinates along ``level``.
    """
    labels = [row.label for row in rows]
    summary, levels = {}, {}
    for stat in statistics:
        first = np.asarray(rows[0].summary[stat.name]["estimate"])
        own_dims = stat.own_dims(first[None])
        coords = {d: stat.coords[d] for d in own_dims if d in stat.coords}
        summary[stat.name] = xr.DataArray(
            np.stack([np.stack([row.summary[stat.name][f] for f in SUMMARY_FIELDS]) for row in rows]),
            dims=("design", "summary", *own_dims),
            coords=coords,
        )
        levels[stat.name] = xr.DataArray(
            np.stack(
                [
                    np.stack([np.stack([level[f] for f in LEVEL_FIELDS]) for level in row.levels[stat.name]])
                    for row in rows
                ]
            ),
            dims=("design", "level", "level_summary", *own_dims),
            coords=coords,
        )
    counts = np.array([row.n_evals for row in rows])
    costs = np.asarray(rows[0].level_costs)
    summary_ds = xr.Dataset(summary, coords={"design": labels, "summary": list(SUMMARY_FIELDS)})
    summary_ds["n_evals"] = ("design", counts.sum(axis=1))
    summary_ds["nfe"] = ("design", [row.nfe for row in rows])
    summary_ds["pilot_nfe"] = ("design", [row.pilot_nfe for row in rows])
    summary_ds.attrs.update({**attrs, "confidence": confidence, "mcdiff_version": mcdiff_version()})
    levels_ds = xr.Dataset(
        levels,
        coords={
            "design": labels,
            "level": np.arange(len(costs)),
            "level_summary": list(LEVEL_FIELDS),
            "solver": ("level", [str(s) for s in level_info["solver"]]),
            "steps": ("level", [int(s) for s in level_info["steps"]]),
            "sample_nfe": ("level", [int(n) for n in level_info["sample_nfe"]]),
            "cost_per_eval": ("level", costs),
        },
    )
    levels_ds["level_design"] = (("design", "level"), [row.designs for row in rows])
    levels_ds["n_evals"] = (("design", "level"), counts)
    levels_ds["n_groups"] = (("design", "level"), [row.n_groups for row in rows])
    levels_ds["pilot_n_evals"] = (("design", "level"), [row.pilot_n_evals for row in rows])
    levels_ds["nfe"] = (("design", "level"), (counts * costs).astype(int))
    return xr.DataTree.from_dict({"summary": summary_ds, "levels": levels_ds})


RESULT_SUFFIXES = (".nc", ".nc4", ".netcdf", ".zarr")
"""File name endings :func:`save_result` writes: NetCDF-4 files, or a Zarr directory store (``.zarr``)."""

RECORD = "mcdiff_result"
"""Root attribute :func:`save_result` writes and :func:`load_result` checks: a JSON record of
the format, and of every variable of every group its dims, shape, dtype kind and SHA-256."""

RECORD_FORMAT = "mcdiff-result/1"


def check_result_path(path: str | Path) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` if a result can be saved there, else raise ``ValueError``.

    The name must end in one of :data:`RESULT_SUFFIXES`, its directory must exist and be
    writable, and it must not be an existing directory unless it is a ``.zarr`` store. Call it
    before the work whose result is to be saved there; :func:`save_result` calls it too.
    """
    path = Path(path)
    if path.suffix not in RESULT_SUFFIXES:
        raise ValueError(
            f"result path must end in {', '.join(RESULT_SUFFIXES)} (NetCDF, or a Zarr directory), got {str(path)!r}"
        )
    check_directory(path.parent, f"result {str(path)!r}")
    if path.is_dir() and path.suffix != ".zarr":
        raise ValueError(f"cannot write result {str(path)!r}: it is a directory")
    return path


def save_result(result: xr.DataTree, path: str | Path) -> Path:
    """Save a result to NetCDF (``.nc``, ``.nc4``, ``.netcdf``) or Zarr (``.zarr``), atomically.

    The result is written under a temporary name beside ``path``, flushed to disk and renamed
    into place (:func:`~mcdiff.atomic.replace_atomically`), so an earlier result at ``path``
    is replaced whole or, when writing fails (a full disk), left as it was. The root attribute
    :data:`RECORD` lists every variable with its SHA-256 for :func:`load_result` to check.

    Raises
    ------
    ValueError
        For a path :func:`check_result_path` refuses.
    OSError
        ``ENOSPC``, one line naming the path and the free space, when the disk fills.
    """
    path = check_result_path(path)
    tree = result.copy(deep=False)
    tree.attrs = {**result.attrs, RECORD: json.dumps(_record(result))}
    if path.suffix == ".zarr":
        write = partial(tree.to_zarr, mode="w")
    else:
        write = tree.to_netcdf
    return replace_atomically(path, write)


def load_result(path: str | Path) -> xr.DataTree:
    """Load a result saved by :func:`save_result`, fully into memory, and check it is whole.

    Raises
    ------
    ValueError
        One line naming the file when it is missing, cannot be read (truncated, not NetCDF or
        Zarr), has no :data:`RECORD` (not written by :func:`save_result` of mcdiff >= 0.3.0),
        or differs from its record: a group or variable missing, other dims or shape, or
        values whose SHA-256 differs.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no result at {str(path)!r}")
    engine = "zarr" if path.suffix == ".zarr" else None
    try:
        with xr.open_datatree(path, engine=engine) as opened:
            tree = opened.load()
    except Exception as err:  # netCDF, HDF5 and Zarr each raise their own types
        raise ValueError(
            f"result {str(path)!r} cannot be read, it is damaged or not a result: "
            f"{type(err).__name__}: {' '.join(str(err).split())}"
        ) from None
    recorded = tree.attrs.get(RECORD)
    try:
        record = json.loads(recorded)
    except (TypeError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ValueError(
            f"result {str(path)!r} has no {RECORD_FORMAT} record: it was not written (or not finished) "
            "by mcdiff.save_result of mcdiff >= 0.3.0; xarray.open_datatree reads it unchecked"
        )
    problems = _differences(record["variables"], _record(tree)["variables"])
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ValueError(f"result {str(path)!r} is damaged, it differs from what was saved: {shown}")
    attrs = dict(tree.attrs)
    del attrs[RECORD]
    tree.attrs = attrs
    return tree


def _record(tree: xr.DataTree) -> dict:
    """:data:`RECORD` of ``tree``: ``{"format", "variables": {"/group/name": entry}}``.

    An entry holds ``dims``, ``shape``, ``kind`` (numeric or text) and the SHA-256 of the
    values, numbers as little-endian float64 and text as UTF-8, so that encodings which
    round-trip the values (int8-coded booleans, fixed or variable-length strings) agree.
    """
    variables = {}
    for node in tree.subtree:
        for name, var in node.variables.items():
            values = np.asarray(var.values)
            numeric = values.dtype.kind in "biuf"
            if numeric:
                data = np.ascontiguousarray(values, dtype="<f8").tobytes()
            else:
                data = "\x1f".join(str(v) for v in values.ravel()).encode()
            variables[f"{node.path.rstrip('/')}/{name}"] = {
                "dims": list(var.dims),
                "shape": list(values.shape),
                "kind": "number" if numeric else "text",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
    return {"format": RECORD_FORMAT, "variables": variables}


def _differences(saved: dict, read: dict) -> list[str]:
    """How every variable whose record entry differs was saved and was read, missing ones included."""
    out = []
    for name in sorted(set(saved) | set(read)):
        a, b = saved.get(name), read.get(name)
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"{name} {'absent' if a is None else 'missing'} (saved {'without' if a is None else 'with'} it)")
            continue
        keys = [k for k in ("dims", "shape", "kind") if a.get(k) != b.get(k)]
        if keys:
            out.append(f"{name} saved with {', '.join(f'{k}={a[k]}' for k in keys)}, read with "
                       f"{', '.join(f'{k}={b[k]}' for k in keys)}")
        else:
            out.append(f"{name} holds other values than were saved (SHA-256 differs)")
    return out


TABLE_ALIGNMENTS = ("left", "right")
"""How :func:`text_table` pads cells: ``left`` for labels, ``right`` for columns of numbers."""


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "left") -> str:
    """A plain-text table: every column padded to its widest cell, two spaces apart.

    A rule of dashes, one per column as wide as it, goes under the header; trailing spaces
    are cut from every line. :func:`format_table`, :func:`format_levels` and the
    diagnostics report (:func:`mcdiff.diagnostics.format_report`) are drawn by it.

    Parameters
    ----------
    header : sequence of str
        Column names.
    rows : sequence of sequences of str
        Cells, each row as long as ``header``.
    align : str
        One of :data:`TABLE_ALIGNMENTS`.
    """
    if align not in TABLE_ALIGNMENTS:
        raise ValueError(f"align must be one of {TABLE_ALIGNMENTS}, got {align!r}")
    table = [list(header), *(list(row) for row in rows)]
    if any(len(row) != len(header) for row in table):
        lengths = sorted({len(row) for row in table})
        raise ValueError(f"every row must have {len(header)} cells, got rows of {lengths}")
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    pad = str.ljust if align == "left" else str.rjust
    lines = ["  ".join(pad(cell, w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(result: xr.DataTree) -> str:
    """A plain-text table: one row per statistic, design and (for vectors) component.

    Pixel maps and other statistics with more than 4 values per draw are shown as the mean
    over their values of each column (marked ``mean of K``).
    """
    summary = result["summary"].to_dataset()
    level = summary.attrs.get("confidence", float("nan"))
    header = ("statistic", "design", "estimate", f"{level:.0%} CI", "CI width", "NFE", "rel. eff.", "per NFE", "vs MC")
    rows = []
    for name, var in summary.data_vars.items():
        if "summary" not in var.dims:
            continue
        stacked = var.stack(component=var.dims[2:]) if var.ndim > 2 else var.expand_dims(component=[0], axis=-1)
        size = stacked.sizes["component"]
        for design in summary["design"].values:
            block = stacked.sel(design=design)
            if size > 4:
                parts = [(f"{name} (mean of {size})", block.mean("component"))]
            else:
                parts = [(_component_label(name, block, k, size), block.isel(component=k)) for k in range(size)]
            for label, cell in parts:
                value = {f: float(cell.sel(summary=f)) for f in SUMMARY_FIELDS}
                rows.append(
                    (
                        label,
                        str(design),
                        f"{value['estimate']:.5g}",
                        f"[{value['ci_lower']:.5g}, {value['ci_upper']:.5g}]",
                        f"{value['ci_width']:.3g}",
                        str(int(summary["nfe"].sel(design=design))),
                        f"{value['relative_efficiency']:.3g}",
                        f"{value['relative_efficiency_per_nfe']:.3g}",
                        f"{value['relative_efficiency_vs_mc']:.3g}",
                    )
                )
    return text_table(header, rows)


def format_targets(result: xr.DataTree) -> str:
    """A plain-text table of ``/targets``: one row per target, level (quantile, spread) and design."""
    node = result["targets"].to_dataset()
    level = result["summary"].attrs.get("confidence", float("nan"))
    header = ("target", "design", "estimate", f"{level:.0%} CI", "CI width", "rel. eff.", "corrected")
    rows = []
    for name, var in node.data_vars.items():
        extra = [d for d in var.dims if d not in ("design", "target_summary")]
        labels = [(name, {})] if not extra else [
            (f"{name} {v if isinstance(v, str) else f'{v:g}'}", {extra[0]: v}) for v in var[extra[0]].values
        ]
        for label, where in labels:
            for design in node["design"].values:
                cell = var.sel(design=design, **where)
                value = {f: float(cell.sel(target_summary=f)) for f in TARGET_FIELDS}
                rows.append(
                    (
                        label,
                        str(design),
                        f"{value['estimate']:.5g}",
                        f"[{value['ci_lower']:.5g}, {value['ci_upper']:.5g}]",
                        f"{value['ci_width']:.3g}",
                        f"{value['relative_efficiency']:.3g}",
                        f"{value['relative_efficiency_corrected']:.3g}",
                    )
                )
    return text_table(header, rows)


def format_levels(result: xr.DataTree) -> str:
    """A plain-text table of a multi-fidelity result's ``/levels``: one row per design and level.

    Shows solver, steps, NFE per sample, design, evaluations, NFE, and for each statistic (mean over its components)
    the level mean, its standard error, the effective variance per evaluation and ``beta``.
    """
    levels = result["levels"].to_dataset()
    stats = [name for name, var in levels.data_vars.items() if "level_summary" in var.dims]
    header = ("design", "level", "solver", "steps", "NFE/sample", "level design", "n", "NFE")
    header += tuple(f"{name} {part}" for name in stats for part in ("mean", "s.e.", "eff. var", "beta"))
    rows = []
    for design in levels["design"].values:
        for level in levels["level"].values:
            cell = levels.sel(design=design, level=level)
            row = (str(design), str(level), str(cell["solver"].values), str(int(cell["steps"])),
                   str(int(cell["sample_nfe"])), str(cell["level_design"].values),
                   str(int(cell["n_evals"])), str(int(cell["nfe"])))
            for name in stats:
                var = cell[name]
                value = {f: float(var.sel(level_summary=f).mean()) for f in LEVEL_FIELDS}
                row += (f"{value['mean']:.5g}", f"{value['std_error']:.3g}", f"{value['effective_variance']:.3g}",
                        f"{value['coefficient']:.3g}")
            rows.append(row)
    return text_table(header, rows)


def _component_label(name: str, block: xr.DataArray, k: int, size: int) -> str:
    if size == 1:
        return name
    index = block["component"].values[k]
    return f"{name}[{index if not isinstance(index, tuple) else ','.join(map(str, index))}]"


def to_arviz(result: xr.DataTree, design: str):
    """The draws of one design as an arviz object (one chain, ``draw`` in address order).

    Works with arviz 0.x (returns ``InferenceData``) and 1.x (returns a ``DataTree``), so
    ``arviz.summary``, ``arviz.ess`` and the plots accept it. Antithetic partners are
    adjacent draws, so arviz's effective sample size sees their negative correlation.
    """
    try:
        import arviz
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("to_arviz needs arviz: pip install 'mcdiff[arviz]'") from err
    if "draws" not in result.children:
        raise ValueError(
            "this result holds no /draws: the run did not keep per-evaluation values in memory "
            f"(draws={result['summary'].attrs.get('draws', '?')!r}); run with draws='memory', or read a store's "
            "values with mcdiff.open_draws"
        )
    draws = result["draws"].to_dataset()
    designs = list(draws["design"].values)
    if design not in designs:
        raise ValueError(f"design {design!r} is not in this result; it has {designs}")
    sel = draws.sel(design=design).drop_vars(["group", "address", "design", "noise"], errors="ignore")
    posterior = {name: var.values[None] for name, var in sel.data_vars.items()}
    dims = {name: list(var.dims[1:]) for name, var in sel.data_vars.items()}
    coords = {d: sel[d].values for d in sel.coords if d not in ("draw",)}
    if int(arviz.__version__.split(".")[0]) >= 1:
        return arviz.from_dict({"posterior": posterior}, dims=dims, coords=coords)
    return arviz.from_dict(posterior=posterior, dims=dims, coords=coords)
