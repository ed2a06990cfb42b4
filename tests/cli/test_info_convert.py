"""``medidiff info`` and ``medidiff convert``: output, round trips, one-line errors with exit code 2."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from cli_runner import call
from medidiff.io import load_scan

ANATOMICAL = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data" / "anatomical.nii"
EXAMPLE4D = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data" / "example4d.nii.gz"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medidiff", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_info_nifti_subprocess():
    result = run_cli("info", ANATOMICAL)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "shape:       25 x 41 x 33 (z, y, x)" in out
    assert "spacing:     2 x 2 x 2 mm" in out
    assert "orientation: LAS" in out
    img = np.asarray(nibabel.load(ANATOMICAL).dataobj, dtype=np.float64)
    assert f"min {img.min():.6g}, max {img.max():.6g}, mean {img.mean():.6g}" in out


def test_missing_file_exits_2_with_one_line(tmp_path):
    result = run_cli("info", tmp_path / "missing.nii.gz")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.nii.gz: no such file or folder" in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_file_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(ANATOMICAL.read_bytes()[:5000])
    code, out, err = call(capsys, "info", bad)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and "truncated" in err
    code, out, err = call(capsys, "convert", bad, tmp_path / "out.nii.gz")
    assert code == 2 and not (tmp_path / "out.nii.gz").exists()


def test_info_4d_needs_volume(capsys):
    code, out, err = call(capsys, "info", EXAMPLE4D)
    assert code == 2 and "--volume" in err and len(err.strip().splitlines()) == 1
    code, out, err = call(capsys, "info", EXAMPLE4D, "--volume", "1")
    assert code == 0 and "shape:       24 x 96 x 128" in out


def test_info_dicom_file(capsys):
    code, out, err = call(capsys, "info", get_testdata_file("CT_small.dcm"))
    assert code == 0
    assert "modality:    CT" in out and "orientation: LPS" in out and "shape:       128 x 128 (y, x)" in out


def test_convert_round_trip_and_series_listing(tmp_path, capsys):
    series = tmp_path / "anat_dicom"
    code, out, err = call(capsys, "convert", ANATOMICAL, series)
    assert code == 0 and series.is_dir() and "wrote" in out
    assert len(list(series.iterdir())) == 25

    code, out, err = call(capsys, "info", series)
    assert code == 0
    assert "series found: 1" in out and "25 images" in out and "orientation: LAS" in out

    back = tmp_path / "back.nii.gz"
    code, out, err = call(capsys, "convert", series, back)
    assert code == 0
    ref = load_scan(ANATOMICAL)
    got = load_scan(back)
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(got.array, ref.array)

    tif = tmp_path / "anat.ome.tif"
    code, out, err = call(capsys, "convert", back, tif)
    assert code == 0 and load_scan(tif).spacing == pytest.approx(ref.spacing)

    # a second series in the folder: info lists both, then asks for --series
    code, out, err = call(capsys, "convert", ANATOMICAL, tmp_path / "second", "--format", "dicom")
    for f in (tmp_path / "second").iterdir():
        f.rename(series / f"second_{f.name}")
    code, out, err = call(capsys, "info", series)
    number = str(pydicom.dcmread(next(series.glob("second_*"))).SeriesInstanceUID)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1  # one line that lists both series
    assert "holds 2 series" in err and "--series" in err and number in err
    code, out, err = call(capsys, "info", series, "--series", number)
    assert code == 0 and number in out and "series found: 2" in out


def test_convert_refuses_existing_and_input(tmp_path, capsys):
    out_path = tmp_path / "a.nii"
    assert call(capsys, "convert", ANATOMICAL, out_path)[0] == 0
    before = out_path.read_bytes()
    code, out, err = call(capsys, "convert", ANATOMICAL, out_path)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert call(capsys, "convert", ANATOMICAL, out_path, "--overwrite")[0] == 0
    code, out, err = call(capsys, "convert", out_path, out_path, "--overwrite")
    assert code == 2 and "input" in err
    assert out_path.read_bytes() == before


def test_help_has_examples(capsys):
    for command in ("info", "convert"):
        code, out, err = call(capsys, command, "--help")
        assert code == 0 and "Example:" in out


def _tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones too), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sub", ["sub", "sub/deeper", "scan.nii.gz", "sub/scan.tif"])
def test_convert_into_its_own_input_folder_is_refused(tmp_path, capsys, sub):
    series = tmp_path / "series"
    assert call(capsys, "convert", ANATOMICAL, series)[0] == 0
    before = _tree_digest(series)
    code, out, err = call(capsys, "convert", series, series / sub)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "inside the input folder" in lines[0] and "Traceback" not in err
    assert _tree_digest(series) == before  # nothing written into (or next to) the input


def _cannot_write_cases(tmp_path: Path) -> dict[str, Path]:
    afile = tmp_path / "a_file"
    afile.write_text("x")
    return {
        "under a file": afile / "out.nii.gz",
        "series under a file": afile / "sub" / "series",
        "in /proc": Path("/proc/medidiff-test-out.nii.gz"),
        "series in /proc": Path("/proc/medidiff-test-series"),
        "new folder in /proc": Path("/proc/medidiff-test-dir/out.tif"),
    }


@pytest.mark.parametrize("case", ["under a file", "series under a file", "in /proc", "series in /proc", "new folder in /proc"])
def test_convert_to_a_place_that_cannot_hold_it(tmp_path, capsys, case):
    out_path = _cannot_write_cases(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = call(capsys, "convert", ANATOMICAL, out_path)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(out_path) in lines[0] and "Traceback" not in err
    assert not out_path.exists() and sorted(p.name for p in tmp_path.iterdir()) == before
    assert not [p for p in Path("/proc").iterdir() if "medidiff-test" in p.name]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_convert_into_a_read_only_folder(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        for name in ("out.nii.gz", "series"):
            code, out, err = call(capsys, "convert", ANATOMICAL, folder / name)
            assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot be written" in err
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (needs root and mount; skipped elsewhere)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)  # busy (an open file): detach lazily


@pytest.mark.parametrize("name", ["out.nii", "out.ome.tif", "series"])
def test_convert_onto_a_full_disk_leaves_nothing(full_disk, capsys, name):
    code, out, err = call(capsys, "convert", ANATOMICAL, full_disk / name)  # 135 kB of voxels into 64 kB
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot be written here" in err
    assert list(full_disk.iterdir()) == []
