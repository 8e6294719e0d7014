"""The paper's Table 2 on the bundled models: 95% CI length and relative efficiency per design.

For each model, every design (``mc``, ``rqmc``, ``amc``, ``amc-rqmc``) spends the same ``N``
evaluations on four statistics, repeated over seeds ``0 .. S-1``. A cell is

    CI length × 10^3 (relative efficiency ± its standard error over seeds)

with the paper's efficiency ``(width_MC / width_D)^2`` against MC run side by side at the same
N, as the ratio of squared widths averaged over seeds (jackknife SE over seeds). ``pixel mean`` and ``centroid`` are vectors (64 pixels; y and x): their
CI length is the mean over components, as is the width that enters the efficiency. The
design with the highest mean efficiency wins its column; ``best × amc`` is its gain over
antithetic sampling alone, ``(width_amc / width_D)^2`` (MC-free), estimate ± SE, and
``t = (gain - 1) / SE`` says whether the winner beats antithetic sampling beyond seed noise.

Models: the bundled digits model (8×8, DDIM 20 steps, as ``mcdiff demo``) and the analytic
Gaussian model of the README's API example (``mean=0.4, std=0.2``, 8×8, probit output,
DDIM 20 steps); ``--models`` also takes the bundled photos model or a model directory (a
training snapshot). Writes ``results/<table>.md`` and, per learned model,
``results/<table>_<model>.png`` (relative efficiency per statistic and design).

    python benchmarks/efficiency_table.py                    # N = 1024, 8 seeds (3–5 min on 2 shared cores)
    python benchmarks/efficiency_table.py -n 256 --seeds 2   # a quick check
    python benchmarks/efficiency_table.py --models photos -n 256 --seeds 4 --table efficiency_photos

With ``--cache DIR`` each seed's widths are kept in ``DIR`` as soon as they are computed, so a
stopped run resumes and seeds can be added later (``--first-seed 2 --seeds 2`` now, ``--seeds 4``
later computes only seeds 0 and 1).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mcdiff
from mcdiff.plots import plt
from mcdiff.results import mcdiff_version

COLUMNS = {"brightness": "brightness", "pixel mean": "pixel_mean", "contrast": "contrast", "centroid": "centroid"}
DESIGNS = ("mc", "rqmc", "amc", "amc-rqmc")

PUBLISHED = """\
| model | design | brightness | pixel mean | contrast | centroid |
|---|---|---|---|---|---|
| Stable Diffusion | MC | 5.45 | 5.59 | 2.18 | 4.03 |
| | QMC | 1.35 (16.13) | 1.42 (15.23) | 1.03 (4.46) | 1.88 (4.54) |
| | AMC | 1.26 (18.83) | 1.41 (15.84) | 0.89 (6.25) | 1.62 (6.15) |
| CIFAR-10 | MC | 2.00 | 2.04 | 1.08 | 0.11 |
| | QMC | 0.35 (32.05) | 0.39 (26.94) | 0.22 (23.43) | 0.04 (7.35) |
| | AMC | 0.35 (32.66) | 0.39 (27.12) | 0.23 (22.05) | 0.04 (6.96) |
| CelebA-HQ | MC | 1.82 | 1.76 | 0.60 | 0.60 |
| | AMC | 0.26 (50.16) | 0.31 (33.15) | 0.19 (10.18) | 0.20 (8.27) |
| LSUN-Church | MC | 1.67 | 1.67 | 1.02 | 0.70 |
| | AMC | 0.14 (136.37) | 0.16 (106.79) | 0.20 (27.16) | 0.40 (3.14) |"""
"""Table 2 of arXiv 2506.06185 as published (CI length, relative efficiency in parentheses)."""


def model(name: str, steps: int) -> mcdiff.DiffusionSampler:
    """A bundled model, the README's analytic Gaussian model (probit output), or a model directory."""
    if name == "gaussian":
        return mcdiff.GaussianSampler(mean=0.4, std=0.2, image_shape=(1, 8, 8), num_inference_steps=steps,
                                      output="probit")
    return mcdiff.load_model(name, num_inference_steps=steps)


def label(name: str) -> str:
    """The section heading's name of a model of :func:`model`."""
    return {
        "digits": "bundled digits model (8×8)",
        "photos": "bundled photos model (3×32×32, attention U-Net)",
        "gaussian": "analytic Gaussian model (mean 0.4, std 0.2, 8×8, probit)",
    }.get(name, f"model `{name}`")


def widths(sampler, n_evals: int, seeds: int, batch_size: int, cache: Path | None = None,
           key: str = "", first_seed: int = 0) -> np.ndarray:
    """Mean CI width over components, array ``(seed, design, column)``, seeds ``first_seed ..``.

    With ``cache`` (an ``.npz`` file), each seed's widths are written there as soon as they are
    computed and seeds already there (under the same ``key``: model, N, steps) are read back
    instead of recomputed, so a long run that is stopped resumes where it was, and more seeds
    can be added later.
    """
    stored = {}
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            if str(data["key"]) != key:
                sys.exit(f"{cache} holds widths of {str(data['key'])!r}, not {key!r}")
            stored = {int(s): data["widths"][i] for i, s in enumerate(data["seeds"])}
    out = np.empty((seeds, len(DESIGNS), len(COLUMNS)))
    for i, seed in enumerate(range(first_seed, first_seed + seeds)):
        if seed in stored:
            out[i] = stored[seed]
            continue
        summary = mcdiff.estimate(sampler, list(COLUMNS.values()), DESIGNS, n_evals=n_evals, seed=seed,
                                  batch_size=batch_size, progress=False)["summary"]
        for j, stat in enumerate(COLUMNS.values()):
            width = summary[stat].sel(summary="ci_width")
            out[i, :, j] = width.mean([d for d in width.dims if d != "design"]).sel(design=list(DESIGNS))
        print(f"seed {seed} done", flush=True)
        if cache is not None:
            stored[seed] = out[i]
            order = sorted(stored)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, key=key, seeds=np.array(order), widths=np.array([stored[s] for s in order]))
    return out


def ratio_jackknife(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mean_s num / mean_s den`` over seeds (axis 0) and its jackknife standard error.

    ``theta = sum_s num_s / sum_s den_s``; with ``theta_(i)`` the same ratio without seed i,
    ``SE = sqrt((S - 1)/S · sum_i (theta_(i) - mean theta_(.))^2)`` (NaN for one seed). A ratio
    of mean squared widths estimates ``E width_MC^2 / E width_D^2`` without the upward bias
    that averaging per-seed ratios has when ``width_D`` is noisy (RQMC: 15 degrees of freedom).
    """
    theta = num.sum(axis=0) / den.sum(axis=0)
    seeds = len(num)
    if seeds < 2:
        return theta, np.full(theta.shape, np.nan)
    loo = (num.sum(axis=0) - num) / (den.sum(axis=0) - den)
    return theta, np.sqrt((seeds - 1) / seeds * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0))


def tables(w: np.ndarray) -> tuple[list[str], list[str], dict]:
    """Markdown rows of the Table-2 table and the winners' lines, and the efficiencies.

    ``w`` is ``(seed, design, column)`` from :func:`widths`.
    """
    squared = w**2
    eff, eff_se = ratio_jackknife(np.broadcast_to(squared[:, [0]], w.shape), squared)
    gain, gain_se = ratio_jackknife(np.broadcast_to(squared[:, [DESIGNS.index("amc")]], w.shape), squared)
    width = w.mean(axis=0)
    rows = ["| design | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for i, design in enumerate(DESIGNS):
        cells = [f"{1e3 * width[i, j]:.3g}" + ("" if i == 0 else f" ({eff[i, j]:.3g} ± {eff_se[i, j]:.2g})")
                 for j in range(len(COLUMNS))]
        rows.append(f"| {design} | " + " | ".join(cells) + " |")
    best = eff.argmax(axis=0)
    winners = []
    for j, column in enumerate(COLUMNS):
        b = best[j]
        t = "—" if DESIGNS[b] == "amc" else f"{(gain[b, j] - 1) / gain_se[b, j]:+.1f}"
        winners.append(
            f"| {column} | {DESIGNS[b]} | {eff[b, j]:.3g} ± {eff_se[b, j]:.2g} | "
            f"{eff[DESIGNS.index('amc'), j]:.3g} ± {eff_se[DESIGNS.index('amc'), j]:.2g} | "
            f"{gain[b, j]:.3g} ± {gain_se[b, j]:.2g} | {t} |"
        )
    header = ["| statistic | best design | its rel. eff. | amc rel. eff. | best × amc | t of (best × amc − 1) |",
              "|---|---|---|---|---|---|"]
    return rows, header + winners, {"eff": eff, "eff_se": eff_se}


def figure(eff: np.ndarray, eff_se: np.ndarray, title: str):
    """Bars of relative efficiency per statistic (groups) and design (colours), ± SE."""
    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
    x = np.arange(len(COLUMNS))
    step = 0.8 / len(DESIGNS)
    for i, design in enumerate(DESIGNS):
        bars = ax.bar(x + (i - (len(DESIGNS) - 1) / 2) * step, eff[i], step, yerr=eff_se[i], capsize=2,
                      label=design)
        ax.bar_label(bars, fmt="%.2g", fontsize=7)
    ax.axhline(1, color="0.5", lw=0.8)
    ax.set_xticks(x, list(COLUMNS))
    ax.set_ylabel("relative efficiency (width_MC / width)²")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncols=len(DESIGNS), loc="upper right")
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--n-evals", type=int, default=1024, help="evaluations per design (16 · 2^m)")
    parser.add_argument("--seeds", type=int, default=8, help="repeats with seeds 0 .. S-1 (default 8)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="start at this seed: seeds F .. F+S-1 (with --cache, to add seeds to a run)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    parser.add_argument("--models", nargs="+", default=["digits", "gaussian"],
                        help="digits, photos, gaussian or model directories (default digits gaussian)")
    parser.add_argument("--table", default="efficiency_table", help="output file name (default efficiency_table)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--cache", type=Path, default=None,
                        help="directory of per-seed widths (<model>_n<N>_ddim<steps>_widths.npz): a stopped run "
                        "resumes, and --seeds can grow later without recomputing the seeds there")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.first_seed < 0:
        parser.error(f"--seeds must be >= 1 and --first-seed >= 0, got {args.seeds} and {args.first_seed}")
    torch.set_num_threads(args.threads)
    command = "python benchmarks/efficiency_table.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    sections = []
    for name in args.models:
        t0 = time.perf_counter()
        cache = None if args.cache is None else args.cache / f"{Path(name).name}_n{args.n_evals}_ddim{args.steps}_widths.npz"
        key = f"{name} n={args.n_evals} steps={args.steps} designs={','.join(DESIGNS)} mcdiff {mcdiff_version()}"
        w = widths(model(name, args.steps), args.n_evals, args.seeds, args.batch_size, cache, key, args.first_seed)
        rows, winners, eff = tables(w)
        last = args.first_seed + args.seeds - 1
        settings = (f"{args.n_evals} evaluations per design, seeds {args.first_seed}–{last}, "
                    f"{time.perf_counter() - t0:.0f} s.")
        sections += [f"## {label(name)}, DDIM {args.steps} steps", "", settings, "", *rows, "", *winners, ""]
        if name != "gaussian":
            args.output.mkdir(parents=True, exist_ok=True)
            fig = figure(eff["eff"], eff["eff_se"],
                         f"{label(name)}, DDIM {args.steps} steps, N = {args.n_evals}, {args.seeds} seeds (± SE)")
            fig.savefig(args.output / f"{args.table}_{Path(name).name}.png", dpi=120)
            plt.close(fig)
    made = (f"Made by `{command.strip()}` in {time.perf_counter() - start:.0f} s (mcdiff "
            f"{mcdiff_version()}, torch threads {args.threads}).")
    legend = (
        "Cell: CI length × 10³, mean over seeds (relative efficiency `(width_MC / width)²` at equal N: "
        "ratio of mean squared widths over seeds ± jackknife SE over seeds). `pixel mean` and "
        "`centroid`: CI length averaged over the pixels (64 on digits) and the 2 coordinates. `rqmc`: 16 "
        "scrambled Sobol' replicates (nested Owen scrambling). `best × amc`: "
        "`(width_amc / width_best)²` the same way; its t above 2 means the winner beats antithetic "
        "sampling alone beyond seed noise."
    )
    published = (
        "Their models and noise dimensions differ (3×32×32 to 4×64×64 latents, scale of the CI "
        "length not stated): for direction and size, not for comparison cell by cell. QMC there is "
        "our `rqmc`."
    )
    text = "\n".join([
        "# Table 2 on the bundled models: 95% CI length and relative efficiency", "", made, "", legend, "",
        *sections, "## Published (arXiv 2506.06185, Table 2)", "", published, "", PUBLISHED, "",
    ])
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{args.table}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
