"""Peak memory and time per evaluation of a pixel map against N: the streaming loop's memory is flat.

Every configuration (image shape, design, N) runs in a fresh process, which prints its peak
resident memory (``VmHWM``) after one run of ``mcdiff.estimate(..., ["pixel_mean"], [design],
n_evals=N, draws="none")`` on a cheap ``FunctionSampler`` (``sigmoid(0.5 x_T + 0.2)``, so the
cost is mcdiff's: noise, statistic, accumulation). At the smallest N the child also runs the
in-memory path (``draws="memory"``: every evaluation's map kept, as mcdiff < 0.4 always did), checks
that its ``/summary`` and ``/moments`` are bit-identical to the streaming run's, and compares
the estimate and standard error with numpy's two-pass formulas over the kept values (largest
relative difference). Configurations whose time, predicted from the smallest N, exceeds
``--budget-s`` are skipped and listed as such.

    PYTHONPATH=. python benchmarks/streaming_memory.py                   # the table in the README
    PYTHONPATH=. python benchmarks/streaming_memory.py --sides 64 --sizes 1024 4096 --budget-s 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mcdiff
from mcdiff.results import text_table


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (``VmHWM``, Linux)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _sampler(side: int) -> mcdiff.FunctionSampler:
    shape = (3, side, side)
    return mcdiff.FunctionSampler(lambda noise: torch.sigmoid(0.5 * noise["x_T"] + 0.2), {"x_T": shape}, shape)


def child(side: int, design: str, n: int, batch: int, check: bool) -> None:
    """One configuration in this fresh process; prints one JSON line."""
    torch.set_num_threads(1)
    run = dict(statistics=["pixel_mean"], designs=[design], batch_size=batch, progress=False, seed=0)
    sampler = _sampler(side)
    mcdiff.estimate(sampler, n_evals=2 * batch if design != "rqmc" else 16 * 2, **{**run, "batch_size": 32}, draws="none")
    start = time.perf_counter()
    result = mcdiff.estimate(sampler, n_evals=n, **run, draws="none")
    seconds = time.perf_counter() - start
    out = {"side": side, "design": design, "n": n, "peak_mb": peak_rss_mb(), "ms_per_eval": 1e3 * seconds / n}
    if check:
        kept = mcdiff.estimate(sampler, n_evals=n, **run, draws="memory")
        out["memory_peak_mb"] = peak_rss_mb()
        same = all(
            kept[node].to_dataset().drop_attrs().identical(result[node].to_dataset().drop_attrs())
            for node in ("summary", "moments")
        )
        values = kept["draws"]["pixel_mean"].sel(design=design).values
        groups = kept["draws"]["group"].sel(design=design).values
        means = values.reshape(len(np.unique(groups)), -1, *values.shape[1:]).mean(axis=1)
        summary = result["summary"]["pixel_mean"].sel(design=design)
        rel = lambda a, b: float(np.max(np.abs(a - b) / np.abs(b)))  # noqa: E731
        out["bit_identical"] = bool(same)
        out["rel_estimate"] = rel(summary.sel(summary="estimate").values, means.mean(axis=0))
        out["rel_std_error"] = rel(
            summary.sel(summary="std_error").values, means.std(axis=0, ddof=1) / np.sqrt(len(means))
        )
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--designs", nargs="+", default=["mc", "amc", "rqmc"])
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip a configuration predicted to take longer")
    parser.add_argument("--output", type=Path, help="also write the table to OUTPUT/streaming_memory.md")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, design, n, batch, check = args.child
        child(int(side), design, int(n), int(batch), check == "1")
        return
    rows, skipped = [], []
    for side in args.sides:
        batch = 64 if side <= 64 else 16
        for design in args.designs:
            per_eval, first = None, None
            for n in sorted(args.sizes):
                if per_eval is not None and per_eval * n / 1e3 > args.budget_s:
                    skipped.append(f"3×{side}×{side} {design} N={n} (predicted {per_eval * n / 1e3:.0f} s)")
                    continue
                check = first is None
                command = [sys.executable, __file__, "--child", str(side), design, str(n), str(batch), str(int(check))]
                line = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                out = json.loads(line)
                per_eval = out["ms_per_eval"]
                first = first or out
                rows.append(
                    [
                        f"3×{side}×{side}",
                        design,
                        f"{n:,}",
                        f"{out['peak_mb']:,.0f}",
                        f"{out['peak_mb'] / first['peak_mb']:.2f}",
                        f"{out['ms_per_eval']:.2f}",
                        f"{out['memory_peak_mb']:,.0f}" if check else "",
                        (
                            f"{'yes' if out['bit_identical'] else 'NO'}; {out['rel_estimate']:.1e} / {out['rel_std_error']:.1e}"
                            if check
                            else ""
                        ),
                    ]
                )
                print(rows[-1], file=sys.stderr, flush=True)
    header = [
        "image",
        "design",
        "N",
        "peak MB",
        "peak / peak at smallest N",
        "ms / eval",
        "peak MB, draws=memory",
        "in-memory: bit-identical; rel. diff. of estimate / SE vs two-pass numpy",
    ]
    lines = [text_table(header, rows), *(f"skipped: {line}" for line in skipped)]
    print("\n".join(lines))
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python benchmarks/streaming_memory.py", *sys.argv[1:]])
        text = f"# Peak memory of a pixel map against N\n\n`{command}`\n\n```\n" + "\n".join(lines) + "\n```\n"
        (args.output / "streaming_memory.md").write_text(text)


if __name__ == "__main__":
    main()
