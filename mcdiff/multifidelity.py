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

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from mcdiff.blocks import evaluate_design
from mcdiff.designs import Design, get_design, stream_seed
from mcdiff.estimators import (
    combine_levels,
    control_variate_coefficient,
    level_allocation,
    summarize,
)
from mcdiff.functionals import Statistic, get_statistic
from mcdiff.results import CombinationEstimate, build_multifidelity_result
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


def _level_values(fine: dict, coarse: dict | None, beta: dict) -> dict[str, np.ndarray]:
    """Values of one level: ``f_l - beta f_{l-1}`` per statistic (``f_0`` alone at level 0)."""
    if coarse is None:
        return dict(fine)
    return {name: fine[name] - beta[name] * coarse[name] for name in fine}


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


def _on_channels(stat: Statistic, part: str, channels: int) -> Statistic:
    """``stat`` of the fine (first ``channels``) or coarse (last) half of coupled images."""
    window = slice(0, channels) if part == "fine" else slice(channels, 2 * channels)
    return Statistic(f"{part}:{stat.name}", lambda images: stat(images[:, window]), stat.dims, stat.coords)


class _LevelRunner:
    """Runs the coupled evaluations of one level: the same addresses at both fidelities."""

    def __init__(self, samplers, stats, seed, batch_size, on_batch: Callable[[int], None]):
        self.samplers, self.stats, self.seed = samplers, stats, seed
        self.batch_size, self.on_batch = batch_size, on_batch
        channels = samplers[0].image_shape[0]
        self.coupled_stats = [_on_channels(s, part, channels) for part in ("fine", "coarse") for s in stats]

    def __call__(self, level: int, design: Design, n: int, stage: int):
        """``(f_l values, f_{l-1} values)`` on the same addresses; ``(f_0 values, None)`` at level 0."""
        seed = stream_seed(self.seed, stage, level)
        if level == 0:
            return evaluate_design(self.samplers[0], self.stats, design, n, seed, self.batch_size, self.on_batch), None
        coupled = _CoupledSampler(self.samplers[level], self.samplers[level - 1])
        values = evaluate_design(coupled, self.coupled_stats, design, n, seed, self.batch_size, self.on_batch)
        return tuple({s.name: values[f"{part}:{s.name}"] for s in self.stats} for part in ("fine", "coarse"))


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
) -> xr.DataTree:
    """Estimate ``E[f(G_L(z))]`` at the finest fidelity with a multi-fidelity estimator.

    Parameters
    ----------
    sampler : Sampler
        A deterministic sampler with ``with_steps`` (e.g. DDIM with ``eta=0``), and
        ``with_scheduler`` for levels with a solver of their own (as
        :class:`~mcdiff.samplers.diffusion.DiffusionSampler` has); its own step count is not used.
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
    seed = check_seed(seed)
    confidence = check_confidence(confidence)
    levels = check_fidelities(fidelities)
    check_method(method, levels)
    if (budget_nfe is None) == (n_evals is None):
        raise ValueError("give exactly one of budget_nfe (allocated from a pilot) and n_evals (per level)")
    stats = [get_statistic(s) for s in statistics]
    check_unique_names("statistic", [s.name for s in stats])
    n_levels = len(levels)
    combos = _resolve_combinations(designs, n_levels)
    labels = [f"{method}+{label}" for label, _ in combos]
    check_unique_names("design combination", labels)
    samplers = fidelity_samplers(sampler, levels)
    sample_nfe = [int(s.nfe) for s in samplers]
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
    if progress is None:
        progress = sys.stderr.isatty()

    rows = []
    with tqdm(disable=not progress, unit="eval", desc="mcdiff multifidelity") as bar:
        run_level = _LevelRunner(samplers, stats, seed, batch_size, bar.update)
        for (label, level_designs), row_label in zip(combos, labels):
            bar.set_postfix_str(row_label)
            rows.append(
                _estimate_combination(
                    run_level,
                    stats,
                    level_designs,
                    label=row_label,
                    method=method,
                    costs=costs,
                    fine_nfe=sample_nfe[-1],
                    budget_nfe=budget_nfe,
                    n_evals=n_evals,
                    pilot=pilot,
                    pilot_levels=pilot_levels,
                    confidence=confidence,
                )
            )
    attrs = {
        **samplers[-1].describe(),
        "seed": seed,
        "method": method,
        "fidelities": [f.steps for f in levels],
        "solvers": [solver_name(s) for s in samplers],
        "budget_nfe": -1 if budget_nfe is None else int(budget_nfe),
        "allocated_for": stats[0].name,
        "interval": "t with Welch-Satterthwaite degrees of freedom over independent levels",
    }
    level_info = {
        "solver": [solver_name(s) for s in samplers],
        "steps": [f.steps for f in levels],
        "sample_nfe": sample_nfe,
    }
    return build_multifidelity_result(rows, stats, level_info, confidence, attrs)


def _estimate_combination(
    run_level: _LevelRunner,
    stats: Sequence[Statistic],
    level_designs: Sequence[Design],
    *,
    label: str,
    method: str,
    costs: np.ndarray,
    fine_nfe: int,
    budget_nfe: int | None,
    n_evals: Sequence[int] | None,
    pilot: int,
    pilot_levels: tuple[int, ...],
    confidence: float,
) -> CombinationEstimate:
    """Pilot, coefficients, allocation, final run and summaries of one design combination.

    ``costs`` ``(L,)`` are the NFE of one evaluation per level and ``fine_nfe`` those of one
    sample at the finest fidelity; exactly one of ``budget_nfe`` (allocated from the pilot) and
    ``n_evals`` (per level) is given; ``pilot_levels`` are the levels the pilot runs on.

    Efficiency is against plain MC at the finest fidelity: ``sigma_L^2 / (N · std_error^2)`` per
    evaluation (``N = sum_l n_l`` noise addresses) and ``sigma_L^2 c_L / ((NFE + pilot NFE) ·
    std_error^2)`` per NFE, with ``sigma_L^2`` the pooled variance of ``f_L`` at the top level and
    ``c_L`` its NFE per sample.
    """
    n_levels = len(level_designs)
    pilot_runs = {level: run_level(level, level_designs[level], pilot, _PILOT) for level in pilot_levels}
    if method == "cv":
        fine, coarse = pilot_runs[1]
        beta = {s.name: control_variate_coefficient(fine[s.name], coarse[s.name]) for s in stats}
        weights = {s.name: np.stack([beta[s.name], np.ones_like(beta[s.name])]) for s in stats}
    else:
        beta = {s.name: np.float64(1.0) for s in stats}
        weights = {s.name: np.ones(n_levels) for s in stats}
    pilot_variance = {s.name: {} for s in stats}
    for level, (fine, coarse) in pilot_runs.items():
        values = _level_values(fine, coarse, beta)
        groups = level_designs[level].group_ids(pilot)
        for s in stats:
            pilot_variance[s.name][level] = pilot * summarize(values[s.name], groups, confidence)["std_error"] ** 2
    if budget_nfe is not None:
        first = stats[0].name
        weighted = [np.mean(weights[first][level] ** 2 * pilot_variance[first][level]) for level in range(n_levels)]
        wanted = level_allocation(np.array(weighted), costs, budget_nfe)
        counts = [design.nearest_n(max(n, pilot)) for design, n in zip(level_designs, wanted)]
    else:
        counts = [int(n) for n in n_evals]

    level_fields, fine_top = {s.name: [] for s in stats}, None
    estimates, errors = {s.name: [] for s in stats}, {s.name: [] for s in stats}
    for level, (design, n) in enumerate(zip(level_designs, counts)):
        fine, coarse = run_level(level, design, n, _FINAL)
        values, groups = _level_values(fine, coarse, beta), design.group_ids(n)
        for s in stats:
            out = summarize(values[s.name], groups, confidence)
            estimates[s.name].append(out["estimate"])
            errors[s.name].append(out["std_error"])
            coefficient = beta[s.name] if coarse is not None else np.zeros_like(out["estimate"])
            level_fields[s.name].append(
                {
                    "mean": out["estimate"],
                    "std_error": out["std_error"],
                    "variance_per_eval": out["variance_per_eval"],
                    "effective_variance": n * out["std_error"] ** 2,
                    "pilot_effective_variance": pilot_variance[s.name].get(
                        level, np.full_like(out["estimate"], np.nan)
                    ),
                    "weight": np.broadcast_to(weights[s.name][level], out["estimate"].shape),
                    "coefficient": np.broadcast_to(coefficient, out["estimate"].shape),
                }
            )
        if level == n_levels - 1:
            fine_top, top_groups = fine, groups

    n_groups = np.array([len(np.unique(d.group_ids(n))) for d, n in zip(level_designs, counts)])
    nfe = int(sum(n * c for n, c in zip(counts, costs)))
    pilot_nfe = int(sum(pilot * costs[level] for level in pilot_levels))
    summary = {}
    for s in stats:
        combined = combine_levels(
            np.stack(estimates[s.name]), np.stack(errors[s.name]), n_groups, weights[s.name], confidence
        )
        fine_variance = summarize(fine_top[s.name], top_groups, confidence)["variance_per_eval"]
        with np.errstate(divide="ignore", invalid="ignore"):
            per_eval = fine_variance / (sum(counts) * combined["std_error"] ** 2)
            per_nfe = fine_variance * fine_nfe / ((nfe + pilot_nfe) * combined["std_error"] ** 2)
        summary[s.name] = {
            **combined,
            "variance_per_eval": fine_variance,
            "relative_efficiency": per_eval,
            "relative_efficiency_per_nfe": per_nfe,
            "relative_efficiency_vs_mc": np.full_like(per_eval, np.nan),
        }
    return CombinationEstimate(
        label=label,
        designs=[d.name for d in level_designs],
        n_evals=counts,
        n_groups=n_groups.tolist(),
        pilot_n_evals=[pilot if level in pilot_levels else 0 for level in range(n_levels)],
        nfe=nfe,
        pilot_nfe=pilot_nfe,
        level_costs=costs,
        summary=summary,
        levels=level_fields,
    )
