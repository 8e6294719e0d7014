"""Sampling cost: mcdiff's runner beside a plain diffusers loop, and what its noise costs alone.

For DDIM 50 steps and DDPM 1000 steps on one UNet, batch and device, every design (mc, amc,
rqmc, amc-rqmc) runs the full evaluation path of :func:`mcdiff.blocks.evaluate_design`: noise
generated on the sampler's device step by step from ``(seed, design, address, component,
step)``, the sampler, and a statistic (each image's brightness). The plain side is what a
diffusers user writes: ``torch.randn`` with a generator, ``unet`` + ``scheduler.step`` in a
loop (DDPM draws its step noise inside ``step``), the mean of each image. Repeats cycle
through every run so that load from other processes hits them alike; each run's fastest
repeat is reported (the least disturbed). ``noise ms/eval`` is the time to generate one
evaluation's whole noise path alone, without the model.

Peak memory: a DDPM run at 10 and at 1000 steps, each in a fresh process (peak RSS only
grows; on a GPU, ``torch.cuda.max_memory_allocated``), after imports and a warm-up batch.

    python benchmarks/throughput.py                              # CPU: small 32x32 UNet, 1 thread
    python benchmarks/throughput.py --config cifar10 --batch 256 # GPU: CIFAR-10 DDPM's UNet config
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from functools import partial

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

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


def _unet(config: str, size: int, device: torch.device, dtype: torch.dtype) -> UNet2DModel:
    torch.manual_seed(0)  # random weights: the cost of a forward pass does not depend on them
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, **CONFIGS[config]).eval()
    return unet if (device.type, dtype) == ("cpu", torch.float32) else unet.to(device=device, dtype=dtype)


def _plain_loop(unet, scheduler, steps, batch, shape, device, dtype) -> None:
    """What a diffusers user writes (the loop of ``DDIMPipeline`` / ``DDPMPipeline``)."""
    generator = torch.Generator(device).manual_seed(0)
    scheduler.set_timesteps(steps)
    with torch.inference_mode():
        x = torch.randn((batch, *shape), generator=generator, device=device, dtype=dtype)
        for t in scheduler.timesteps:
            eps = unet(x, t).sample
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        ((x / 2 + 0.5).clamp(0, 1)).mean(dim=(1, 2, 3)).cpu()


def _draw_noise(sampler, design, batch) -> None:
    """Generate one batch's whole noise path as the sampler would ask for it, without the model."""
    noise = design.noise(sampler.noise_spec, 0, 0, batch, batch, device=sampler.device, dtype=sampler.dtype)
    noise["x_T"]
    for i in range(sampler.noise_spec["steps"][0] if "steps" in sampler.noise_spec else 0):
        noise.step("steps", i)


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
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", choices=list(CONFIGS), help="UNet (default small)")
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument(
        "--batch", type=int, default=16, help="evaluations per run, one batch: 4 times a power of 2 (default 16)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per run (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on the CPU)")
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--ddpm-steps", type=int, default=1000, help="steps of the DDPM run (default 1000)")
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
    runs, labels = {}, []
    for label, scheduler_class, steps in RUNS:
        steps = args.ddpm_steps if label == "DDPM" else steps
        scheduler = scheduler_class(num_train_timesteps=1000)
        sampler = DiffusionSampler(unet, scheduler, num_inference_steps=steps, device=device, dtype=dtype)
        name = f"{label} {steps}"
        labels.append(name)
        runs[name, "plain"] = partial(_plain_loop, unet, scheduler, steps, args.batch, shape, device, dtype)
        for design, d in _designs(args.batch).items():
            runs[name, design] = partial(evaluate_design, sampler, [brightness], d, args.batch, 0, args.batch)
            runs[name, design, "noise"] = partial(_draw_noise, sampler, d, args.batch)
    for key, run in runs.items():  # warm-up (the DDPM runs' first repeat warms nothing more)
        if key[0].startswith("DDIM"):
            run()
    times = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, run in runs.items():
            times[key].append(_timed(run))

    print(f"\n{'sampler':<10} {'design':<9} {'plain ms/eval':>14} {'mcdiff ms/eval':>15} {'overhead':>9} "
          f"{'noise ms/eval':>14}")
    summary = {}
    for name in labels:
        plain = min(times[name, "plain"]) / args.batch * 1e3
        for design in DESIGN_NAMES:
            ours = min(times[name, design]) / args.batch * 1e3
            noise = min(times[name, design, "noise"]) / args.batch * 1e3
            summary[name, design] = ours / plain - 1
            print(f"{name:<10} {design:<9} {plain:>14.3f} {ours:>15.3f} {ours / plain - 1:>9.1%} {noise:>14.3f}")
    print(f"\nlargest overhead: {max(summary.values()):.1%} ({max(summary, key=summary.get)})")

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
