"""What shipping the photos model's weights in fp16 would change: samples and estimates.

Runs the bundled photos model twice on the same design noise (``amc``, DDIM ``--steps``):
with its float32 weights, and with every weight rounded to fp16 and back (the network still
computes in float32, as a CPU user of fp16 weights would). Prints and writes
``results/photos_fp16.md``: the largest change of a pixel and of an image's brightness, the
brightness spread over images, and the change of the ``amc`` estimate in units of its
standard error.

    python benchmarks/photos_fp16.py               # 64 evaluations, DDIM 20, seed 3 (about 1 min)
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
from mcdiff.results import mcdiff_version


def run(sampler, n_evals: int, seed: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Per-image brightness ``(N,)``, pixels ``(N, C, H, W)``, the ``amc`` estimate and its SE."""
    result = mcdiff.estimate(sampler, ["brightness", "pixel_mean"], ["amc"], n_evals=n_evals, seed=seed,
                             draws="memory", progress=False)
    summary = result["summary"]["brightness"].sel(design="amc")
    draws = result["draws"]
    return (draws["brightness"].values.ravel(), draws["pixel_mean"].values,
            float(summary.sel(summary="estimate")), float(summary.sel(summary="std_error")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--n-evals", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = ("python benchmarks/photos_fp16.py " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    start = time.perf_counter()

    full = mcdiff.load_model("photos", args.steps)
    rounded = mcdiff.load_model("photos", args.steps)
    with torch.no_grad():
        for weight in rounded.unet.parameters():
            weight.copy_(weight.half().float())
    b32, p32, e32, se = run(full, args.n_evals, args.seed)
    b16, p16, e16, _ = run(rounded, args.n_evals, args.seed)

    rows = [
        ("largest change of a pixel", f"{np.abs(p32 - p16).max():.2g}"),
        ("mean change of a pixel", f"{np.abs(p32 - p16).mean():.2g}"),
        ("largest change of an image's brightness", f"{np.abs(b32 - b16).max():.2g}"),
        ("brightness spread over images (sd, float32)", f"{b32.std(ddof=1):.3f}"),
        ("amc brightness estimate, float32 / fp16-rounded", f"{e32:.6f} / {e16:.6f}"),
        ("change of the estimate in standard errors", f"{abs(e32 - e16) / se:.3f}"),
    ]
    text = "\n".join([
        "# fp16 weights of the photos model: what they change", "",
        f"`{command}` in {time.perf_counter() - start:.0f} s (mcdiff {mcdiff_version()}, torch threads "
        f"{torch.get_num_threads()}): {args.n_evals} `amc` evaluations, DDIM {args.steps}, seed {args.seed}, the same "
        "noise through the float32 weights and through the weights rounded to fp16 (computed in float32).", "",
        "| measure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
    ])
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "photos_fp16.md").write_text(text)


if __name__ == "__main__":
    main()
