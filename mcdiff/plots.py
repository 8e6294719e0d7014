"""Figures of a result: CI widths per design, and antithetic pairs of generated images.

Uses matplotlib's Agg backend (no display needed); every function returns the figure or
draws on the axes it is given.
"""

from __future__ import annotations

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
