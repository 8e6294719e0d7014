"""Dieharder on mcdiff's Philox stream, in the order samplers consume it.

The 32-bit words are those of :func:`mcdiff.noise.standard_normal` for the antithetic
design's streams (``stream_keys(seed, design tag, pair)``): for each step ``f`` (counter word
1), for each of 64 consecutive pairs (one key each, so neighbouring streams are interleaved),
the words of 256 consecutive Philox blocks (counter word 0), lanes in order; then the next
64 pairs. Independence across addresses and steps is therefore tested together with the
words within one stream. The stream is piped raw into ``dieharder -g 200`` (stdin) for each
test whose dieharder reliability is "Good"; a test passes at dieharder's own thresholds
(``PASSED``, ``WEAK`` at p < 0.005 or > 0.995, ``FAILED`` at p < 1e-6 or > 1 - 1e-6).

Needs Debian's ``dieharder`` (``apt-get install dieharder``). Writes
``statistics/results/rng_battery.md``.

    python statistics/rng_battery.py               # the Good tests, default sample sizes
    python statistics/rng_battery.py --tests 0 2 15
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from mcdiff.noise import key_words, philox4x32, stream_keys

GOOD = (0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 15, 16, 17, 100, 101, 102, 200, 201, 202, 203, 204, 205)
EXTRA = {200: ("-n", "8")}  # the bit-distribution test needs a tuple size; dieharder -a runs 1..12
PAIRS, BLOCKS = 64, 256


def words(seed: int):
    """Yield the stream as byte strings, chunk by chunk, without end."""
    zero = torch.zeros((), dtype=torch.int64)
    c0 = torch.arange(BLOCKS, dtype=torch.int64)[None, :]
    component = torch.tensor(0x9E1D, dtype=torch.int64)
    first = 0
    while True:
        k0, k1 = (k[:, None] for k in key_words(stream_keys(seed, 1, np.arange(first, first + PAIRS)), "cpu"))
        for step in range(16):
            x = philox4x32((c0, torch.tensor(step, dtype=torch.int64), component, zero), (k0, k1))
            yield torch.stack(x, dim=-1).numpy().astype("<u4").tobytes()
        first += PAIRS


def feed(process: subprocess.Popen, seed: int) -> None:
    try:
        for chunk in words(seed):
            process.stdin.write(chunk)
    except (BrokenPipeError, ValueError, OSError):
        pass


def run_test(test: int, seed: int, timeout: float) -> tuple[str, str, float]:
    start = time.perf_counter()
    process = subprocess.Popen(
        ["dieharder", "-g", "200", "-d", str(test), *EXTRA.get(test, ())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False
    )
    threading.Thread(target=feed, args=(process, seed), daemon=True).start()
    timer = threading.Timer(timeout, process.kill)  # communicate() would close stdin at once
    timer.start()
    out = process.stdout.read()
    process.wait()
    timer.cancel()
    if process.returncode < 0:
        return f"-d {test}", "timed out", time.perf_counter() - start
    lines = [ln for ln in out.decode().splitlines() if "|" in ln and ("PASSED" in ln or "WEAK" in ln or "FAILED" in ln)]
    return f"-d {test}", "; ".join(" ".join(ln.split()) for ln in lines), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, nargs="+", default=list(GOOD))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test (default 600)")
    args = parser.parse_args(argv)
    if shutil.which("dieharder") is None:
        sys.exit("dieharder is not installed: apt-get install dieharder")
    torch.set_num_threads(1)
    rows, begun = [], time.perf_counter()
    for test in args.tests:
        name, verdicts, seconds = run_test(test, args.seed, args.timeout)
        rows.append((name, verdicts, seconds))
        print(f"{name:>7}  {seconds:6.0f} s  {verdicts}", flush=True)
    counts = {v: sum(r[1].count(v) for r in rows) for v in ("PASSED", "WEAK", "FAILED")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    print(summary)
    command = "python statistics/rng_battery.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = "\n".join(f"| {n} | {v} | {s:.0f} |" for n, v, s in rows)
    text = (
        f"# Dieharder on mcdiff's Philox stream\n\n`{command.strip()}` ({time.perf_counter() - begun:.0f} s): "
        f"{summary}.\n\n| test | dieharder's lines (name, ntup, tsamples, psamples, p-value, assessment) | s |\n"
        f"|---|---|---|\n{table}\n"
    )
    (Path(__file__).parent / "results" / "rng_battery.md").write_text(text)


if __name__ == "__main__":
    main()
