"""Results on disk: written whole or not at all (a full disk leaves the old file as it was), and
loaded only when whole (a truncated, altered or foreign file is refused by name)."""

import errno

import netCDF4
import pytest

import mcdiff


def _result(statistics, n_evals):
    return mcdiff.estimate(mcdiff.GaussianSampler(num_inference_steps=2), statistics, ["mc", "amc"],
                           n_evals=n_evals, progress=False)


@pytest.fixture(scope="module")
def small():
    return _result(["brightness", "centroid"], 64)


@pytest.fixture(scope="module")
def big():
    """About 2 MiB of pixel maps: more than the tiny disk holds."""
    return _result(["pixel_mean"], 2048)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_an_overwrite_that_fills_the_disk_leaves_the_old_result(tiny_disk, small, big, suffix):
    path = mcdiff.save_result(small, tiny_disk / f"r{suffix}")
    with pytest.raises(OSError, match=r"no space left on the file system of .* writing .*r\..*: [\d.]+ MiB free"
                       ) as raised:
        mcdiff.save_result(big, path)
    assert raised.value.errno == errno.ENOSPC and "\n" not in str(raised.value)
    assert mcdiff.load_result(path).identical(small)
    assert [p.name for p in tiny_disk.iterdir()] == [path.name]  # the temporary copy is gone


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_an_overwrite_replaces_the_result_whole(tmp_path, small, big, suffix):
    path = mcdiff.save_result(big, tmp_path / f"r{suffix}")
    mcdiff.save_result(small, path)
    assert mcdiff.load_result(path).identical(small)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.9, 0.999])
def test_a_truncated_result_fails_to_load_naming_the_file(tmp_path, big, fraction):
    whole = mcdiff.save_result(big, tmp_path / "whole.nc").read_bytes()
    cut = tmp_path / "cut.nc"
    cut.write_bytes(whole[: int(len(whole) * fraction)])
    with pytest.raises(ValueError, match=f"result '{cut}' (cannot be read|is damaged)"):
        mcdiff.load_result(cut)


def test_a_result_whose_values_changed_fails_to_load(tmp_path, small):
    path = mcdiff.save_result(small, tmp_path / "r.nc")
    with netCDF4.Dataset(path, "r+") as data:
        data["draws"]["brightness"][0, 0] = 0.123
    with pytest.raises(ValueError, match=r"is damaged.*/draws/brightness holds other values than were saved"):
        mcdiff.load_result(path)


def test_a_result_missing_a_variable_fails_to_load(tmp_path, small):
    path = tmp_path / "r.nc"
    mcdiff.save_result(small, path)
    with netCDF4.Dataset(path, "r+") as data:
        data["draws"].renameVariable("group", "other")
    with pytest.raises(ValueError, match=r"is damaged.*/draws/group missing \(saved with it\)"):
        mcdiff.load_result(path)


def test_a_file_not_written_by_save_result_is_refused(tmp_path, small):
    path = tmp_path / "r.nc"
    small.to_netcdf(path)
    with pytest.raises(ValueError, match="has no mcdiff-result/1 record"):
        mcdiff.load_result(path)
    (tmp_path / "junk.nc").write_bytes(b"not a netCDF file")
    with pytest.raises(ValueError, match="junk.nc' cannot be read"):
        mcdiff.load_result(tmp_path / "junk.nc")


@pytest.mark.parametrize(
    "name, match",
    [
        ("r.txt", r"must end in \.nc, \.nc4, \.netcdf, \.zarr"),
        ("missing/r.nc", "directory '.*missing' does not exist"),
        ("file/r.nc", "'.*file' is a file, not a directory"),
    ],
)
def test_save_refuses_a_path_it_cannot_write_before_writing(tmp_path, small, name, match):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=match):
        mcdiff.save_result(small, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_text_table_pads_columns_and_rules_the_header():
    rows = [["brightness", "0.5"], ["centroid[y]", "0.49997"]]
    assert mcdiff.results.text_table(["statistic", "estimate"], rows) == (
        "statistic    estimate\n-----------  --------\nbrightness   0.5\ncentroid[y]  0.49997"
    )
    assert mcdiff.results.text_table(["t", "r"], [["830", "1e-3"]], "right") == "  t     r\n---  ----\n830  1e-3"


@pytest.mark.parametrize(
    "rows, align, match",
    [([["a", "b"]], "centre", "align must be one of"), ([["a"]], "left", "every row must have 2 cells")],
)
def test_text_table_refuses_bad_rows_and_alignments(rows, align, match):
    with pytest.raises(ValueError, match=match):
        mcdiff.results.text_table(["x", "y"], rows, align)
