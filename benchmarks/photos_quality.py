"""How good is a model of 32×32 photo patches? Measures that need no downloaded network.

Generates ``n`` images (DDIM, plain Monte Carlo noise) and compares them with the model's
training crops (:func:`mcdiff.data.photo_patches`, seed 0), beside two references of the same
size ``n``: *fresh* crops of the training photographs (seed 2, the floor that sampling noise
alone sets for a perfect model) and crops of the *held-out* photographs (another scene):

- **samples**: a grid of generated images beside training crops (``<label>_samples.png``);
- **power spectrum**: the radially averaged power ``P(k) = mean |FFT(x - mean x)|^2`` over
  images, channels and rings ``k <= |f| < k + 1`` of integer frequency; reported as
  ``log10 P(k) / P_train(k)`` per band (0: the right amount of structure at that scale;
  negative: too smooth);
- **histograms**: pixel values and image brightness, as the 1-Wasserstein distance to the
  training crops;
- **memorisation**: the L2 distance of each image to its nearest training crop (generated
  well below fresh crops would mean copying);
- **training loss**: the model's ``training.json`` loss, mean per 100 steps.

Writes ``<label>_quality.md``, ``<label>_quality.json`` and two figures into ``--output``.

    python benchmarks/photos_quality.py                                   # the bundled model
    python benchmarks/photos_quality.py --model DIR --label photos-step-800
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wasserstein_distance

import mcdiff
from mcdiff.runner import sample_images
from mcdiff.data import photo_patches
from mcdiff.models import BUNDLED, bundled_path
from mcdiff.plots import plt


def radial_power(images: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum ``(K,)`` of images ``(N, C, H, W)``, ``K = H // 2``.

    Ring ``k`` holds the frequencies with ``k <= |f| < k + 1`` (in cycles per image); each
    image's channel means are removed first, so ring 0 holds no DC term.
    """
    x = images - images.mean(axis=(-2, -1), keepdims=True)
    power = (np.abs(np.fft.fft2(x)) ** 2).mean(axis=(0, 1))
    h, w = power.shape
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    ring = np.floor(np.hypot(fy, fx)).astype(int)
    k = h // 2
    return np.array([power[ring == r].mean() for r in range(1, k + 1)])


def nearest_distance(queries: np.ndarray, reference: np.ndarray, chunk: int = 256) -> np.ndarray:
    """L2 distance ``(Q,)`` of each flattened query to its nearest reference image."""
    q = torch.from_numpy(queries.reshape(len(queries), -1)).double()
    r = torch.from_numpy(reference.reshape(len(reference), -1)).double()
    return np.concatenate([torch.cdist(q[i : i + chunk], r).min(dim=1).values.numpy() for i in range(0, len(q), chunk)])


def quality(sets: dict[str, np.ndarray], train: np.ndarray, nearest: dict[str, np.ndarray]) -> dict:
    """Every measure of the module docstring for each image set ``(n, C, H, W)`` against ``train``.

    ``nearest[name]`` is :func:`nearest_distance` of ``sets[name]`` to ``train``; pixel and
    brightness distances compare with the first ``4 n`` training crops.
    """
    reference = train[: 4 * len(next(iter(sets.values())))]
    power = radial_power(train)
    out = {}
    for name, x in sets.items():
        out[name] = {
            "log10_power_ratio": np.log10(radial_power(x) / power).round(3).tolist(),
            "pixel_w1": float(wasserstein_distance(x.ravel(), reference.ravel())),
            "brightness_w1": float(wasserstein_distance(x.mean(axis=(1, 2, 3)), reference.mean(axis=(1, 2, 3)))),
            "brightness_mean": float(x.mean()),
            "brightness_std": float(x.mean(axis=(1, 2, 3)).std()),
            "nn_distance_percentiles_5_50_95": np.percentile(nearest[name], [5, 50, 95]).round(3).tolist(),
        }
    out["train"] = {"power": power.tolist(), "brightness_mean": float(train.mean()),
                    "brightness_std": float(train.mean(axis=(1, 2, 3)).std())}
    return out


def figures(sets: dict[str, np.ndarray], train: np.ndarray, nearest: dict[str, np.ndarray], losses: list[float],
            label: str, output: Path) -> list[Path]:
    """The sample grid and the five-panel measure figure (the last: the training loss); their paths."""
    def grid(images, rows=8):
        x = images[: rows * rows].transpose(0, 2, 3, 1)
        h, w = x.shape[1:3]
        canvas = np.ones((rows * (h + 1) - 1, rows * (w + 1) - 1, 3))
        for i, im in enumerate(x):
            r, c = divmod(i, rows)
            canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = im
        return canvas

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.7), layout="constrained")
    for ax, images, title in ((axes[0], sets["generated"], f"generated ({label})"), (axes[1], train, "training crops")):
        ax.imshow(grid(images).clip(0, 1), interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    samples = output / f"{label}_samples.png"
    fig.savefig(samples, dpi=130)
    plt.close(fig)

    fig, axes = plt.subplots(1, 5, figsize=(18.5, 3.4), layout="constrained")
    everything = {**sets, "train": train[: 4 * len(sets["generated"])]}
    k = np.arange(1, train.shape[-1] // 2 + 1)
    bins = np.linspace(0, 1, 41)
    for name, x in everything.items():
        style = "--" if name == "train" else "-"
        axes[0].loglog(k, radial_power(x), style, label=name)
        axes[1].hist(x.ravel(), bins, density=True, histtype="step", ls=style, label=name)
        axes[2].hist(x.mean(axis=(1, 2, 3)), bins, density=True, histtype="step", ls=style, label=name)
    axes[0].set(xlabel="frequency (cycles / image)", ylabel="power", title="radially averaged power spectrum")
    axes[1].set(xlabel="pixel value", title="pixel histogram")
    axes[2].set(xlabel="brightness (image mean)", title="brightness histogram")
    top = max(d.max() for d in nearest.values())
    for name, d in nearest.items():
        axes[3].hist(d, np.linspace(0, top, 31), histtype="step", label=name)
    axes[3].set(xlabel="L2 distance to nearest training crop", title="memorisation check")
    for ax in axes[:4]:
        ax.legend(fontsize=8)
    axes[4].plot(100 * np.arange(1, len(losses) + 1), losses, "-o", ms=2)
    axes[4].set(xlabel="optimiser step", ylabel="mean loss per 100 steps", title="training loss", yscale="log")
    measures = output / f"{label}_quality.png"
    fig.savefig(measures, dpi=120)
    plt.close(fig)
    return [samples, measures]


def report(q: dict, losses: list[float], label: str, command: str, settings: str) -> str:
    """The Markdown report of :func:`quality` and the training loss."""
    names = [n for n in q if n != "train"]
    bands = len(q["train"]["power"])
    return "\n".join([
        f"# Quality of `{label}`", "", f"Made by `{command}`; {settings}", "",
        "Distances to the training crops (W1: 1-Wasserstein; NN: L2 distance to the nearest training crop, "
        "5th / 50th / 95th percentile, pixels in [0, 1]):", "",
        "| images | pixel W1 | brightness W1 | brightness mean ± std | NN distance |", "|---|---|---|---|---|",
        *(f"| {n} | {q[n]['pixel_w1']:.4f} | {q[n]['brightness_w1']:.4f} | {q[n]['brightness_mean']:.3f} ± "
          f"{q[n]['brightness_std']:.3f} | {' / '.join(f'{v:.2f}' for v in q[n]['nn_distance_percentiles_5_50_95'])} |"
          for n in names),
        f"| training crops | — | — | {q['train']['brightness_mean']:.3f} ± {q['train']['brightness_std']:.3f} | — |",
        "", "log10 of power / training crops' power by frequency band (cycles per image):", "",
        "| images | " + " | ".join(str(i) for i in range(1, bands + 1)) + " |", "|---|" + "---|" * bands,
        *(f"| {n} | " + " | ".join(f"{v:+.2f}" for v in q[n]["log10_power_ratio"]) + " |" for n in names),
        "", f"Training loss, mean per 100 steps ({100 * len(losses)} steps): "
        + ", ".join(f"{v:.4f}" for v in losses[:3]) + ", ... , " + ", ".join(f"{v:.4f}" for v in losses[-5:]),
        "",
    ])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="photos", help="bundled name or model directory (default photos)")
    parser.add_argument("--label", default="photos", help="name of the output files (default photos)")
    parser.add_argument("-n", type=int, default=512, help="generated images (default 512)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/photos_quality.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    sampler = mcdiff.load_model(args.model, args.steps)
    directory = bundled_path(args.model) if args.model in BUNDLED else Path(args.model)
    losses = json.loads((directory / "training.json").read_text())["loss_per_100_steps"]
    generated = sample_images(sampler, mcdiff.MonteCarlo(), args.n, args.seed, 64)
    sampling = time.perf_counter() - start
    train = (photo_patches(seed=0).numpy() + 1) / 2  # the training set of the bundled model
    sets = {
        "generated": generated,
        "fresh training-photo crops": (photo_patches(n=args.n, seed=2).numpy() + 1) / 2,
        "held-out-photo crops": (photo_patches(n=args.n, split="held-out", seed=1).numpy() + 1) / 2,
    }
    nearest = {name: nearest_distance(x, train) for name, x in sets.items()}
    q = quality(sets, train, nearest)
    args.output.mkdir(parents=True, exist_ok=True)
    paths = figures(sets, train, nearest, losses, args.label, args.output)
    settings = (f"{args.n} images each, DDIM {args.steps} steps, seed {args.seed}, {len(train)} training crops; "
                f"sampling {sampling:.0f} s, all {time.perf_counter() - start:.0f} s.")
    text = report(q, losses, args.label, command, settings)
    (args.output / f"{args.label}_quality.md").write_text(text)
    (args.output / f"{args.label}_quality.json").write_text(json.dumps(q, indent=1) + "\n")
    print(text, "\nwrote", *map(str, paths))
    return q


if __name__ == "__main__":
    main()
