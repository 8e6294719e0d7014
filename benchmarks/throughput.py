"""Sampling cost: mcdiff's runner beside a plain diffusers loop, and what its noise costs alone.

For DDIM 50 steps and DDPM 1000 steps on one UNet, batch and device, every design (mc, amc,
rqmc, amc-rqmc) runs the full evaluation path: noise generated on the sampler's device step by
step from ``(seed, design, address, component, step)``, the sampler, a statistic (each image's
brightness) and, in the ``overhead`` rows, the runner's loop around it (``mcdiff.estimate``:
blocks through the executor, the streaming accumulation in address order). The plain side is what a
diffusers user writes: ``torch.randn`` with a generator, ``unet`` + ``scheduler.step`` in a
loop (DDPM draws its step noise inside ``step``), the mean of each image.

The loops run in lockstep (:class:`Lockstep`): the plain loop, a second plain loop and the
four designs run in threads that take turns, one network call each, so the k-th steps of all
six run within a fraction of a second of each other. A shared machine's speed drifts by several per cent over
minutes, more than the overhead to be measured; in lockstep the drift hits the k-th step
of every loop alike and cancels in the paired comparison. Each turn (a network call, the
scheduler step, the noise, the statistic where a batch ends) is timed; waiting for a turn
is not. The overhead is ``sum(design turns) / sum(plain turns) - 1``, its standard error
from the paired differences over :data:`BLOCKS` contiguous blocks of turns.

- ``overhead``: with the UNet, mcdiff's defaults (on this machine, with one torch thread and
  a second core, step noise is made a chunk ahead on a worker thread). The worker runs
  while other loops have the turn and slows them (shared cache and memory), so what it
  costs is partly charged to them: ``plain again`` shows how much; ``one thread`` has no
  such leak.
- ``one thread``: :func:`mcdiff.blocks.evaluate_design` with ``prefetch=False``, every noise
  draw made on the sampler's thread when it is needed: all of mcdiff's work is inside its own
  turns (without the runner's accumulation).
- ``idle-net`` (CPU only): a network that sleeps ``--idle-ms`` per call and then costs
  nothing, a stand-in for a network that runs on a GPU and leaves the CPU free; mcdiff's
  noise is then made ahead while the network runs. Each loop runs :data:`IDLE_BATCHES`
  batches, so that the next batch's Sobol' points are made while one runs.
- ``noise ms/eval``: the time to generate one evaluation's whole noise path alone.
- ``plain again``: a second plain loop in the same lockstep, compared with the first as the
  designs are: what the method reports when there is no difference to find.

The benchmark asks glibc's malloc to keep freed memory (:func:`keep_freed_memory`): with its
defaults, page faults took 10-17% of the sampling time here and differed by several per cent
between threads doing the same work, more than the overhead to be measured.

Peak memory: a DDPM run at 10 and at 1000 steps, each in a fresh process (peak RSS only
grows; on a GPU, ``torch.cuda.max_memory_allocated``), after imports and a warm-up batch.

    python benchmarks/throughput.py                              # CPU: small 32x32 UNet, 1 thread
    python benchmarks/throughput.py --config cifar10 --batch 256 # GPU: CIFAR-10 DDPM's UNet config
    python benchmarks/throughput.py --config photos --batch 8 --ddim-batches 1 --ddpm-steps 200
                                                                 # the bundled photos model's trained UNet

``--config photos`` times the trained UNet of the bundled photos model
(``mcdiff.load_model("photos").unet``, 2.5M parameters, attention at 16x16) under DDIM and DDPM
schedulers made from its own scheduler config; the other configs are random-weight UNets
under diffusers' default linear schedule.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import threading
import time
from functools import partial

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from memory_and_dask import peak_rss_mb  # a script beside this one

from mcdiff.blocks import evaluate_design
from mcdiff.designs import DESIGN_NAMES, SobolRQMC, get_design
from mcdiff.functionals import brightness
from mcdiff.runner import estimate
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
PHOTOS = "photos"
"""The ``--config`` that times the bundled photos model's trained UNet instead of a random one."""


def _scheduler_factory(config: str, scheduler_class):
    """``scheduler_class`` itself, or for ``photos`` one made from the bundled model's scheduler config."""
    if config != PHOTOS:
        return scheduler_class
    import mcdiff

    return partial(scheduler_class.from_config, mcdiff.load_model(PHOTOS).scheduler.config)
IDLE_BATCHES = 4
"""Batches per run with the idle network: batch ``k + 1``'s Sobol' points are made while ``k`` runs."""
BLOCKS = 20
"""Contiguous blocks of turns whose paired differences give the overhead's standard error."""


class Lockstep:
    """Loops in threads that take turns, one network call each; every turn is timed.

    Loop ``i`` runs from one of its network calls up to the next (the call, the scheduler
    step, the noise, whatever comes before the next call) and then hands over to the next
    loop still running, so all loops advance together. Turn 0 is what a loop does before
    its first network call, turn ``k`` holds its call ``k``, and the last turn ends when the
    loop returns. Waiting for a turn is not timed; on a GPU each turn ends with a
    synchronisation, so that its kernels are charged to it.
    """

    def __init__(self, count: int, device: torch.device):
        self._go = [threading.Semaphore(0) for _ in range(count)]
        self._running = list(range(count))
        self._lock = threading.Lock()
        self._started = [0.0] * count
        self._sync = _synchronizer(device)
        self.turns: list[list[float]] = [[] for _ in range(count)]

    def network(self, i: int, network: torch.nn.Module) -> torch.nn.Module:
        """``network`` as loop ``i`` calls it: each call waits for the loop's next turn."""
        return _TakingTurns(network, partial(self._turn, i))

    def run(self, loops) -> list[np.ndarray]:
        """Run the callables ``loops`` in lockstep; the seconds of each loop's turns."""
        errors: list[BaseException] = []
        threads = [threading.Thread(target=self._loop, args=(i, loop, errors)) for i, loop in enumerate(loops)]
        for thread in threads:
            thread.start()
        self._go[0].release()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return [np.array(t) for t in self.turns]

    def _loop(self, i: int, loop, errors: list) -> None:
        self._take(i)
        try:
            loop()
        except BaseException as err:  # re-raised by run(), after the other loops end
            errors.append(err)
        finally:
            self._hand_over(i, done=True)

    def _turn(self, i: int) -> None:
        self._hand_over(i, done=False)
        self._take(i)

    def _take(self, i: int) -> None:
        self._go[i].acquire()
        self._started[i] = time.perf_counter()

    def _hand_over(self, i: int, done: bool) -> None:
        self._sync()
        self.turns[i].append(time.perf_counter() - self._started[i])
        with self._lock:
            following = self._running[(self._running.index(i) + 1) % len(self._running)]
            if done:
                self._running.remove(i)
        if not (done and following == i):
            self._go[following].release()


class _TakingTurns(torch.nn.Module):
    def __init__(self, network: torch.nn.Module, turn):
        super().__init__()
        self.network, self.turn = network, turn

    def forward(self, *args, **kwargs):
        self.turn()
        return self.network(*args, **kwargs)


def paired_overhead(ours: np.ndarray, plain: np.ndarray, blocks: int = BLOCKS) -> tuple[float, float]:
    """``sum(ours) / sum(plain) - 1`` of turn times paired by index, and its standard error.

    The error is that of the sum of paired differences of turns 1 onwards, from their spread
    over ``blocks`` contiguous blocks (blocks absorb correlation between neighbouring turns).
    Turn 0, what each loop does once before its first network call (for RQMC, the first
    batch's Sobol' points), is counted in the overhead but not in its error: it is a one-off
    cost, not a draw from the steady state.
    """
    if ours.shape != plain.shape:
        raise ValueError(f"the loops took {len(ours)} and {len(plain)} turns; lockstep needs equal turns")
    paired = ours - plain
    differences = np.array([d.sum() for d in np.array_split(paired[1:], min(blocks, len(paired) - 1))])
    total = plain.sum()
    return paired.sum() / total, differences.std(ddof=1) * np.sqrt(len(differences)) / total


def _unet(config: str, size: int, device: torch.device, dtype: torch.dtype) -> UNet2DModel:
    if config == PHOTOS:
        import mcdiff

        unet = mcdiff.load_model(PHOTOS).unet.eval()
        if unet.config.sample_size != size:
            sys.exit(f"--config photos is a {unet.config.sample_size}x{unet.config.sample_size} model, got --size {size}")
        return unet.to(device=device, dtype=dtype)
    torch.manual_seed(0)  # random weights: the cost of a forward pass does not depend on them
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, **CONFIGS[config]).eval()
    return unet if (device.type, dtype) == ("cpu", torch.float32) else unet.to(device=device, dtype=dtype)


class IdleNetwork(torch.nn.Module):
    """A network that sleeps ``seconds`` and then costs next to nothing: ``eps(x, t) = 0.1 x``.

    Sleeping holds up the caller without using a processor: a network that leaves the CPU
    free while it runs, as one on a GPU does.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, seconds: float):
        super().__init__()
        self.register_buffer("scale", torch.tensor(0.1, device=device, dtype=dtype))
        self.seconds = seconds

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
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


def _synchronizer(device: torch.device):
    """What waits for the work queued on ``device``: ``torch.cuda.synchronize`` on CUDA, else nothing."""
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def _seconds(fn, device: torch.device, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after a warm-up call."""
    sync = _synchronizer(device)
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _lockstep(args, network, scheduler_class, steps, batches, prefetch) -> dict[str, np.ndarray]:
    """The plain loop and every design in lockstep on ``network``: turn seconds by name."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape, n = (3, args.size, args.size), args.batch * batches
    lockstep = Lockstep(2 + len(DESIGN_NAMES), device)

    def plain(i: int) -> None:
        turns = lockstep.network(i, network)
        for _ in range(batches):
            _plain_loop(turns, scheduler_class(num_train_timesteps=1000), steps, args.batch, shape, device, dtype)

    loops = [partial(plain, 0), partial(plain, 1)]
    for i, design in enumerate(_designs(n).values(), start=2):
        sampler = DiffusionSampler(
            lockstep.network(i, network), scheduler_class(num_train_timesteps=1000), steps,
            image_shape=shape, device=device, dtype=dtype,
        )
        if prefetch is None:  # mcdiff's defaults, as a user runs it: the runner's loop, accumulation included
            loops.append(partial(estimate, sampler, [brightness], [design], n_evals=n, seed=0, batch_size=args.batch,
                                 progress=False, draws="none"))
        else:
            loops.append(partial(evaluate_design, sampler, [brightness], design, n, 0, args.batch, prefetch=prefetch))
    return dict(zip(("plain", "plain again", *DESIGN_NAMES), lockstep.run(loops)))


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (``mallopt``); False where libc is not glibc.

    With its defaults a large tensor is often a fresh mapping whose pages fault in when first
    touched: with the small UNet here that is 10-17% of the sampling time (system time), and
    it differs from thread to thread (each has its own arena), by several per cent between
    loops that do the same work. Blocks up to 32 MiB then come from the heap, which is never
    trimmed; both loops of a comparison run under the same setting.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


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
    scheduler = _scheduler_factory(args.config, DDPMScheduler)(num_train_timesteps=1000)
    sampler = DiffusionSampler(_unet(args.config, args.size, device, dtype), scheduler, steps)
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
    parser.add_argument("--config", default="small", choices=[*CONFIGS, PHOTOS],
                        help="UNet (default small; photos: the bundled photos model's trained UNet)")
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument(
        "--batch", type=int, default=16, help="evaluations per batch: 4 times a power of 2 (default 16)"
    )
    parser.add_argument("--ddim-batches", type=int, default=8, help="batches per DDIM loop (default 8; DDPM: 1)")
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

    kept = keep_freed_memory()
    unet = _unet(args.config, args.size, device, dtype)
    shape = (3, args.size, args.size)
    n_params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(
        f"UNet2DModel {args.config} {shape} ({n_params:.1f}M parameters), batch {args.batch}, "
        f"{device} {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"malloc {'keeps freed memory' if kept else 'defaults'}"
    )
    idle = IdleNetwork(device, dtype, args.idle_ms / 1e3) if device.type == "cpu" and args.idle_ms else None
    _lockstep(args, unet, _scheduler_factory(args.config, DDIMScheduler), 5, 1, None)  # warm-up: every loop once
    columns = {"overhead": {}, "one thread": {}, "idle-net": {}}
    header = (
        f"{'sampler':<10} {'design':<11} {'plain ms/eval':>14} {'mcdiff ms/eval':>15} {'overhead ± SE':>16} "
        f"{'one thread ± SE':>16} {'idle-net ± SE':>16} {'noise ms/eval':>14}"
    )
    rows = []
    for label, scheduler_class, steps in RUNS:
        steps = args.ddpm_steps if label == "DDPM" else steps
        name, batches = f"{label} {steps}", (args.ddim_batches if label == "DDIM" else 1)
        scheduler_class = _scheduler_factory(args.config, scheduler_class)
        started = time.perf_counter()
        runs = {
            "overhead": _lockstep(args, unet, scheduler_class, steps, batches, None),
            "one thread": _lockstep(args, unet, scheduler_class, steps, batches, False),
        }
        if idle is not None:
            runs["idle-net"] = _lockstep(args, idle, scheduler_class, steps, IDLE_BATCHES, None)
        print(f"{name}: lockstep runs took {time.perf_counter() - started:.0f} s", flush=True)
        sampler = DiffusionSampler(
            unet, scheduler_class(num_train_timesteps=1000), steps, image_shape=shape, device=device, dtype=dtype
        )
        evals = args.batch * batches
        for design_name, design in {"plain again": None, **_designs(args.batch)}.items():
            noise = partial(_draw_noise, sampler, design, args.batch)
            noise_ms = f"{_seconds(noise, device) / args.batch * 1e3:.2f}" if design else "-"
            cells = []
            for column, turns in runs.items():
                value, error = paired_overhead(turns[design_name], turns["plain"])
                if design:
                    columns[column][name, design_name] = (value, error)
                cells.append(f"{value:+.2%} ± {error:.2%}")
            cells += ["-"] * (3 - len(cells))
            plain_ms, ours_ms = (runs["overhead"][k].sum() / evals * 1e3 for k in ("plain", design_name))
            rows.append(
                f"{name:<10} {design_name:<11} {plain_ms:>14.2f} {ours_ms:>15.2f} {cells[0]:>16} {cells[1]:>16} "
                f"{cells[2]:>16} {noise_ms:>14}"
            )
    print("\n" + header + "\n" + "\n".join(rows) + "\n")
    for column, values in columns.items():
        if values:
            worst = max(values, key=lambda k: values[k][0] + 2 * values[k][1])
            value, error = values[worst]
            print(f"largest {column} + 2 SE: {value + 2 * error:+.2%} ({' '.join(worst)}: {value:+.2%} ± {error:.2%})")

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
