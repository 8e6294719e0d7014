"""Sampling throughput: mcdiff's runner beside a plain diffusers loop, same model and batch.

mcdiff's side is the full evaluation path of :func:`mcdiff.blocks.evaluate_design`: noise
drawn by the antithetic design from ``(seed, address)``, the sampler, and a statistic (the
brightness of each image). The plain side is what a diffusers user writes: ``torch.randn``,
``unet`` + ``scheduler.step`` in a loop, and the mean of each image. Repeats cycle through
all four runs (DDIM and DDPM, plain and mcdiff) so that load from other processes hits them
alike; the table reports each run's fastest repeat (the least disturbed by other processes).

Run: ``python benchmarks/throughput.py`` (``--help`` for sizes, device and dtype).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from mcdiff.blocks import evaluate_design
from mcdiff.designs import Antithetic
from mcdiff.functionals import brightness
from mcdiff.samplers import DiffusionSampler
from mcdiff.samplers.diffusion import default_device


def _unet(size: int, channels: tuple[int, ...]) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        norm_num_groups=8,
    ).eval()


def _plain_loop(unet, scheduler, steps, n_evals, batch, shape, device, dtype) -> None:
    """What a diffusers user writes (the loop of ``DDIMPipeline`` / ``DDPMPipeline``)."""
    generator = torch.Generator(device).manual_seed(0)
    scheduler.set_timesteps(steps)
    with torch.inference_mode():
        for _ in range(0, n_evals, batch):
            x = torch.randn((batch, *shape), generator=generator, device=device, dtype=dtype)
            for t in scheduler.timesteps:
                eps = unet(x, t).sample
                x = scheduler.step(eps, t, x, generator=generator).prev_sample
            ((x / 2 + 0.5).clamp(0, 1)).mean(dim=(1, 2, 3)).cpu()


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16, help="image side (default 16)")
    parser.add_argument(
        "--channels", type=int, nargs="+", default=[16, 32], help="UNet block widths (default 16 32)"
    )
    parser.add_argument("--steps", type=int, default=10, help="sampling steps (default 10)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("-n", "--n-evals", type=int, default=32, help="evaluations per repeat (default 32)")
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats per run (default 30)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)

    unet = _unet(args.size, tuple(args.channels))
    if (device, dtype) != (torch.device("cpu"), torch.float32):
        unet.to(device=device, dtype=dtype)
    shape = (3, args.size, args.size)
    print(
        f"UNet2DModel {shape}, blocks {tuple(args.channels)}, {args.steps} steps, batch {args.batch}, "
        f"{args.n_evals} evals x {args.repeats} repeats, {device} {args.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'sampler':<10} {'plain img/s':>12} {'mcdiff img/s':>13} {'ratio':>7} {'overhead':>9}")
    runs = {}
    for label, scheduler in (
        ("DDIM", DDIMScheduler(num_train_timesteps=1000)),
        ("DDPM", DDPMScheduler(num_train_timesteps=1000)),
    ):
        sampler = DiffusionSampler(
            unet, scheduler, num_inference_steps=args.steps, device=device, dtype=dtype
        )
        runs[label, "plain"] = partial(
            _plain_loop, unet, scheduler, args.steps, args.n_evals, args.batch, shape, device, dtype
        )
        runs[label, "mcdiff"] = partial(
            evaluate_design, sampler, [brightness], Antithetic(), args.n_evals, 0, args.batch
        )
    for run in runs.values():  # warm-up
        run()
    times = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, run in runs.items():
            times[key].append(_timed(run))
    for label in ("DDIM", "DDPM"):
        plain, ours = (args.n_evals / min(times[label, side]) for side in ("plain", "mcdiff"))
        print(f"{label:<10} {plain:>12.1f} {ours:>13.1f} {ours / plain:>7.3f} {1 - ours / plain:>9.1%}")


if __name__ == "__main__":
    main()
