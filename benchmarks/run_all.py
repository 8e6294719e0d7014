"""Run every benchmark, print its tables and wall time, and write a summary.

Each benchmark runs as ``python benchmarks/<name>.py ARGS`` in a fresh process (its own torch
threads, memory and Dask workers; a failure does not stop the others), with this checkout's
``mcdiff`` first on ``PYTHONPATH``. ``--quick`` runs every benchmark at a small size (a few
minutes in all) and writes into ``runs/benchmarks-quick/`` so that the committed tables in
``benchmarks/results/`` stay the full-size ones; without it, each runs with the arguments
that made the tables quoted in the README (about 40 minutes on 2 cores, most of it the
multi-fidelity and offset-noise studies). The summary, ``run_all.md`` in the output
directory, lists every command, its wall time and its status.

    python benchmarks/run_all.py --quick                          # smoke run, a few minutes
    python benchmarks/run_all.py                                  # full size
    python benchmarks/run_all.py --only efficiency_table diversity_table
    python benchmarks/run_all.py --list                           # names, commands, stated times

Adding a benchmark is one line in :data:`BENCHMARKS`: a script with ``main(argv)`` whose
tables go to stdout (and, given ``--output DIR``, to files there).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUTPUT = "{output}"
"""Placeholder in a benchmark's arguments for the output directory of this run."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script ``benchmarks/<name>.py`` and its full-size and quick arguments.

    ``full_seconds`` is the wall time of the full-size run as measured when its table was
    made (2 shared CPU cores), or None where it was not measured.
    """

    name: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    full_seconds: float | None

    @property
    def path(self) -> Path:
        return HERE / f"{self.name}.py"

    def argv(self, quick: bool, output: Path) -> list[str]:
        """The arguments, ``{output}`` replaced by ``output`` (relative to the repository root if inside)."""
        output = output.resolve()
        shown = output.relative_to(ROOT) if output.is_relative_to(ROOT) else output
        return [a.replace(OUTPUT, str(shown)) for a in (self.quick if quick else self.full)]


BENCHMARKS = (
    Benchmark("efficiency_table", ("--output", OUTPUT), ("-n", "256", "--seeds", "2", "--output", OUTPUT), 199),
    Benchmark("diversity_table", ("--output", OUTPUT), ("--pairs", "64", "--steps", "20", "--output", OUTPUT), 183),
    Benchmark("diagnostics_digits", ("--output", OUTPUT),
              ("--steps", "10", "--n-pairs", "16", "--probes", "2", "--output", OUTPUT), 267),
    Benchmark("throughput", (), ("--size", "16", "--ddpm-steps", "50", "--ddim-batches", "2"), 1275),
    Benchmark("memory_and_dask", (), ("--sizes", "1000", "10000", "--dask-n-evals", "2048"), 188),
    Benchmark("streaming_memory", ("--budget-s", "240", "--output", OUTPUT),
              ("--sides", "32", "--sizes", "1024", "4096", "--designs", "mc", "amc", "--output", OUTPUT), None),
    Benchmark("multifidelity", ("--output", OUTPUT), ("--quick", "--output", OUTPUT), 922),
    Benchmark("offset_noise", ("--steps", "1500", "--size", "16", "--out", "runs/offset-study"),
              ("--steps", "20", "--size", "8", "--channels", "8", "16", "--sampling-steps", "5", "-n", "64",
               "--out", f"{OUTPUT}/offset-study"), 650),
    Benchmark("dps_inpainting", ("--output", OUTPUT),
              ("--steps", "10", "-n", "64", "--repeats", "1", "--output", OUTPUT), 607),
    Benchmark("mixture_bias", ("--output", OUTPUT), ("--n-evals", "4096", "--steps", "10", "20", "--output", OUTPUT),
              214),
    Benchmark("schedulers", ("-n", "256", "--seeds", "3", "--output", OUTPUT),
              ("-n", "128", "--seeds", "2", "--output", OUTPUT), None),
    Benchmark("photos_quality", ("-n", "256", "--output", OUTPUT),
              ("-n", "16", "--steps", "4", "--output", OUTPUT), None),
    Benchmark("photos_fp16", ("--output", OUTPUT), ("-n", "8", "--steps", "4", "--output", OUTPUT), 85),
    Benchmark("targets_table", ("--output", OUTPUT),
              ("-n", "64", "--dps-n", "64", "--seeds", "2", "--pilot-n", "128", "--steps", "5", "--output", OUTPUT),
              782),
)
"""Every benchmark; one whose script is absent from this checkout is listed as skipped."""


def command(bench: Benchmark, quick: bool, output: Path) -> str:
    """The shell command that runs one benchmark, relative to the repository root."""
    return shlex.join(["python", str(bench.path.relative_to(ROOT)), *bench.argv(quick, output)])


def run(bench: Benchmark, quick: bool, output: Path) -> tuple[str, float]:
    """Run one benchmark in a fresh process, its output streamed; ``(status, seconds)``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    args = [sys.executable, str(bench.path), *bench.argv(quick, output)]
    code = subprocess.run(args, cwd=ROOT, env=env, check=False).returncode
    return ("ok" if code == 0 else f"failed (exit {code})"), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes in all")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and their commands, run nothing")
    parser.add_argument("--output", type=Path,
                        help="directory of tables and summary (default: benchmarks/results, with --quick "
                        "runs/benchmarks-quick)")
    args = parser.parse_args(argv)
    names = [b.name for b in BENCHMARKS]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {names}")
    output = args.output or (ROOT / "runs" / "benchmarks-quick" if args.quick else HERE / "results")
    selected = [b for b in BENCHMARKS if args.only is None or b.name in args.only]

    if args.list:
        for bench in selected:
            stated = "not measured" if bench.full_seconds is None else f"{bench.full_seconds:.0f} s"
            present = "" if bench.path.is_file() else "  [absent from this checkout]"
            print(f"{bench.name}: full size {stated}{present}\n  full:  {command(bench, False, output)}\n"
                  f"  quick: {command(bench, True, output)}")
        return 0

    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for bench in selected:
        cmd = command(bench, args.quick, output)
        if not bench.path.is_file():
            rows.append((bench.name, cmd, "skipped: script absent", None))
            continue
        print(f"\n===== {bench.name}: {cmd}", flush=True)
        status, seconds = run(bench, args.quick, output)
        print(f"===== {bench.name}: {status} in {seconds:.0f} s", flush=True)
        rows.append((bench.name, cmd, status, seconds))

    ran = [s for *_, s in rows if s is not None]
    this = shlex.join(["python", "benchmarks/run_all.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        f"# Benchmarks ({'quick' if args.quick else 'full size'})", "",
        f"`{this}` ran {len(ran)} benchmarks in {sum(ran):.0f} s.", "",
        "| benchmark | command | status | wall time |", "|---|---|---|---|",
        *(f"| {n} | `{c}` | {st} | {'—' if s is None else f'{s:.0f} s'} |" for n, c, st, s in rows), "",
    ]
    text = "\n".join(lines)
    (output / "run_all.md").write_text(text)
    print("\n" + text)
    return 0 if all(st == "ok" or st.startswith("skipped") for _, _, st, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
