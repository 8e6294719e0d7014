"""The benchmark runner: every benchmark script is registered, the quick suite runs; the lockstep timer."""

import importlib.util
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCHMARKS / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_script_is_registered():
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")} - {"run_all"}
    assert scripts <= {b.name for b in _run_all().BENCHMARKS}


def test_unknown_benchmark_is_refused(capsys):
    with pytest.raises(SystemExit):
        _run_all().main(["--only", "no_such_benchmark", "--list"])
    assert "no_such_benchmark" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_suite_runs_every_benchmark(tmp_path):
    """``run_all.py --quick``: every benchmark present exits 0 (1.5–4 minutes on 2 cores)."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", "--output", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (tmp_path / "run_all.md").read_text()
    for bench in _run_all().BENCHMARKS:
        status = "skipped: script absent" if not bench.path.is_file() else "| ok |"
        assert f"| {bench.name} |" in summary and status in summary.split(f"| {bench.name} |")[1].split("\n")[0]


def _throughput():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports a sibling script
    try:
        spec = importlib.util.spec_from_file_location("throughput", BENCHMARKS / "throughput.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_lockstep_loops_take_turns_one_network_call_each():
    """Calls interleave round-robin, a loop that ends leaves the others running, every turn is timed."""
    throughput = _throughput()
    lockstep = throughput.Lockstep(3, torch.device("cpu"))
    calls = []

    def loop(i, count):
        network = lockstep.network(i, torch.nn.Identity())
        for _ in range(count):
            calls.append(i)
            network(torch.zeros(1))

    turns = lockstep.run([partial(loop, 0, 3), partial(loop, 1, 1), partial(loop, 2, 3)])
    assert calls == [0, 1, 2, 0, 2, 0, 2]
    assert [len(t) for t in turns] == [4, 2, 4]  # turn 0 before the first call, then one per call
    assert all((t >= 0).all() for t in turns)


def test_lockstep_reraises_a_loops_error_after_the_others_end():
    throughput = _throughput()
    lockstep = throughput.Lockstep(2, torch.device("cpu"))
    finished = []

    def failing():
        lockstep.network(0, torch.nn.Identity())(torch.zeros(1))
        raise RuntimeError("boom")

    def other():
        network = lockstep.network(1, torch.nn.Identity())
        for _ in range(3):
            network(torch.zeros(1))
        finished.append(True)

    with pytest.raises(RuntimeError, match="boom"):
        lockstep.run([failing, other])
    assert finished == [True]


def test_paired_overhead_is_the_ratio_of_sums_with_turn_zero_outside_its_error():
    throughput = _throughput()
    rng = np.random.default_rng(0)
    plain = rng.uniform(0.9, 1.1, 401)
    value, error = throughput.paired_overhead(1.02 * plain, plain)
    assert value == pytest.approx(0.02) and error < 1e-3  # proportional turns: nearly no spread
    once = plain.copy()
    once[0] += 4.01  # a one-off cost before the first call
    value, error = throughput.paired_overhead(once, plain)
    assert value == pytest.approx(4.01 / plain.sum()) and error == 0.0
    noisy = plain + rng.normal(0, 0.05, plain.shape)
    assert throughput.paired_overhead(noisy, plain)[1] > 0.01 / np.sqrt(len(plain))
    with pytest.raises(ValueError, match="equal turns"):
        throughput.paired_overhead(plain[:-1], plain)
