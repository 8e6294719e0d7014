"""The benchmark runner: every benchmark script is registered, and the quick suite runs."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

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
