"""Peak memory against N for a scalar statistic, and the Dask speed-up on 2 workers.

Memory: every N runs in a fresh process (peak RSS only grows), on the analytic model with
antithetic pairs and ``brightness``. The table shows the process's peak RSS, its growth over
the baseline after imports and one warm-up run, and the peak of Python/numpy allocations
during a second, traced run (``tracemalloc``; torch's own allocations are not traced).
Noise is drawn per batch, so the working set of the model is one batch whatever N is. What
grows with N is bookkeeping of about 75 bytes per evaluation (the value, its ``group`` and
``address``, and the copies made while the result is assembled and summarized): 7 MB at
N = 10^5, under 2% of the process.

Dask: the same study in this process (1 torch thread; in the main thread and, as Dask runs
tasks, in a worker thread: the speed-up is against the latter) and on a ``LocalCluster`` of
2 worker processes with 1 thread each (model built once per worker from a factory); the
results are checked to be bit-identical.

    PYTHONPATH=. python benchmarks/memory_and_dask.py            # both parts
    PYTHONPATH=. python benchmarks/memory_and_dask.py --memory   # memory only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import mcdiff

SIZES = (1_000, 10_000, 100_000)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: ``VmHWM`` of ``/proc/self/status`` (Linux).

    Not ``getrusage``'s ``ru_maxrss``: a child started by fork and exec inherits its parent's
    peak there, so a child of a large process reports the parent's peak.
    """
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def memory_child(n_evals: int) -> None:
    """Measure one N in this (fresh) process and print one CSV line."""
    sampler = mcdiff.GaussianSampler(image_shape=(1, 8, 8), num_inference_steps=10)
    run = partial(mcdiff.estimate, sampler, ["brightness"], ["amc"], batch_size=1000, progress=False)
    run(n_evals=1000)  # warm-up: lazy imports, torch kernels, allocator pools
    base = peak_rss_mb()
    start = time.perf_counter()
    run(n_evals=n_evals)
    seconds = time.perf_counter() - start
    rss = peak_rss_mb()
    tracemalloc.start()  # a second run, traced (tracing slows it and costs memory of its own)
    run(n_evals=n_evals)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{n_evals},{seconds:.2f},{peak / 2**20:.2f},{rss:.1f},{rss - base:.1f}")


def memory_table(sizes: tuple[int, ...] = SIZES) -> None:
    print("peak memory, analytic model 1x8x8, 10 DDIM steps, design amc, statistic brightness, batch 1000")
    print(f"{'N':>8}  {'time s':>7}  {'tracemalloc peak MB':>19}  {'peak RSS MB':>11}  {'RSS growth MB':>13}")
    for n in sizes:
        line = (
            subprocess.run(
                [sys.executable, __file__, "--memory-child", str(n)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        n_evals, seconds, traced, rss, growth = line.split(",")
        print(f"{int(n_evals):>8}  {seconds:>7}  {traced:>19}  {rss:>11}  {growth:>13}")


def heavy_model() -> mcdiff.GaussianSampler:
    """A slower analytic model for the speed-up (single-threaded torch, as each worker runs)."""
    import torch

    torch.set_num_threads(1)
    return mcdiff.GaussianSampler(image_shape=(1, 32, 32), num_inference_steps=50)


def dask_table(n_evals: int = 32_768) -> None:
    import dask
    from distributed import Client, LocalCluster

    # Dask's nannies export MALLOC_TRIM_THRESHOLD_=65536 to workers. Setting it switches off
    # glibc's dynamic mmap threshold, so every large torch CPU tensor is mmap'ed, zero-filled
    # and unmapped again: this benchmark's blocks ran 3-9x slower on workers than locally.
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})

    run = partial(
        mcdiff.estimate,
        statistics=["brightness"],
        designs=["amc", "amc-rqmc"],
        n_evals=n_evals,
        batch_size=256,
        block_size=1024,
        progress=False,
    )

    def timed(**kwargs):
        """Best of two runs (the machine may be shared), and the result."""
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            result = run(heavy_model, **kwargs)
            seconds.append(time.perf_counter() - start)
        return min(seconds), result

    run(heavy_model, n_evals=1024)  # warm-up of this process
    t_local, local = timed()
    # Dask runs tasks in worker threads; glibc serves a non-main thread from its own arena,
    # which handles torch's large CPU tensors much faster here than the main thread's heap.
    with ThreadPoolExecutor(1) as thread:
        t_thread, _ = thread.submit(timed).result()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        executor = mcdiff.DaskExecutor(client)
        run(heavy_model, n_evals=1024, executor=executor)  # warm-up: workers import torch, build the model
        t_dask, remote = timed(executor=executor)
    print(
        f"\nDask speed-up, analytic model 1x32x32, 50 DDIM steps, designs amc + amc-rqmc, N={n_evals} each, "
        "blocks of 1024, best of 2"
    )
    print(f"{'executor':>24}  {'seconds':>8}  {'speed-up':>8}")
    print(f"{'local, main thread':>24}  {t_local:8.1f}  {t_local / t_thread:8.2f}")
    print(f"{'local, 1 worker thread':>24}  {t_thread:8.1f}  {1:8.2f}")
    print(f"{'Dask, 2 workers x 1':>24}  {t_dask:8.1f}  {t_thread / t_dask:8.2f}")
    print(f"bit-identical results: {remote.identical(local)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="memory table only")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="N of the memory table")
    parser.add_argument("--dask-n-evals", type=int, default=32_768, help="N per design of the Dask timing")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
    else:
        memory_table(tuple(args.sizes))
        if not args.memory:
            dask_table(args.dask_n_evals)


if __name__ == "__main__":
    main()
