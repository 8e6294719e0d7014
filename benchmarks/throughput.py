"""Sampling cost: mcdiff's runner beside a plain diffusers loop, and what its noise costs alone.

For DDIM 50 steps and DDPM 1000 steps on one UNet, batch and device, every design (mc, amc,
rqmc, amc-rqmc) runs the full evaluation path of :func:`mcdiff.blocks.evaluate_design`: noise
generated on the sampler's device step by step from ``(seed, design, address, component,
step)``, the sampler, and a statistic (each image's brightness). The plain side is what a
diffusers user writes: ``torch.randn`` with a generator, ``unet`` + ``scheduler.step`` in a
loop (DDPM draws its step noise inside ``step``), the mean of each image.

Two measures of the overhead, ``mcdiff / plain - 1``:

- ``overhead``: with the UNet. Each repeat runs the plain loop and then every design, back
  to back, so that slow drifts of the machine hit a repeat's runs alike; the column is the
  median over repeats of each repeat's ratio, with its range.
- ``null-net overhead``: both loops again with the UNet replaced by a network that costs
  next to nothing (``0.1 x``), so what remains is what mcdiff adds (noise, the scheduler
  plumbing, the statistic) with little timing noise; divided by the plain loop's time with
  the UNet it is the overhead that the UNet run would show without the timing noise.
  ``one thread`` is the same with ``prefetch=False``: every noise draw made on the
  sampler's thread when it is needed, none ahead on a free processor. With a network that
  costs nothing there is nothing to overlap with, so both are upper bounds.
- ``idle-net overhead`` (CPU only): both loops with a network that sleeps ``--idle-ms`` per
  call and then costs nothing, a stand-in for a network that runs on a GPU and leaves the
  CPU free; mcdiff's noise is then made ahead on a worker thread while the network runs.
  Relative to the plain loop with that network; each run is 4 batches, so that the next
  batch's Sobol' points can be made while one runs (the first batch's cannot).

``noise ms/eval`` is the time to generate one evaluation's whole noise path alone.

Peak memory: a DDPM run at 10 and at 1000 steps, each in a fresh process (peak RSS only
grows; on a GPU, ``torch.cuda.max_memory_allocated``), after imports and a warm-up batch.

    python benchmarks/throughput.py                              # CPU: small 32x32 UNet, 1 thread
    python benchmarks/throughput.py --config cifar10 --batch 256 # GPU: CIFAR-10 DDPM's UNet config
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import partial

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from memory_and_dask import peak_rss_mb  # a script beside this one

from mcdiff.blocks import evaluate_design
from mcdiff.designs import DESIGN_NAMES, SobolRQMC, get_design
from mcdiff.functionals import brightness
from mcdiff.samplers import DiffusionSampler
from mcdiff.samplers.diffusion import default_device

CONFIGS = {
    "small": {
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
    },
    # the UNet of the CIFAR-10 DDPM (Ho et al. 2020) as diffusers configures it: 35.7M parameters
    "cifar10": {
        "block_out_channels": (128, 256, 256, 256),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    },
}
RUNS = (("DDIM", DDIMScheduler, 50), ("DDPM", DDPMScheduler, 1000))
IDLE_BATCHES = 4
"""Batches per run with the idle network: batch ``k + 1``'s Sobol' points are made while ``k`` runs."""


def _unet(config: str, size: int, device: torch.device, dtype: torch.dtype) -> UNet2DModel:
    torch.manual_seed(0)  # random weights: the cost of a forward pass does not depend on them
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, **CONFIGS[config]).eval()
    return unet if (device.type, dtype) == ("cpu", torch.float32) else unet.to(device=device, dtype=dtype)


class NullNetwork(torch.nn.Module):
    """A network that costs next to nothing, ``eps(x, t) = 0.1 x``, after ``idle`` seconds of sleep.

    Sleeping holds up the caller without using a processor: a network that leaves the CPU
    free while it runs, as one on a GPU does.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, idle: float = 0.0):
        super().__init__()
        self.register_buffer("scale", torch.tensor(0.1, device=device, dtype=dtype))
        self.idle = idle

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.idle:
            time.sleep(self.idle)
        return x * self.scale


def _network_output(out) -> torch.Tensor:
    return out.sample if hasattr(out, "sample") else out


def _plain_loop(network, scheduler, steps, batch, shape, device, dtype) -> None:
    """What a diffusers user writes (the loop of ``DDIMPipeline`` / ``DDPMPipeline``)."""
    generator = torch.Generator(device).manual_seed(0)
    scheduler.set_timesteps(steps)
    with torch.inference_mode():
        x = torch.randn((batch, *shape), generator=generator, device=device, dtype=dtype)
        for t in scheduler.timesteps:
            eps = _network_output(network(x, t))
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        ((x / 2 + 0.5).clamp(0, 1)).mean(dim=(1, 2, 3)).cpu()


def _draw_noise(sampler, design, batch) -> None:
    """Generate one batch's whole noise path as the sampler would ask for it, without the model."""
    noise = design.noise(sampler.noise_spec, 0, 0, batch, batch, device=sampler.device, dtype=sampler.dtype)
    noise["x_T"]
    for i in range(sampler.noise_spec["steps"][0] if "steps" in sampler.noise_spec else 0):
        noise.step("steps", i)


def _repeat(run, times: int) -> None:
    for _ in range(times):
        run()


def _designs(batch: int) -> dict:
    """Every design with one run of ``batch`` evaluations (RQMC: 2 replicates of ``batch / 2``)."""
    designs = {
        "mc": get_design("mc"),
        "amc": get_design("amc"),
        "rqmc": SobolRQMC(replicates=2),
        "amc-rqmc": SobolRQMC(replicates=2, antithetic=True),
    }
    for design in designs.values():
        design.check_n(batch)
    return designs


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _peak_memory_mb(args, steps: int) -> float:
    """Peak memory of a DDPM run at ``steps`` in a fresh process (see :func:`memory_child`)."""
    command = [sys.executable, __file__, "--memory-child", str(steps), *_passed(args)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _passed(args) -> list[str]:
    return [
        f"--config={args.config}",
        f"--size={args.size}",
        f"--batch={args.batch}",
        f"--device={args.device}",
        f"--dtype={args.dtype}",
        *([f"--threads={args.threads}"] if args.threads else []),
    ]


def memory_child(args, steps: int) -> None:
    """Run ``evaluate_design`` on DDPM at ``steps`` after a warm-up; print the peak memory in MB."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sampler = DiffusionSampler(_unet(args.config, args.size, device, dtype), DDPMScheduler(), steps)
    run = partial(evaluate_design, sampler, [brightness], get_design("amc-rqmc"), 32 * args.batch, 0, args.batch)
    run(stop=2 * (args.batch // 2))  # warm-up batch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run(stop=2 * (args.batch // 2))
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:
        run(stop=2 * (args.batch // 2))
        print(peak_rss_mb())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", choices=list(CONFIGS), help="UNet (default small)")
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument(
        "--batch", type=int, default=16, help="evaluations per run, one batch: 4 times a power of 2 (default 16)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per run (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on the CPU)")
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--ddpm-steps", type=int, default=1000, help="steps of the DDPM run (default 1000)")
    parser.add_argument(
        "--idle-ms", type=float, default=5.0,
        help="sleep of the idle network per call, CPU only; 0 skips it (default 5)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory table")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads is None and device.type == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        return memory_child(args, args.memory_child)

    unet = _unet(args.config, args.size, device, dtype)
    shape = (3, args.size, args.size)
    n_params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(
        f"UNet2DModel {args.config} {shape} ({n_params:.1f}M parameters), batch {args.batch}, "
        f"{args.repeats} repeats, {device} {args.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    networks = {"unet": unet, "null": NullNetwork(device, dtype)}
    if device.type == "cpu" and args.idle_ms:
        networks["idle"] = NullNetwork(device, dtype, idle=args.idle_ms / 1e3)
    runs, labels = {}, []
    for label, scheduler_class, steps in RUNS:
        steps = args.ddpm_steps if label == "DDPM" else steps
        scheduler = scheduler_class(num_train_timesteps=1000)
        name = f"{label} {steps}"
        labels.append(name)
        for net, network in networks.items():
            sampler = DiffusionSampler(
                network, scheduler, num_inference_steps=steps, image_shape=shape, device=device, dtype=dtype
            )
            n = args.batch * (IDLE_BATCHES if net == "idle" else 1)
            plain = partial(_plain_loop, network, scheduler, steps, args.batch, shape, device, dtype)
            runs[name, net, "plain"] = partial(_repeat, plain, n // args.batch)
            for design, d in _designs(n).items():
                runs[name, net, design] = partial(evaluate_design, sampler, [brightness], d, n, 0, args.batch)
                if net == "null":  # the same with every noise draw on the sampler's own thread
                    runs[name, "null serial", design] = partial(
                        evaluate_design, sampler, [brightness], d, args.batch, 0, args.batch, prefetch=False
                    )
        for design, d in _designs(args.batch).items():
            runs[name, "noise", design] = partial(_draw_noise, sampler, d, args.batch)
    for key, run in runs.items():  # warm-up (the DDPM runs' first repeat warms nothing more)
        if key[0].startswith("DDIM") or key[1] != "unet":
            run()
    times = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, run in runs.items():  # plain, then every design, back to back, per sampler and network
            times[key].append(_timed(run))

    per_eval = {
        key: np.array(t) / args.batch / (IDLE_BATCHES if key[1] == "idle" else 1) * 1e3 for key, t in times.items()
    }
    print(
        f"\n{'sampler':<10} {'design':<9} {'plain ms/eval':>14} {'mcdiff ms/eval':>15} "
        f"{'overhead (range)':>24} {'null-net overhead':>18} {'one thread':>11} {'idle-net overhead':>18} "
        f"{'noise ms/eval':>14}"
    )
    columns = {"overhead": {}, "null-net overhead": {}, "one thread": {}, "idle-net overhead": {}}
    for name in labels:
        plain = per_eval[name, "unet", "plain"]
        null_plain = np.median(per_eval[name, "null", "plain"])
        for design in DESIGN_NAMES:
            ours = per_eval[name, "unet", design]
            ratios = ours / plain - 1
            row = {"overhead": np.median(ratios)}
            for net, column in (("null", "null-net overhead"), ("null serial", "one thread")):
                row[column] = (np.median(per_eval[name, net, design]) - null_plain) / np.median(plain)
            if "idle" in networks:
                row["idle-net overhead"] = np.median(per_eval[name, "idle", design] / per_eval[name, "idle", "plain"] - 1)
            for column, value in row.items():
                columns[column][name, design] = value
            spread = f"[{ratios.min():+.1%}, {ratios.max():+.1%}]"
            idle = f"{row['idle-net overhead']:+.2%}" if "idle" in networks else "-"
            print(
                f"{name:<10} {design:<9} {np.median(plain):>14.3f} {np.median(ours):>15.3f} "
                f"{row['overhead']:>+8.1%} {spread:>15} {row['null-net overhead']:>+18.2%} "
                f"{row['one thread']:>+11.2%} {idle:>18} {np.median(per_eval[name, 'noise', design]):>14.3f}"
            )
    print()
    for column, values in columns.items():
        if values:
            worst = max(values, key=values.get)
            print(f"largest {column}: {values[worst]:+.2%} ({' '.join(worst)})")

    if not args.no_memory:
        low, high = (_peak_memory_mb(args, s) for s in (10, args.ddpm_steps))
        kind = "GPU max allocated" if device.type == "cuda" else "process peak RSS"
        print(f"\npeak memory, DDPM, amc-rqmc, batch {args.batch} ({kind}, fresh process each)")
        print(f"{'steps':>6} {'peak MB':>9}")
        print(f"{10:>6} {low:>9.1f}\n{args.ddpm_steps:>6} {high:>9.1f}")
        print(f"ratio {args.ddpm_steps} / 10 steps: {high / low:.3f}")
        print(json.dumps({"peak_mb_10": low, f"peak_mb_{args.ddpm_steps}": high}))


if __name__ == "__main__":
    main()
