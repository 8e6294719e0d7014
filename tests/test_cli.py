"""The command line: estimate prints a table, writes a loadable result, and fails cleanly."""

import mcdiff
from mcdiff.cli import main


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
