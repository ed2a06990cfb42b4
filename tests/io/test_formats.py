"""``medidiff.io.formats``: the one home of scan suffixes and the "is this a DICOM folder" test."""

from __future__ import annotations

import numpy as np

from medidiff.io import Scan, affine_from_spacing, save_scan
from medidiff.io.dispatch import output_format
from medidiff.io.formats import (
    DICOM_SUFFIXES, SCAN_SUFFIXES, format_from_name, has_dicom_preamble, is_dicom_folder, is_scan_path, scan_stem,
)


def _series(folder, n=2):
    scan = Scan(np.arange(n * 12, dtype=np.float32).reshape(n, 3, 4), (2.0, 1.0, 1.0), affine_from_spacing((2.0, 1.0, 1.0)))
    return save_scan(scan, folder, format="dicom")


def test_every_suffix_names_its_format_and_stems_strip_the_whole_suffix():
    assert format_from_name("a.nii.gz") == "nifti" and format_from_name("A.NII") == "nifti"
    assert format_from_name("a.ome.tif") == "tiff" and format_from_name("b.IMA") == "dicom"
    assert format_from_name("c.jpeg") == "png" and format_from_name("notes.txt") is None
    assert all(format_from_name("x" + s) is not None for s in SCAN_SUFFIXES)
    assert scan_stem("case1.nii.gz") == "case1" and scan_stem("cells.ome.tiff") == "cells"
    # output formats follow the same table
    assert output_format("out.ome.tif") == "tiff" and output_format("series_out") == "dicom"


def test_dicom_folder_by_suffix_or_preamble(tmp_path):
    series = _series(tmp_path / "s")
    assert is_dicom_folder(series) and is_scan_path(series)
    # files without a suffix are found by their preamble
    bare = tmp_path / "bare"
    bare.mkdir()
    for i, f in enumerate(sorted(series.iterdir())):
        (bare / f"img{i}").write_bytes(f.read_bytes())
    assert has_dicom_preamble(bare / "img0") and is_dicom_folder(bare)
    # a folder of other things is not DICOM; neither is a zarr store, nor a file
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("hello")
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "a.dcm").write_bytes(b"")
    assert not is_dicom_folder(other) and not is_dicom_folder(tmp_path / "x.zarr")
    assert not is_dicom_folder(series / sorted(p.name for p in series.iterdir())[0])
    assert not is_scan_path(other / "readme.txt") and is_scan_path(tmp_path / "new.nii.gz")


def test_a_folder_of_series_folders_is_not_itself_a_series(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    _series(root / "case1")
    _series(root / "case2")
    assert not is_dicom_folder(root)  # default: the folder's own files only
    assert is_dicom_folder(root, max_depth=2)  # a deeper look (the napari reader's) finds them
    assert not is_dicom_folder(tmp_path, max_depth=2) and is_dicom_folder(tmp_path, max_depth=3)


def test_the_look_is_bounded(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(20):
        (folder / f"a{i:02d}.txt").write_text("x")
    (folder / "z.dcm").write_bytes(b"")  # sorted after the 20 text files
    assert is_dicom_folder(folder) and not is_dicom_folder(folder, max_files=10)
    assert ".dcm" in DICOM_SUFFIXES
