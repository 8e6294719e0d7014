"""The command line: estimate prints a table, writes a loadable result, and fails cleanly: every\nerror a user can cause is one line and exit status 2, before the first evaluation."""

import re
import shutil
import subprocess
import sys
import time

import pytest

import mcdiff
from mcdiff.cli import build_parser, find_run_all, main
from mcdiff.models import bundled_path


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


def _broken_model(tmp_path, weights: bytes | None):
    """A copy of the bundled digits model directory whose unet/ has its config and ``weights``
    as its weight file (none when ``None``)."""
    model = tmp_path / "model"
    shutil.copytree(bundled_path("digits"), model)
    file = model / "unet" / "diffusion_pytorch_model.safetensors"
    file.unlink()
    if weights is not None:
        file.write_bytes(weights)
    return model


@pytest.mark.parametrize(
    "command, match",
    [
        (["estimate", "-o", "{tmp}/no/such/dir/out.nc"], r"directory '.*/no/such/dir' does not exist"),
        (["estimate", "-o", "{tmp}/file/out.nc"], r"'.*/file' is a file, not a directory"),
        (["estimate", "-o", "{tmp}/out.txt"], r"must end in \.nc, \.nc4, \.netcdf, \.zarr"),
        (["estimate", "--seed", str(2**63)], r"seed must be a non-negative integer below 2\*\*63"),
        (["estimate", "--seed", "-1"], r"seed must be a non-negative integer below 2\*\*63 .*, got -1"),
        (["estimate", "--model", "{model}"], r"has unet/config.json but no weights: expected '.*/unet/"
                                             r"diffusion_pytorch_model.safetensors'"),
        (["estimate", "--model", "{damaged}"], r"cannot load the UNet of '.*/model': .*safetensors"),
        (["estimate", "--dask-scheduler", "tcp://127.0.0.1:1"],
         r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:1' within 5 s"),
        (["multifidelity", "--fidelities", "2", "4", "-n", "64", "16", "--method", "mlmc", "cv",
          "-o", "{tmp}/out.txt"], r"must end in \.nc.*got '.*/out-mlmc.txt'"),
        (["multifidelity", "--fidelities", "2", "4", "-n", "64", "16", "--seed", str(2**64)], "below 2\\*\\*63"),
        (["diagnose", "--steps", "4", "-o", "{tmp}/file"], r"report directory '.*/file': it is a file"),
        (["diagnose", "--steps", "4", "--timesteps", "7", "-o", "{tmp}/report"],
         r"timesteps \[7\] are not in the sampler's schedule"),
        (["demo", "-o", "{tmp}/out.txt"], r"must end in \.nc"),
        (["demo", "--figure", "{tmp}/no/such/dir/f.png"], r"cannot write figure .*: directory .* does not exist"),
    ],
    ids=["missing-dir", "parent-is-file", "extension", "seed-2**63", "seed-negative", "no-weights", "bad-weights",
         "no-scheduler", "multifidelity-extension", "multifidelity-seed", "diagnose-file", "diagnose-timesteps",
         "demo-extension", "demo-figure-dir"],
)
def test_a_user_error_is_one_line_and_exit_2_before_any_evaluation(tmp_path, capsys, evaluations, command, match):
    (tmp_path / "file").write_text("")
    model = _broken_model(tmp_path, None) if "{model}" in command else None
    damaged = _broken_model(tmp_path, b"not safetensors") if "{damaged}" in command else None
    argv = [a.format(tmp=tmp_path, model=model, damaged=damaged) for a in command]
    if argv[0] == "estimate":
        argv += ["-n", "64", "--steps", "2"] + ([] if "-o" in argv else ["-o", str(tmp_path / "r.nc")])
    start = time.perf_counter()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"mcdiff {argv[0]}: error: "), err
    assert re.search(match, err), err
    assert evaluations == []  # refused before the first sampler call
    assert time.perf_counter() - start < 30  # the unreachable scheduler: a 5 s connect timeout, not 30 s
    assert not list(tmp_path.glob("*.nc")) and not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    "argv, new",
    [
        (["estimate", "--sampler", "DDPMScheduler"], "--solver"),
        (["diagnose", "--sampler", "DDPMScheduler"], "--solver"),
        (["estimate", "--scheduler", "tcp://127.0.0.1:8786"], "--dask-scheduler"),
    ],
)
def test_a_former_option_name_is_one_line_naming_the_new_one(capsys, evaluations, argv, new):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and evaluations == []
    assert err == f"mcdiff {argv[0]}: error: {argv[1]} is now {new}\n"


def test_shared_options_are_declared_once_and_mean_the_same_everywhere():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for option, names in {"--seed": ("estimate", "multifidelity", "diagnose"),
                          "--solver": ("estimate", "diagnose"), "--confidence": ("estimate", "multifidelity"),
                          "--store": ("estimate", "multifidelity"), "--dask-scheduler": ("estimate", "multifidelity")}.items():
        helps = {commands[n]._option_string_actions[option].help for n in names}
        assert len(helps) == 1, (option, helps)


def test_a_full_disk_while_saving_is_one_line_naming_the_file_and_the_free_space(tiny_disk, capsys):
    out = tiny_disk / "r.nc"
    code = main(["estimate", "-n", "2048", "--steps", "2", "--designs", "mc", "amc", "--statistics", "pixel_mean",
                 "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert re.search(rf"no space left on the file system of '{tiny_disk}' writing '{out}': [\d.]+ MiB free", err)
    assert list(tiny_disk.iterdir()) == []
