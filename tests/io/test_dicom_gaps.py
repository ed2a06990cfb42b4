"""DICOM series with missing or irregular slices: refused in one line, or filled with every slice at its real position."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cli_runner import call
from medidiff.errors import InvalidScanError
from medidiff.io import load_scan

LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ROWS, COLS = 6, 5


def _slice_values(z: float) -> np.ndarray:
    return (np.arange(ROWS * COLS, dtype=np.int16).reshape(ROWS, COLS) + int(10 * z)).astype(np.int16)


def write_series(folder: Path, zs: list[float], origin=(-30.0, 12.5, 0.0)) -> Path:
    """A CT series made with pydicom alone (no medidiff writer): one file per z, IPP = origin + (0, 0, z)."""
    folder.mkdir(parents=True)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    for i, z in enumerate(zs):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientID, ds.SeriesNumber, ds.InstanceNumber = "CT", "GAP", 3, i + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + z]
        ds.PixelSpacing = [0.5, 0.75]
        ds.SliceThickness = 2
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1000
        ds.PixelData = _slice_values(z).tobytes()
        ds.save_as(folder / f"slice{i:03d}.dcm", enforce_file_format=True)
    return folder


ZS_WITH_GAP = [0.0, 2.0, 4.0, 8.0, 10.0, 12.0, 14.0]  # z = 6 is missing


def _world_z(affine: np.ndarray, k: int) -> float:
    """The LPS z (mm) of slice k's first voxel."""
    return float((LPS_RAS @ affine @ [0, 0, k, 1])[2])


def test_missing_slice_is_refused_in_one_line(tmp_path):
    folder = write_series(tmp_path / "gapped", ZS_WITH_GAP)
    with pytest.raises(InvalidScanError) as err:
        load_scan(folder)
    text = str(err.value)
    assert text.startswith(str(folder)) and "\n" not in text
    assert "1 missing slice(s)" in text and "4.000 and 8.000 mm" in text and "--fill-gaps" in text


def test_filled_read_keeps_every_real_position(tmp_path):
    folder = write_series(tmp_path / "gapped", ZS_WITH_GAP)
    with pytest.warns(UserWarning, match="filled 1 missing slice"):
        scan = load_scan(folder, fill_gaps=True)
    assert scan.shape == (8, ROWS, COLS) and scan.meta["filled_slices"] == [3]
    assert scan.spacing == pytest.approx((2.0, 0.5, 0.75))
    for z in ZS_WITH_GAP:  # slice k = z / 2 sits at z and holds that file's values
        k = int(z / 2)
        assert _world_z(scan.affine, k) == pytest.approx(z, abs=1e-6)
        np.testing.assert_array_equal(scan.array[k], _slice_values(z).astype(np.float32) - 1000)
    # the blank slice: the series minimum, nothing invented
    assert np.all(scan.array[3] == scan.array[[0, 1, 2, 4, 5, 6, 7]].min())


def test_irregular_spacing_is_refused_even_with_fill(tmp_path):
    folder = write_series(tmp_path / "irregular", [0.0, 2.0, 4.0, 7.0, 9.0, 11.0])
    for fill in (False, True):
        with pytest.raises(InvalidScanError, match="irregular slice spacing") as err:
            load_scan(folder, fill_gaps=fill)
        assert "\n" not in str(err.value)


def test_fill_gaps_only_applies_to_dicom(anatomical_path):
    with pytest.raises(InvalidScanError, match="only applies to DICOM"):
        load_scan(anatomical_path, fill_gaps=True)


def test_convert_refuses_the_gap_then_fills_it_at_exact_positions(tmp_path, capsys):
    folder = write_series(tmp_path / "gapped", ZS_WITH_GAP)
    out = tmp_path / "out.nii.gz"
    code, stdout, stderr = call(capsys, "convert", folder, out)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "--fill-gaps" in stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gapped"]

    code, stdout, stderr = call(capsys, "convert", folder, out, "--fill-gaps")
    assert code == 0, stderr
    img = nibabel.load(out)
    assert img.shape == (COLS, ROWS, 8)
    for z in ZS_WITH_GAP:
        assert _world_z(img.affine, int(z / 2)) == pytest.approx(z, abs=1e-4)
    # and back to DICOM: the files sit at the original positions plus the filled one
    back = tmp_path / "back"
    code, _, stderr = call(capsys, "convert", out, back)
    assert code == 0, stderr
    written = sorted(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in back.iterdir())
    assert written == pytest.approx(sorted(ZS_WITH_GAP + [6.0]), abs=1e-4)


def test_a_random_bytes_dcm_in_a_series_is_named_not_skipped_silently(tmp_path):
    folder = write_series(tmp_path / "series", [0.0, 2.0, 4.0])
    junk = folder / "junk.dcm"
    junk.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("not DICOM, and not named like it: no warning")
    with pytest.warns(UserWarning) as record:
        scan = load_scan(folder)
    assert scan.shape == (3, ROWS, COLS)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and messages[0].startswith(str(junk)) and "skipped" in messages[0]


def test_cli_says_which_file_was_skipped_in_one_line(tmp_path, capsys):
    folder = write_series(tmp_path / "series", [0.0, 2.0, 4.0])
    (folder / "junk.dcm").write_bytes(b"\x00\xff" * 300)
    code, out, err = call(capsys, "info", folder)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "junk.dcm" in lines[0] and "skipped" in lines[0]


def test_images_without_positions_still_stack_by_number(tmp_path):
    """No IPP/IOP (secondary capture): no gap test applies; the images stack in InstanceNumber order."""
    folder = write_series(tmp_path / "sc", [0.0, 2.0, 4.0])
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.save_as(f)
    with pytest.warns(UserWarning, match="no patient geometry"):
        scan = load_scan(folder)
    assert scan.shape == (3, ROWS, COLS) and "filled_slices" not in scan.meta
    for k, z in enumerate([0.0, 2.0, 4.0]):
        np.testing.assert_array_equal(scan.array[k], _slice_values(z).astype(np.float32) - 1000)
