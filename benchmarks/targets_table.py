"""Targets beyond the mean on the bundled digits model: estimate, 95% interval and efficiency per design.

Two statistics, each estimated by every design (``mc``, ``amc``, ``rqmc``, ``amc-rqmc``) at
the same ``N`` evaluations over seeds ``0 .. S-1``:

- ``brightness`` of the unconditional bundled digits model (DDIM, ``--steps`` steps), ``-n``
  evaluations;
- the inpainting MSE on the missing pixels of DPS (:class:`mcdiff.InpaintingProblem`, digit
  ``--digit`` of ``load_digits``, centre box mask 25% missing, ``sigma_y = 0.05``) on the same
  model, DDIM ``--steps`` steps (``eta = 0``: the only noise is ``x_T``), ``zeta = --zeta``,
  ``--dps-n`` evaluations (a DPS step back-propagates through the network: about twice the cost).

The targets (:mod:`mcdiff.targets`) are the mean, the quantiles 0.05 / 0.5 / 0.95, two
exceedance probabilities ``P(f > c)`` with ``c`` the 0.9 and 0.99 quantiles of an MC pilot
run (seed ``--pilot-seed``, ``--pilot-n`` evaluations, for DPS ``2 · --dps-n``; independent of
the table's runs), so ``p ~ 0.1`` (t-interval) and ``p ~ 0.01`` (hedged betting interval), and
the variance and standard deviation over images. The table shows seed 0's estimate and 95% interval, and the
corrected relative efficiency (``relative_efficiency_corrected``, the ``nu / (nu - 2)`` bias
of ``1 / SE^2`` removed) as mean ± SE over the seeds. Efficiency is the library's: MC's
variance of the quantity the interval is built on over the design's (for quantiles and
exceedances, of the indicator's mean, so plain MC is exactly 1). A design whose group means
are all equal has no efficiency (NaN, e.g. the antithetic median of a symmetric statistic);
such seeds are left out of the mean and counted. Writes ``results/targets_table.md``.

    python benchmarks/targets_table.py                               # N = 1024 (DPS 512), 3 seeds (13 min on 2 shared cores)
    python benchmarks/targets_table.py -n 128 --dps-n 128 --seeds 2 --pilot-n 256 --steps 10   # a quick check
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import mcdiff
from mcdiff.inverse import make_mask
from mcdiff.targets import Exceedance, Mean, Quantiles, Spread

DESIGNS = ("mc", "amc", "rqmc", "amc-rqmc")
LEVELS = (0.05, 0.5, 0.95)

READING = """\
## What the numbers show (the default run)

**Antithetic pairs (amc)** pair each noise `z` with `-z`. The digits model's brightness is close
to an odd function of the noise about its mean (its mean gains 4.3, a within-pair correlation
near -0.77). For an exactly odd statistic the partner of a draw in the upper `p`-tail lies in
the lower one, the two indicators are disjoint (covariance `-p^2`), and a tail quantile or
exceedance gains only `(1 - p) / (1 - 2p)`: 1.056 at `p = 0.05`, 1.125 at `p = 0.1`, 1.02 at
`p = 0.01`, which is what the brightness rows show (1.05, 1.11, 1.00). At the median the
partners fall on opposite sides, the pair mean of `1{f <= q_0.5}` is nearly always 1/2, and the
median gains 2.3 (for an exactly symmetric statistic the CDF there has no variance at all:
`std_error = 0`, see `notebooks/targets.ipynb`). The variance is the mean of `(f - mean)^2`, an
even function of the deviation that both partners share: they are positively correlated and
antithetic sampling *loses* (0.66; 1/2 for an exactly odd statistic). The DPS error is far
from odd (its mean gains 1.16 only) and amc gains about as little on every target.

**RQMC** helps smooth targets: the mean (6.9 for brightness, 1.6 for the DPS error), and less the
median (2.7, 1.7), and in DPS the exceedance at `p ~ 0.1` and the variance (1.6, 1.3). An
indicator `1{f <= x}` is discontinuous in the 64-dimensional `x_T`, where scrambled Sobol' points
are little better than random ones: in the brightness tails (`q_0.05`, `q_0.95`, `P(b > c)`) the
gain is 1 within seed noise, and the variance of brightness even loses (0.79 ± 0.09).
**amc-rqmc** does not add the two gains here: 0.6 to 1.0 on everything but the mean and the
median, its tail quantiles 0.7 to 0.9 (1.5 to 2.5 SE below 1 on 3 seeds: a scrambled net's
variance may exceed MC's for a discontinuous integrand; not resolved at this size).

**Rare events need many groups.** The `p ~ 0.01` rows use the hedged betting interval, valid
at any number of groups `G` but built on the group means: with 16 Sobol' replicates its upper
end is about 0.35 however few events there are, against 0.013 for MC (1024 groups) and 0.022
for amc (512 pairs) on brightness (DPS, N = 512: 0.022 and 0.041). No valid interval can do
much better: 16 independent group means in [0, 1] that are all 0 are compatible with any mean
up to `1 - 0.025^(1/16) = 0.21`. For a rare
event use MC or amc, or RQMC with many more replicates (`SobolRQMC(replicates=...)`); the
efficiency column, a ratio of variances, does not show this.
"""
"""The reading of the default run's table, written under it (only at the default sizes)."""


def pilot_thresholds(sampler, stat, component, pilot_n: int, args) -> tuple[float, float]:
    """The 0.9 and 0.99 quantiles of an MC pilot run, to 3 significant digits."""
    target = Quantiles(name(stat), (0.9, 0.99), component=component)
    result = mcdiff.estimate(sampler, [stat], ["mc"], n_evals=pilot_n, seed=args.pilot_seed,
                             batch_size=args.batch_size, progress=False, targets=[target])
    values = result["targets"][target.name].sel(design="mc", target_summary="estimate").values
    return tuple(float(f"{v:.3g}") for v in values)


def name(stat) -> str:
    return stat if isinstance(stat, str) else stat.name


def targets_for(stat: str, component, thresholds) -> list:
    high, rare = thresholds
    return [
        Mean(stat, component=component),
        Quantiles(stat, LEVELS, component=component),
        Exceedance(stat, high, component=component),
        Exceedance(stat, rare, interval="betting", component=component),
        Spread(stat, component=component),
    ]


def rows_of(result, targets, symbol: str) -> list[tuple[str, object]]:
    """``(label, DataArray (design, target_summary))`` per target row, in the order of ``targets``."""
    rows = []
    for target in targets:
        var = result["targets"][target.name]
        if target.kind == "quantiles":
            rows += [(f"q_{p:g}", var.sel({f"{target.name}_level": p})) for p in target.levels]
        elif target.kind == "exceedance":
            label = f"P({symbol} > {target.option('threshold'):g}) [{target.option('interval')}]"
            rows.append((label, var))
        elif target.kind == "spread":
            rows += [(level, var.sel({f"{target.name}_level": level})) for level in target.levels]
        else:
            rows.append(("mean", var))
    return rows


def study(sampler, stat, component, symbol: str, n_evals: int, pilot_n: int, args) -> dict:
    """Pilot thresholds, then every design over the seeds; the cells of the tables."""
    start = time.perf_counter()
    thresholds = pilot_thresholds(sampler, stat, component, pilot_n, args)
    pilot_s = time.perf_counter() - start
    targets = targets_for(name(stat), component, thresholds)
    per_seed, flat = [], 0
    for seed in range(args.seeds):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            result = mcdiff.estimate(sampler, [stat], list(DESIGNS), n_evals=n_evals, seed=seed,
                                     batch_size=args.batch_size, progress=False, targets=targets)
        flat += sum("group means are all equal" in str(w.message) for w in caught)
        per_seed.append(rows_of(result, targets, symbol))
    return {"thresholds": thresholds, "rows": per_seed, "pilot_s": pilot_s,
            "seconds": time.perf_counter() - start, "flat_warnings": flat}


def fmt(x: float) -> str:
    return "−∞" if x == -np.inf else "∞" if x == np.inf else f"{x:.4g}"


def tables(cells: dict, seeds: int) -> list[str]:
    """Seed 0's ``estimate [CI]`` and the corrected efficiency mean ± SE over seeds, one row per target."""
    head = "| target | " + " | ".join(f"{d}: estimate [95% CI]" for d in DESIGNS) + " | " + " | ".join(
        f"{d} eff." for d in DESIGNS) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(DESIGNS))]
    labels = [label for label, _ in cells["rows"][0]]
    for i, label in enumerate(labels):
        seed0 = cells["rows"][0][i][1]
        est = []
        for d in DESIGNS:
            v = {f: float(seed0.sel(design=d, target_summary=f)) for f in ("estimate", "ci_lower", "ci_upper")}
            est.append(f"{fmt(v['estimate'])} [{fmt(v['ci_lower'])}, {fmt(v['ci_upper'])}]")
        eff = []
        for d in DESIGNS:
            e = np.array([float(rows[i][1].sel(design=d, target_summary="relative_efficiency_corrected"))
                          for rows in cells["rows"]])
            finite = e[np.isfinite(e)]
            if d == "mc":
                eff.append("1")
            elif len(finite) == 0:
                eff.append("— (SE 0)")
            else:
                se = finite.std(ddof=1) / np.sqrt(len(finite)) if len(finite) > 1 else np.nan
                text = f"{finite.mean():.2f} ± {se:.2f}" if np.isfinite(se) else f"{finite.mean():.2f}"
                eff.append(text + (f" ({len(e) - len(finite)}/{seeds} SE 0)" if len(finite) < len(e) else ""))
        lines.append(f"| {label} | " + " | ".join(est) + " | " + " | ".join(eff) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps, both studies (default 20)")
    parser.add_argument("-n", "--n-evals", type=int, default=1024, help="evaluations per design and seed")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. S-1 (default 3)")
    parser.add_argument("--dps-n", type=int, default=512,
                        help="evaluations per design and seed of the DPS study (default 512: a DPS sample costs ~2x)")
    parser.add_argument("--pilot-n", type=int, default=2048, help="MC evaluations of the threshold pilot")
    parser.add_argument("--pilot-seed", type=int, default=1000)
    parser.add_argument("--zeta", type=float, default=1.0, help="DPS step size (default 1.0)")
    parser.add_argument("--digit", type=int, default=0, help="index of the ground-truth digit")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    base = mcdiff.load_model("digits", args.steps)
    truth = (mcdiff.digits()[args.digit] + 1) / 2
    problem = mcdiff.InpaintingProblem(truth, make_mask("box", tuple(truth.shape), 0.25), sigma_y=0.05)
    studies = {
        "brightness": study(base, "brightness", None, "b", args.n_evals, args.pilot_n, args),
        "dps": study(problem.dps(base, args.zeta), problem.error, 0, "MSE", args.dps_n, 2 * args.dps_n, args),
    }
    total = time.perf_counter() - start
    sizes = ("steps", "n_evals", "dps_n", "seeds", "pilot_n", "pilot_seed", "zeta", "digit")
    defaults = all(getattr(args, k) == parser.get_default(k) for k in sizes)

    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/targets_table.py", *sys.argv[1:]])
    b, dps = studies["brightness"], studies["dps"]
    text = [
        "# Targets beyond the mean on the bundled digits model: estimate, 95% interval, efficiency per design",
        "",
        f"`{command}`",
        "",
        (f"Bundled digits model (8×8), DDIM {args.steps} steps; {args.n_evals} evaluations per design and seed "
         f"(DPS: {args.dps_n}, as a DPS sample costs about twice a plain one), "
         f"seeds 0..{args.seeds - 1}; rqmc and amc-rqmc have 16 scrambled Sobol' replicates. Thresholds of the "
         f"exceedances are the 0.9 and 0.99 quantiles of an MC pilot ({args.pilot_n} evaluations, DPS "
         f"{2 * args.dps_n}; seed "
         f"{args.pilot_seed}). The interval columns are seed 0's; `eff.` is the corrected relative efficiency "
         f"(MC = 1 by definition), mean ± SE over the {args.seeds} seeds; `(k/S SE 0)` counts seeds where every "
         "group mean of the indicator was equal (efficiency undefined: no variance left to measure), left out "
         f"of the mean. {total:.0f} s on {args.threads} thread(s), shared 2-core machine at nice 19."),
        "",
        f"## Brightness (unconditional, {b['seconds']:.0f} s)",
        "",
        *tables(b, args.seeds),
        "",
        (f"## DPS inpainting MSE (box mask 25% missing, digit {args.digit}, sigma_y = 0.05, DDIM {args.steps} "
         f"steps, zeta = {args.zeta}; {dps['seconds']:.0f} s)"),
        "",
        *tables(dps, args.seeds),
        "",
        (f"Warnings of equal group means (std_error 0) over all runs: brightness {b['flat_warnings']}, "
         f"DPS {dps['flat_warnings']}."),
        "",
        *([READING] if defaults else []),
    ]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "targets_table.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
