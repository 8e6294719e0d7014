"""Figures: CI widths per design, antithetic pairs of generated images, and the diagnostics.

:func:`save_figures` draws a :func:`mcdiff.diagnostics.diagnose` result from its DataTree
alone (the pairing and centring labels are its coordinates), so this module needs nothing of
:mod:`mcdiff.diagnostics`.

Uses matplotlib's Agg backend (no display needed); every function returns the figure or
draws on the axes it is given.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def plot_ci_widths(result: xr.DataTree, ax: plt.Axes | None = None) -> plt.Axes:
    """Bar chart of every statistic's CI width per design, relative to the first design.

    Vector and map statistics show the mean width over their components. The ratio
    ``width_D / width_first`` at equal evaluations is ``1 / sqrt(efficiency)`` when the
    first design is plain MC.
    """
    summary = result["summary"].to_dataset()
    designs = [str(d) for d in summary["design"].values]
    names = [n for n, v in summary.data_vars.items() if "summary" in v.dims]
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3))
    width = summary.sel(summary="ci_width")
    offsets = (np.arange(len(designs)) - (len(designs) - 1) / 2) * 0.8 / len(designs)
    for k, design in enumerate(designs):
        ratios = []
        for name in names:
            var = width[name]
            own = [d for d in var.dims if d != "design"]
            mean = var.mean(own) if own else var
            ratios.append(float(mean.sel(design=design) / mean.sel(design=designs[0])))
        bars = ax.bar(np.arange(len(names)) + offsets[k], ratios, 0.8 / len(designs), label=design)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel(f"CI width / CI width of {designs[0]}")
    ax.set_title(f"{summary.attrs.get('confidence', 0.95):.0%} CI width at {int(summary['n_evals'][0])} evaluations")
    ax.legend(fontsize=8)
    return ax


def plot_pairs(images: torch.Tensor | np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    """Antithetic pairs as a two-row grid: ``G(z_j)`` on top, ``G(-z_j)`` below.

    ``images`` is ``(2K, C, H, W)`` in [0, 1] with partners adjacent (``2j``, ``2j + 1``),
    as :class:`~mcdiff.designs.Antithetic` orders them.
    """
    images = torch.as_tensor(images).detach().cpu().float().numpy()
    if images.ndim != 4 or len(images) % 2 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (2K, C, H, W) with C in (1, 3) and partners adjacent, got {images.shape}")
    pairs = len(images) // 2
    if axes is None:
        _, axes = plt.subplots(2, pairs, figsize=(1.1 * pairs, 2.4), squeeze=False)
    for j in range(pairs):
        for row in range(2):
            image = images[2 * j + row].transpose(1, 2, 0)
            ax = axes[row, j]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("z", fontsize=9)
    axes[1, 0].set_ylabel("-z", fontsize=9)
    return axes


def demo_figure(result: xr.DataTree, pair_images: torch.Tensor | np.ndarray) -> Figure:
    """The demo's figure: CI widths per design above a row of antithetic pairs."""
    pairs = len(pair_images) // 2
    fig = plt.figure(figsize=(max(7.0, 1.0 * pairs), 6.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.6, 1])
    plot_ci_widths(result, top.subplots())
    plot_pairs(pair_images, bottom.subplots(2, pairs, squeeze=False))
    bottom.suptitle("antithetic pairs: G(z) and G(-z)", fontsize=10)
    return fig


PAIRING_COLOURS = {"PN": "tab:red", "RR": "tab:blue"}
"""Colour of each pairing of :data:`mcdiff.diagnostics.PAIRINGS` in the diagnostics' figures."""


def save_figures(tree: xr.DataTree, directory: str | Path) -> list[Path]:
    """Write the PNG figures of a :func:`~mcdiff.diagnostics.diagnose` result into ``directory``.

    ``pair_correlation.png`` (histograms PN vs RR, raw and centred, per sampler, means
    marked), ``diversity.png`` (SSIM, and LPIPS, PN vs RR), ``trajectory_correlation.png``
    (mean correlation of ``x_t`` and ``eps`` by timestep) and ``antisymmetry.png`` (the
    curves ``eps(λ x)`` per probed timestep and the residual by timestep).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pairs = tree["pairs"].to_dataset()
    samplers = list(pairs["sampler"].values)
    correlation = [
        (f"{s}, {c}", pairs["correlation"].sel(sampler=s, centring=c))
        for s in samplers
        for c in pairs["centring"].values
    ]
    metrics = [m for m in ("ssim", "lpips") if m in pairs]
    diversity = [(f"{s}, {m.upper()}", pairs[m].sel(sampler=s)) for s in samplers for m in metrics]
    draw = {  # each figure is drawn, written and closed before the next
        "pair_correlation.png": partial(
            _histograms,
            correlation,
            "Pixel-wise Pearson correlation within pairs: antithetic (PN) vs independent (RR)",
        ),
        "diversity.png": partial(_histograms, diversity, "Similarity of partners: PN vs RR"),
        "trajectory_correlation.png": partial(_trajectory_figure, tree["trajectory"].to_dataset()),
        "antisymmetry.png": partial(_antisymmetry_figure, tree["antisymmetry"].to_dataset()),
    }
    return [_save(figure(), directory / name) for name, figure in draw.items()]


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _histograms(panels: list[tuple[str, xr.DataArray]], title: str) -> Figure:
    """One histogram panel per ``(label, values(pairing, pair))``, the pairings overlaid, means marked."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3), squeeze=False)
    for ax, (label, data) in zip(axes[0], panels):
        finite = {k: v[np.isfinite(v)] for k in data["pairing"].values for v in [data.sel(pairing=k).values]}
        pooled = np.concatenate(list(finite.values()))
        low, high = (pooled.min(), pooled.max()) if len(pooled) else (-1.0, 1.0)
        pad = 0.02 * (high - low) + 1e-3
        bins = np.linspace(low - pad, high + pad, 31)
        for k, v in finite.items():
            mean = f"mean {v.mean():+.3f}" if len(v) else "all NaN"
            ax.hist(v, bins=bins, alpha=0.55, color=PAIRING_COLOURS.get(k), label=f"{k} {mean} (n={len(v)})")
            if len(v):
                ax.axvline(v.mean(), color=PAIRING_COLOURS.get(k), linestyle="--")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _trajectory_figure(trajectory: xr.Dataset) -> Figure:
    """Mean raw correlation between partners of ``x_t`` and ``eps`` by timestep, one panel per sampler."""
    samplers = list(trajectory["sampler"].values)
    fig, axes = plt.subplots(1, len(samplers), figsize=(4.5 * len(samplers), 3.2), squeeze=False)
    for ax, s in zip(axes[0], samplers):
        for v, style in (("x_t", "-"), ("eps", ":")):
            for k in trajectory["pairing"].values:
                mean = trajectory[v].sel(sampler=s, pairing=k, centring="raw").mean("pair")
                timesteps, colour = trajectory["timestep"].values, PAIRING_COLOURS.get(k)
                ax.plot(timesteps, mean.values, style, color=colour, marker=".", label=f"{v} {k}")
        ax.invert_xaxis()
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xlabel("timestep t (sampling runs left to right)")
        ax.set_ylabel("mean correlation between partners")
        ax.set_title(s, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _antisymmetry_figure(anti: xr.Dataset) -> Figure:
    """The curves ``eps(λ x_t)`` of the first probe at each probed timestep, and the residual by timestep."""
    n_t = anti.sizes["timestep"]
    fig, axes = plt.subplots(1, n_t + 1, figsize=(2.8 * (n_t + 1), 2.9))
    for ax, t in zip(axes[:-1], anti["timestep"].values):
        curves = anti["curve"].sel(timestep=t).isel(probe=0)
        for p in range(curves.sizes["pixel"]):
            ax.plot(anti["lambda"].values, curves.isel(pixel=p).values, linewidth=1)
        ax.axvline(0, color="grey", linewidth=0.5)
        ax.set_title(f"t = {int(t)}", fontsize=9)
        ax.set_xlabel("λ")
    axes[0].set_ylabel("eps(λ x_t) at chosen pixels")
    axes[-1].plot(anti["timestep"].values, anti["residual"].values, "o-")
    axes[-1].set_ylim(bottom=0)
    axes[-1].invert_xaxis()
    axes[-1].set_title("antisymmetry residual", fontsize=9)
    axes[-1].set_xlabel("timestep t")
    fig.tight_layout()
    return fig
