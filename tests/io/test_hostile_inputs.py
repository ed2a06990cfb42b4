"""Fuzz-style: broken and hostile inputs, built on the fly, through ``medidiff info`` and ``medidiff convert``.

Every case must give exit code 2, exactly one output line (``error: PATH: ...``, no traceback),
nothing written, and the input unchanged (sha256 of every file).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import tifffile

from cli_runner import call
from hostile_builders import dicom_header_only, nifti_header_only, png_header_only, tiff_header_only

NIBABEL_DATA = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data"
ANATOMICAL = NIBABEL_DATA / "anatomical.nii"


def _nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _patched(path: Path, source: bytes, offset: int, value: bytes) -> Path:
    blob = bytearray(source)
    blob[offset:offset + len(value)] = value
    path.write_bytes(bytes(blob))
    return path


def _nan_affine(path: Path) -> Path:
    """A NIfTI whose sform rows are NaN (nibabel refuses to write one, so the header bytes are patched)."""
    blob = bytearray(_nifti(path, np.ones((4, 4, 4), np.float32)).read_bytes())
    blob[252:256] = struct.pack("<hh", 0, 1)  # qform_code 0, sform_code 1: the sform is the affine
    blob[280:328] = struct.pack("<12f", *([float("nan")] * 12))  # srow_x, srow_y, srow_z
    path.write_bytes(bytes(blob))
    return path


def _series_with_gap(folder: Path) -> Path:
    from medidiff.io import Scan, affine_from_spacing, save_scan

    scan = Scan(np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4), (2.0, 1.0, 1.0), affine_from_spacing((2.0, 1.0, 1.0)))
    save_scan(scan, folder, format="dicom")
    sorted(folder.iterdir())[2].unlink()
    return folder


def _no_pixels_dicom(path: Path) -> Path:
    ds = pydicom.dcmread(dicom_header_only(path, 4, 4))
    del ds.Rows, ds.Columns, ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    return path


ANAT = ANATOMICAL.read_bytes()
CASES = {
    "truncated nifti": lambda d: (d / "t.nii").write_bytes(ANAT[:5000]) and d / "t.nii",
    "truncated nifti.gz": lambda d: (d / "t.nii.gz").write_bytes(gzip.compress(ANAT)[:3000]) and d / "t.nii.gz",
    "wrong nifti magic": lambda d: _patched(d / "m.nii", ANAT, 344, b"xx1\x00"),
    "negative dim": lambda d: _patched(d / "neg.nii", ANAT, 42, struct.pack("<h", -5)),
    "zero-size dim": lambda d: _nifti(d / "z.nii", np.zeros((0, 4, 4), np.float32)),
    "nan affine": lambda d: _nan_affine(d / "nanaff.nii"),
    "nan voxels": lambda d: _nifti(d / "nanvox.nii.gz", np.full((4, 4, 4), np.nan, np.float32)),
    "6d nifti": lambda d: _nifti(d / "six.nii", np.ones((2, 2, 2, 2, 2, 2), np.float32)),
    "4d nifti without --volume": lambda d: _nifti(d / "four.nii", np.ones((3, 3, 3, 2), np.float32)),
    "random bytes .nii.gz": lambda d: (d / "r.nii.gz").write_bytes(np.random.default_rng(1).bytes(3000)) and d / "r.nii.gz",
    "gzip of text .nii.gz": lambda d: (d / "g.nii.gz").write_bytes(gzip.compress(b"hello " * 200)) and d / "g.nii.gz",
    "empty .nii": lambda d: (d / "e.nii").write_bytes(b"") or d / "e.nii",
    "empty .dcm": lambda d: (d / "e.dcm").write_bytes(b"") or d / "e.dcm",
    "empty .tif": lambda d: (d / "e.tif").write_bytes(b"") or d / "e.tif",
    "empty .png": lambda d: (d / "e.png").write_bytes(b"") or d / "e.png",
    "text named .tif": lambda d: (d / "x.tif").write_text("not a tiff " * 50) and d / "x.tif",
    "tiff with 5 axes": lambda d: (tifffile.imwrite(d / "five.tif", np.ones((2, 3, 2, 8, 8), np.uint8), imagej=True,
                                                   metadata={"axes": "TZCYX"}), d / "five.tif")[1],
    "truncated tiff": lambda d: tiff_header_only(d / "short.tif", 300, 300),
    "truncated png": lambda d: (d / "t.png").write_bytes(png_header_only(d / "full.png", 64, 64).read_bytes()[:40]) and d / "t.png",
    "png 100000^2": lambda d: png_header_only(d / "huge.png", 100_000, 100_000),
    "nifti 30000^3": lambda d: nifti_header_only(d / "bomb.nii", (30000,) * 3, np.int16),
    "dicom truncated pixels": lambda d: dicom_header_only(d / "px.dcm", 64, 64, frames=2, pixel_bytes=100),
    "dicom without pixels": lambda d: _no_pixels_dicom(d / "np.dcm"),
    "dicom series with a gap": lambda d: _series_with_gap(d / "gap"),
    "folder with no scans": lambda d: ((d / "empty_dir").mkdir(), (d / "empty_dir" / "README.txt").write_text("hi"), d / "empty_dir")[2],
    "empty folder": lambda d: ((d / "void").mkdir(), d / "void")[1],
    "unknown extension": lambda d: (d / "scan.xyz").write_bytes(np.random.default_rng(2).bytes(500)) and d / "scan.xyz",
}


def _digest(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("command", ["info", "convert", "convert-dicom"])
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_refused_in_one_line(tmp_path, capsys, monkeypatch, case, command):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = CASES[case](inputs)
    assert path.exists()
    before = _digest(path)
    listing = sorted(p.name for p in inputs.rglob("*"))
    outputs = tmp_path / "out"
    outputs.mkdir()
    monkeypatch.chdir(outputs)  # nothing may appear in the working folder either
    target = {"convert": outputs / "out.nii.gz", "convert-dicom": outputs / "series"}.get(command)
    args = ["info", path] if target is None else ["convert", path, target]
    code, out, err = call(capsys, *args)
    lines = (out + err).strip().splitlines()
    assert code == 2, (case, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (case, lines)
    assert str(path) in lines[0] or path.name in lines[0]
    assert list(outputs.iterdir()) == []
    assert _digest(path) == before and sorted(p.name for p in inputs.rglob("*")) == listing
