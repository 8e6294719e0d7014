"""The command line: estimate prints a table, writes a loadable result, and fails cleanly."""

import subprocess
import sys

import pytest

import mcdiff
from mcdiff.cli import find_run_all, main


def test_estimate_writes_a_result_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "r.nc"
    code = main(["estimate", "-n", "64", "--designs", "mc", "amc", "--statistics", "brightness", "centroid",
                 "--steps", "5", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "centroid[x]" in printed and "amc" in printed and "rel. eff." in printed
    result = mcdiff.load_result(out)
    assert list(result["summary"]["design"].values) == ["mc", "amc"]
    assert int(result["summary"]["n_evals"].sel(design="amc")) == 64


def test_bad_input_exits_2_with_the_message(tmp_path, capsys):
    code = main(["estimate", "-n", "100", "--designs", "rqmc", "-o", str(tmp_path / "r.nc")])
    assert code == 2
    assert "n_evals=100 is not replicates·2^m" in capsys.readouterr().err
    assert not (tmp_path / "r.nc").exists()


def test_bench_finds_the_checkout_from_anywhere_inside_it(tmp_path):
    script = tmp_path / "benchmarks" / "run_all.py"
    script.parent.mkdir()
    script.write_text("")
    (tmp_path / "notebooks").mkdir()
    assert find_run_all(tmp_path / "notebooks", checkout=tmp_path / "elsewhere") == script
    with pytest.raises(ValueError, match="source checkout"):
        find_run_all(tmp_path.parent / "nowhere", checkout=tmp_path / "elsewhere")


def test_bench_list_forwards_to_run_all():
    listed = subprocess.run([sys.executable, "-m", "mcdiff.cli", "bench", "--list", "--only", "diversity_table"],
                            capture_output=True, text=True, check=True).stdout
    assert "diversity_table: full size" in listed and "efficiency_table" not in listed
