"""detect_format, error classes for bad input, and save_scan's refusals and atomic writes."""

from __future__ import annotations

import shutil

import nibabel
import numpy as np
import pytest
import tifffile

from medidiff.errors import InvalidScanError, MedidiffError, OutputError, ScanError, UnsupportedFormatError
from medidiff.io import Scan, detect_format, load_scan, save_scan


def test_detect_format_by_name_and_content(tmp_path, anatomical_path, anatomical_series, dicom_file):
    assert detect_format(anatomical_path) == "nifti"
    assert detect_format(anatomical_series) == "dicom"
    assert detect_format(dicom_file("CT_small.dcm")) == "dicom"
    # no extension: recognised from the first bytes
    shutil.copy(dicom_file("CT_small.dcm"), tmp_path / "IM0001")
    shutil.copy(anatomical_path, tmp_path / "anat_noext")
    assert detect_format(tmp_path / "IM0001") == "dicom"
    assert detect_format(tmp_path / "anat_noext") == "nifti"
    assert load_scan(tmp_path / "IM0001").shape == (128, 128)
    tifffile.imwrite(tmp_path / "a.tiff", np.zeros((3, 3), np.float32))
    assert detect_format(tmp_path / "a.tiff") == "tiff"


def test_unknown_file_is_unsupported(tmp_path):
    path = tmp_path / "notes.xyz"
    path.write_text("just some text, not an image")
    with pytest.raises(UnsupportedFormatError) as err:
        load_scan(path)
    assert str(err.value).startswith(str(path))


def test_missing_path(tmp_path):
    with pytest.raises(ScanError) as err:
        load_scan(tmp_path / "nope.nii.gz")
    assert str(err.value) == f"{tmp_path / 'nope.nii.gz'}: no such file or folder"


def test_all_load_errors_are_medidiff_errors(tmp_path, dicom_file):
    bad = {
        "text.nii": b"not nifti at all" * 10,
        "text.png": b"not png" * 10,
        "text.tif": b"II*\x00garbage" * 10,
        "noext": b"\x00" * 400,
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MedidiffError) as err:
            load_scan(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)), name


def test_series_option_only_for_dicom(anatomical_path):
    with pytest.raises(InvalidScanError, match="series="):
        load_scan(anatomical_path, series="1")


def test_modality_override_and_source_path(anatomical_path):
    scan = load_scan(anatomical_path, modality="MR")
    assert scan.modality == "MR"
    assert scan.meta["source_path"] == str(anatomical_path.resolve())


def test_save_refuses_existing_output_unless_overwrite(tmp_path, anatomical):
    out = save_scan(anatomical, tmp_path / "a.nii.gz")
    before = out.read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        save_scan(anatomical.with_array(anatomical.array + 1), out)
    assert out.read_bytes() == before
    save_scan(anatomical.with_array(anatomical.array + 1), out, overwrite=True)
    np.testing.assert_array_equal(load_scan(out).array, anatomical.array + 1)

    series = save_scan(anatomical, tmp_path / "series")
    with pytest.raises(OutputError, match="already exists"):
        save_scan(anatomical, series)
    save_scan(anatomical.with_array(anatomical.array + 2), series, overwrite=True)
    np.testing.assert_array_equal(load_scan(series).array, anatomical.array + 2)


def test_save_never_writes_onto_an_input(tmp_path, anatomical_path):
    copy = tmp_path / "in.nii"
    shutil.copy(anatomical_path, copy)
    scan = load_scan(copy)
    with pytest.raises(OutputError, match="input"):
        save_scan(scan, copy, overwrite=True)  # its own source path
    other = Scan(scan.array, scan.spacing, scan.affine)
    with pytest.raises(OutputError, match="input"):
        save_scan(other, copy, overwrite=True, inputs=[copy])
    with pytest.raises(OutputError, match="input"):
        save_scan(other, tmp_path, overwrite=True, format="dicom", inputs=[copy])  # a folder holding an input
    assert copy.read_bytes() == anatomical_path.read_bytes()


def test_output_format_choice(tmp_path, anatomical):
    assert nibabel.load(save_scan(anatomical, tmp_path / "x.nii")).shape == (33, 41, 25)
    with tifffile.TiffFile(save_scan(anatomical, tmp_path / "x.tif")) as tif:
        assert tif.series[0].shape == (25, 41, 33)
    assert save_scan(anatomical, tmp_path / "noext").is_dir()
    assert save_scan(anatomical, tmp_path / "forced.out", format="dicom").is_dir()
    with pytest.raises(UnsupportedFormatError, match="extension"):
        save_scan(anatomical, tmp_path / "x.xyz")
    with pytest.raises(UnsupportedFormatError, match="unknown output format"):
        save_scan(anatomical, tmp_path / "y.nii", format="analyze")
    with pytest.raises(OutputError, match="folder name"):
        save_scan(anatomical, tmp_path / "vol.dcm")


def test_save_refuses_nan(tmp_path):
    scan = Scan(np.full((2, 2), np.nan, np.float32), (1, 1), np.eye(4))
    with pytest.raises(OutputError, match="NaN"):
        save_scan(scan, tmp_path / "nan.nii")
    assert not (tmp_path / "nan.nii").exists()


def test_failed_nifti_write_leaves_nothing(tmp_path, anatomical, monkeypatch, temp_leftovers):
    def half_write(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 1000)  # a partial file ...
        raise OSError("disk full (simulated)")  # ... then the writer dies

    monkeypatch.setattr(nibabel, "save", half_write)
    with pytest.raises(OutputError, match="simulated"):  # one line, not a raw OSError
        save_scan(anatomical, tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()
    assert temp_leftovers(tmp_path) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, anatomical, monkeypatch, temp_leftovers):
    out = save_scan(anatomical, tmp_path / "out.tif")
    before = out.read_bytes()

    def failing_imwrite(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"II*\x00partial")
        raise RuntimeError("writer crashed (simulated)")

    monkeypatch.setattr(tifffile, "imwrite", failing_imwrite)
    with pytest.raises(RuntimeError, match="simulated"):
        save_scan(anatomical.with_array(anatomical.array * 0), out, overwrite=True)
    assert out.read_bytes() == before
    assert temp_leftovers(tmp_path) == []


def test_io_does_not_import_torch_and_meta_is_json(tmp_path, anatomical_path, dicom_file):
    import json
    import subprocess
    import sys

    code = (
        "import sys, json; from medidiff.io import load_scan, save_scan; "
        f"s = load_scan({str(dicom_file('CT_small.dcm'))!r}); "
        f"save_scan(s, {str(tmp_path / 'ct')!r}); save_scan(s, {str(tmp_path / 'ct.tif')!r}); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    for path in (anatomical_path, dicom_file("CT_small.dcm"), dicom_file("rtdose.dcm"), tmp_path / "ct", tmp_path / "ct.tif"):
        json.dumps(load_scan(path).meta)
