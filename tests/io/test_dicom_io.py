"""DICOM: single files, multi-frame, compressed, series folders, geometry and write-back."""

from __future__ import annotations

import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medidiff.errors import InvalidScanError, MissingCodecError, OutputError, SeriesSelectionError, UnsupportedFormatError
from medidiff.io import Scan, load_scan, save_scan



def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _needs_decoder(path: Path) -> Path:
    """Skip (rather than fail) where the optional ``dicom-codecs`` decoders are not installed."""
    from pydicom.pixels import get_decoder

    tsyntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not get_decoder(tsyntax).is_available:
        pytest.skip(f"no decoder for {tsyntax.name}; install medidiff[dicom-codecs]")
    return path


# ------------------------------------------------------------------ single files


def test_ct_small_values_and_geometry(dicom_file):
    path = dicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    scan = load_scan(path)
    assert scan.shape == (128, 128) and scan.modality == "CT"
    np.testing.assert_array_equal(scan.array, ds.pixel_array.astype(np.float32) - 1024.0)  # RescaleIntercept
    assert scan.spacing == pytest.approx((0.661468, 0.661468))
    expected = np.array([
        [-0.661468, 0, 0, 158.135803],  # LPS -> RAS: x and y negated
        [0, -0.661468, 0, 179.035797],
        [0, 0, 5.0, -75.699997],
        [0, 0, 0, 1],
    ])
    np.testing.assert_allclose(scan.affine, expected, atol=1e-6)
    assert scan.orientation == "LPS"
    tags = scan.meta["dicom"]
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID", "TransferSyntaxUID"):
        assert isinstance(tags[key], str) and tags[key]
    assert tags["PatientID"] == str(ds.PatientID)
    assert tags["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"


def test_rtdose_multiframe_uses_grid_frame_offsets(dicom_file):
    path = dicom_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    scan = load_scan(path)
    assert scan.shape == (15, 10, 10) and scan.modality == "RTDOSE"
    np.testing.assert_allclose(scan.array, ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)
    assert scan.spacing == pytest.approx((5.0, 10.0, 10.0))
    np.testing.assert_allclose(scan.affine[:3, 3], [-189.43125, -199.43125, -761.87])
    np.testing.assert_allclose(scan.affine[:3, 2], [0, 0, 5.0])


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_lossless_compressed_equals_uncompressed(name, dicom_file):
    ref = load_scan(dicom_file("MR_small.dcm"))
    scan = load_scan(_needs_decoder(dicom_file(name)))
    np.testing.assert_array_equal(scan.array, ref.array)
    np.testing.assert_array_equal(scan.affine, ref.affine)
    assert scan.meta["dicom"]["TransferSyntaxUID"] != ref.meta["dicom"]["TransferSyntaxUID"]


def test_jpeg2000_lossy_files_load(dicom_file):
    scan = load_scan(_needs_decoder(dicom_file("693_J2KI.dcm")))
    assert scan.shape == (512, 512) and scan.modality == "CT"
    assert np.isfinite(scan.array).all() and scan.array.std() > 0
    with pytest.warns(UserWarning, match="no patient geometry"):
        nm = load_scan(_needs_decoder(dicom_file("JPEG2000.dcm")))
    assert nm.shape == (1024, 256)
    np.testing.assert_allclose(np.diag(nm.affine)[:2], [2.26, 2.26])  # from PixelSpacing


def test_missing_decoder_gives_install_hint(monkeypatch, dicom_file):
    from pydicom.pixels import get_decoder

    path = dicom_file("MR_small_jp2klossless.dcm")
    decoder = get_decoder(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    monkeypatch.setattr(decoder, "_available", {})  # as if no JPEG 2000 plugin were installed
    with pytest.raises(MissingCodecError) as err:
        load_scan(path)
    assert str(err.value).startswith(str(path))
    assert 'pip install "medidiff[dicom-codecs]"' in str(err.value)


def test_truncated_file(dicom_file):
    path = dicom_file("MR_truncated.dcm")
    with pytest.raises(InvalidScanError) as err:
        load_scan(path)
    assert str(err.value).startswith(str(path)) and "truncated" in str(err.value)


def test_non_image_and_non_dicom_files(tmp_path, dicom_file):
    with pytest.raises(InvalidScanError, match="holds no image"):
        load_scan(dicom_file("rtplan.dcm"))
    fake = tmp_path / "fake.dcm"
    fake.write_text("this is not DICOM " * 20)
    with pytest.raises(UnsupportedFormatError) as err:
        load_scan(fake)
    assert str(err.value).startswith(str(fake))


# ------------------------------------------------------------------ series folders


def test_series_round_trip_is_exact(anatomical, anatomical_series):
    files = _files(anatomical_series)
    assert len(files) == anatomical.shape[0]
    back = load_scan(anatomical_series)
    np.testing.assert_allclose(back.affine, anatomical.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, anatomical.array)  # integer data: stored exactly
    assert back.spacing == pytest.approx(anatomical.spacing)


def test_shuffled_names_and_instance_numbers(tmp_path, anatomical, anatomical_series, canonical):
    rng = np.random.default_rng(7)
    files = _files(anatomical_series)
    numbers = rng.permutation(len(files)) + 1
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for f, n in zip(files, numbers):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = int(n)
        ds.save_as(shuffled / uuid.UUID(int=int(rng.integers(2**62))).hex)  # no extension
    (shuffled / "README.txt").write_text("not a DICOM file")
    (shuffled / "notes.json").write_text("{}")
    scan = load_scan(shuffled)
    assert scan.shape == anatomical.shape
    # the slice order comes from positions: the same voxels sit at the same world positions
    got_arr, got_aff = canonical(scan.array, scan.affine)
    ref_arr, ref_aff = canonical(anatomical.array, anatomical.affine)
    np.testing.assert_allclose(got_aff, ref_aff, atol=1e-4)
    np.testing.assert_array_equal(got_arr, ref_arr)
    # and each slice is where its header says it is
    lps = np.diag([-1, -1, 1, 1]) @ scan.affine
    positions = {float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in _files(shuffled) if f.suffix == ""}
    assert {round(float((lps @ [0, 0, k, 1])[2]), 4) for k in range(scan.shape[0])} == {round(p, 4) for p in positions}


def test_gap_is_refused_with_positions(anatomical_series):
    files = _files(anatomical_series)
    middle = files[len(files) // 2]
    z = float(pydicom.dcmread(middle, stop_before_pixels=True).ImagePositionPatient[2])
    middle.unlink()
    with pytest.raises(InvalidScanError) as err:
        load_scan(anatomical_series)
    text = str(err.value)
    assert text.startswith(str(anatomical_series)) and "\n" not in text
    # the gap is named by the positions on either side of the missing slice (normal points to -z here)
    assert f"{-(z + 2):.3f}" in text and f"{-(z - 2):.3f}" in text and "1 slice(s) missing" in text
    assert "--fill-gaps" in text


def test_two_series_need_a_choice(tmp_path, anatomical):
    first = save_scan(anatomical, tmp_path / "a", format="dicom")
    second = save_scan(anatomical.with_array(anatomical.array * 2, meta={"description": "doubled"}), tmp_path / "b", format="dicom")
    both = tmp_path / "both"
    both.mkdir()
    for i, f in enumerate(_files(first) + _files(second)):
        shutil.copy(f, both / f"{i:03d}")
    uid_b = str(pydicom.dcmread(_files(second)[0]).SeriesInstanceUID)
    uid_a = str(pydicom.dcmread(_files(first)[0]).SeriesInstanceUID)
    with pytest.raises(SeriesSelectionError) as err:
        load_scan(both)
    msg = str(err.value)
    assert msg.startswith(str(both))
    assert uid_a in msg and uid_b in msg and "'doubled'" in msg and "25 images" in msg and "series=" in msg
    picked = load_scan(both, series=uid_b)
    np.testing.assert_array_equal(picked.array, anatomical.array * 2)
    with pytest.raises(SeriesSelectionError, match="no series"):
        load_scan(both, series="9999")


def test_series_number_selects(tmp_path, anatomical):
    a = save_scan(anatomical, tmp_path / "a", format="dicom")
    for f in _files(a):
        ds = pydicom.dcmread(f)
        ds.SeriesNumber = 7
        ds.save_as(f)
    b = save_scan(anatomical.with_array(anatomical.array + 1), tmp_path / "b", format="dicom")
    for f in _files(b):
        shutil.copy(f, a / ("b_" + f.name))
    np.testing.assert_array_equal(load_scan(a, series=7).array, anatomical.array)
    np.testing.assert_array_equal(load_scan(a, series="7").array, anatomical.array)


def test_repeated_positions_need_volume(tmp_path, anatomical):
    a = save_scan(anatomical, tmp_path / "a", format="dicom")
    b = save_scan(anatomical.with_array(anatomical.array + 5), tmp_path / "b", format="dicom")
    uid = str(pydicom.dcmread(_files(a)[0]).SeriesInstanceUID)
    for i, f in enumerate(_files(a) + _files(b)):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.TemporalPositionIdentifier = 1 if f.parent == a else 2
        ds.save_as(tmp_path / f"mixed_{i:03d}.dcm")
    for d in (a, b):
        shutil.rmtree(d)
    with pytest.raises(InvalidScanError, match="2 images at each of 25 slice positions"):
        load_scan(tmp_path)
    np.testing.assert_array_equal(load_scan(tmp_path, volume=1).array, anatomical.array + 5)


def test_truncated_member_of_a_series_is_named(anatomical_series):
    bad = _files(anatomical_series)[5]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 500])  # pixel data cut short
    with pytest.raises(InvalidScanError) as err:
        load_scan(anatomical_series)
    assert str(err.value).startswith(str(bad)) and "truncated" in str(err.value)


def test_empty_and_non_dicom_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidScanError, match="holds no DICOM images"):
        load_scan(empty)
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(InvalidScanError) as err:
        load_scan(empty)
    assert str(err.value).startswith(str(empty))


def _enhanced_multiframe(path: Path, volume: np.ndarray, positions: list, iop: list, spacing: tuple) -> None:
    """An Enhanced MR-like file: per-frame PlanePositionSequence, shared orientation/measures/rescale."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.NumberOfFrames = volume.shape[0]
    ds.Rows, ds.Columns = volume.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    orient, measures, rescale = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = iop
    measures.PixelSpacing = list(spacing[1:])
    measures.SliceThickness = spacing[0]
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 2, -100, "US"
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([rescale])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for pos in positions:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = list(pos)
        item.PlanePositionSequence = Sequence([plane])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = volume.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_per_frame_positions(tmp_path):
    stored = np.arange(4 * 3 * 5, dtype=np.uint16).reshape(4, 3, 5)
    iop = [0, 1, 0, 0, 0, -1]  # sagittal: rows along +y (A in LPS is -y), columns down
    positions = [[10.0 + 3.0 * k, -20.0, 30.0] for k in (2, 0, 3, 1)]  # frames out of order
    _enhanced_multiframe(tmp_path / "enh.dcm", stored, positions, iop, (3.0, 0.8, 0.6))
    scan = load_scan(tmp_path / "enh.dcm")
    assert scan.shape == (4, 3, 5)
    order = np.argsort([p[0] for p in positions])  # normal = row x col = (-1, 0, 0): but sorted by projection
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort([np.dot(p, normal) for p in positions])
    np.testing.assert_array_equal(scan.array, stored[order] * 2.0 - 100.0)
    assert scan.spacing == pytest.approx((3.0, 0.8, 0.6))
    lps = np.diag([-1, -1, 1, 1]) @ scan.affine
    for k, frame in enumerate(order):
        np.testing.assert_allclose(lps[:3] @ [0, 0, k, 1], positions[frame], atol=1e-9)
    np.testing.assert_allclose(lps[:3, 0], np.array(iop[:3]) * 0.6)
    np.testing.assert_allclose(lps[:3, 1], np.array(iop[3:]) * 0.8)


# ------------------------------------------------------------------ writing


def test_nifti_dicom_nifti_oblique_round_trip(tmp_path, oblique_scan):
    nii = save_scan(oblique_scan, tmp_path / "obl.nii.gz")
    series = save_scan(load_scan(nii), tmp_path / "obl_series")  # no extension: DICOM folder
    files = _files(series)
    assert len(files) == oblique_scan.shape[0]
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage, from the modality
    assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
    back_nii = save_scan(load_scan(series), tmp_path / "back.nii.gz")
    back = load_scan(back_nii)
    np.testing.assert_allclose(back.affine, oblique_scan.affine, atol=1e-4)
    step = float(ds.RescaleSlope)
    assert step < (oblique_scan.array.max() - oblique_scan.array.min()) / 60000  # full int16 range used
    assert np.abs(back.array - oblique_scan.array).max() <= step / 2 + 1e-4


def test_patient_and_study_tags_are_kept(tmp_path, dicom_file):
    src_path = dicom_file("CT_small.dcm")
    src = pydicom.dcmread(src_path)
    ct = load_scan(src_path)
    out = save_scan(ct.with_array(ct.array + 0.25), tmp_path / "ct_series")
    ds = pydicom.dcmread(_files(out)[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert ds.PatientID == src.PatientID and str(ds.PatientName) == str(src.PatientName)
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    back = load_scan(out)
    np.testing.assert_allclose(back.affine, ct.affine, atol=1e-4)
    assert np.abs(back.array - (ct.array + 0.25)).max() <= float(ds.RescaleSlope) / 2 + 1e-4


def test_source_meta_fills_in_tags(tmp_path, dicom_file):
    ct = load_scan(dicom_file("CT_small.dcm"))
    bare = Scan(ct.array, ct.spacing, ct.affine, modality="CT")
    out = save_scan(bare, tmp_path / "s.dcm", source=ct)  # a 2D scan: one .dcm file
    ds = pydicom.dcmread(out)
    assert ds.StudyInstanceUID == ct.meta["dicom"]["StudyInstanceUID"]
    assert ds.PatientID == ct.meta["dicom"]["PatientID"]


def test_synthetic_series_gets_no_patient_tags(tmp_path, dicom_file):
    ct = load_scan(dicom_file("CT_small.dcm"))
    meta = dict(ct.meta, synthetic=True)
    out = save_scan(ct.with_array(ct.array, meta=meta), tmp_path / "synth")
    ds = pydicom.dcmread(_files(out)[0])
    assert "SYNTHETIC" in ds.SeriesDescription
    assert str(ds.PatientName) == "SYNTHETIC^medidiff"
    assert ds.PatientID != ct.meta["dicom"]["PatientID"] and ds.PatientID
    assert ds.StudyInstanceUID != ct.meta["dicom"]["StudyInstanceUID"]
    assert ds.get("PatientBirthDate", "") == "" and ds.get("AccessionNumber", "") == ""


def test_float_values_use_full_int16_range(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.uniform(-0.001, 0.002, size=(3, 8, 8)).astype(np.float32)
    scan = Scan(arr, (1.0, 1.0, 1.0), np.eye(4), modality="PT")
    out = save_scan(scan, tmp_path / "pet")
    ds = pydicom.dcmread(_files(out)[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture for other modalities
    assert ds.Modality == "PT"
    stored = np.concatenate([pydicom.dcmread(f).pixel_array.ravel() for f in _files(out)])
    assert stored.min() == -32768 and stored.max() >= 32766
    back = load_scan(out)
    assert np.abs(back.array - arr).max() <= float(ds.RescaleSlope) / 2 * 1.001


def test_writer_failure_leaves_nothing(tmp_path, anatomical, monkeypatch, temp_leftovers):
    calls = {"n": 0}
    original = Dataset.save_as

    def failing_save_as(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Dataset, "save_as", failing_save_as)
    with pytest.raises(OutputError, match="simulated"):  # one line, not a raw OSError
        save_scan(anatomical, tmp_path / "series")
    assert calls["n"] == 4  # three slices had been written before the failure
    assert not (tmp_path / "series").exists()
    assert temp_leftovers(tmp_path) == []


def test_warnings_are_not_raised_for_clean_series(anatomical_series):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_scan(anatomical_series)
