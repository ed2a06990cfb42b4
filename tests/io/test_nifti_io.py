"""NIfTI reading and writing: affine kept exactly, scaling applied, 2D/3D/4D."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medidiff.errors import InvalidScanError, OutputError
from medidiff.io import Scan, load_scan, save_scan


def test_anatomical_matches_nibabel(anatomical_path):
    img = nib.load(anatomical_path)
    scan = load_scan(anatomical_path)
    assert scan.shape == img.shape[::-1] == (25, 41, 33)
    np.testing.assert_array_equal(scan.array, np.asarray(img.get_fdata(), dtype=np.float32).T)
    np.testing.assert_array_equal(scan.affine, img.affine)
    assert scan.spacing == (2.0, 2.0, 2.0)
    assert scan.orientation == "".join(nib.aff2axcodes(img.affine)) == "LAS"
    assert scan.array.dtype == np.float32
    assert scan.meta["format"] == "nifti"


def test_4d_needs_volume_and_volume_picks_it(example4d_path):
    with pytest.raises(InvalidScanError) as err:
        load_scan(example4d_path)
    msg = str(err.value)
    assert msg.startswith(str(example4d_path))
    assert "(128, 96, 24, 2)" in msg and "volume=" in msg and "--volume" in msg

    img = nib.load(example4d_path)
    scan = load_scan(example4d_path, volume=1)
    assert scan.shape == (24, 96, 128)
    np.testing.assert_allclose(scan.array, img.get_fdata()[..., 1].T, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(scan.affine, img.affine)  # oblique affine kept exactly
    np.testing.assert_allclose(scan.spacing, np.linalg.norm(img.affine[:3, :3], axis=0)[::-1])
    assert scan.spacing[0] == pytest.approx(2.2, abs=1e-5)

    with pytest.raises(InvalidScanError, match="out of range"):
        load_scan(example4d_path, volume=2)


def test_scaling_is_applied(tmp_path):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(raw, np.diag([1.5, 1.5, 3.0, 1.0]))
    img.header.set_slope_inter(0.5, -10.0)
    nib.save(img, tmp_path / "scaled.nii")
    scan = load_scan(tmp_path / "scaled.nii")
    np.testing.assert_allclose(scan.array, (raw * 0.5 - 10.0).T)
    assert scan.spacing == (3.0, 1.5, 1.5)


def test_2d_files_give_yx_scans(tmp_path):
    img2d = np.arange(12, dtype=np.float32).reshape(4, 3)  # nibabel order (x, y)
    nib.save(nib.Nifti1Image(img2d[:, :, None], np.diag([0.5, 0.25, 2.0, 1.0])), tmp_path / "z1.nii.gz")
    nib.save(nib.Nifti1Image(img2d, np.diag([0.5, 0.25, 1.0, 1.0])), tmp_path / "flat.nii")
    for name in ("z1.nii.gz", "flat.nii"):
        scan = load_scan(tmp_path / name)
        assert scan.shape == (3, 4)
        np.testing.assert_array_equal(scan.array, img2d.T)
        assert scan.spacing == (0.25, 0.5)


def test_oblique_round_trip_is_exact(tmp_path, oblique_scan):
    out = save_scan(oblique_scan, tmp_path / "obl.nii.gz")
    img = nib.load(out)
    assert img.get_data_dtype() == np.float32
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    back = load_scan(out)
    np.testing.assert_allclose(back.affine, oblique_scan.affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, oblique_scan.array)
    np.testing.assert_allclose(back.spacing, oblique_scan.spacing, rtol=1e-6)
    # the qform (rigid + zooms) agrees with the sform for an orthogonal affine
    np.testing.assert_allclose(img.get_qform(), oblique_scan.affine, atol=1e-4)


def test_2d_scan_saves_and_loads(tmp_path):
    scan = Scan(np.random.default_rng(1).random((7, 9)).astype(np.float32), (0.3, 0.2), np.diag([0.2, 0.3, 1.0, 1.0]))
    back = load_scan(save_scan(scan, tmp_path / "img.nii"))
    assert back.shape == (7, 9)
    np.testing.assert_array_equal(back.array, scan.array)
    assert back.spacing == pytest.approx((0.3, 0.2))


def test_truncated_gz_is_a_clear_error(tmp_path, example4d_path):
    data = example4d_path.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidScanError) as err:
        load_scan(bad, volume=0)
    assert str(err.value).startswith(str(bad)) and "truncated" in str(err.value)


def test_truncated_plain_nii(tmp_path, anatomical_path):
    bad = tmp_path / "cut.nii"
    bad.write_bytes(anatomical_path.read_bytes()[:20000])
    with pytest.raises(InvalidScanError, match="truncated"):
        load_scan(bad)


def test_nan_and_inf_are_refused(tmp_path):
    data = np.ones((3, 4, 5), dtype=np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(InvalidScanError) as err:
        load_scan(tmp_path / "nan.nii")
    assert str(err.value).startswith(str(tmp_path / "nan.nii"))
    assert "1 NaN and 1 infinite" in str(err.value)


def test_zero_size_axis(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((0, 4, 4), dtype=np.float32), np.eye(4)), tmp_path / "empty.nii")
    with pytest.raises(InvalidScanError, match="zero-size axis"):
        load_scan(tmp_path / "empty.nii")


def test_label_maps_are_stored_as_integers(tmp_path):
    """meta["labels"]: the smallest integer type that holds the values exactly; plain scans stay float32."""
    labels = np.zeros((4, 6, 5), dtype=np.float32)
    labels[1:3, 2:4, 1:4] = 3
    geometry = ((2.0, 1.0, 1.0), np.diag([1.0, 1.0, 2.0, 1.0]))
    for values, dtype in ((labels, np.uint8), (labels * 100, np.int16), (labels - 1, np.int16), (labels * 20000, np.uint16)):
        out = save_scan(Scan(values, *geometry, meta={"labels": True}), tmp_path / f"l{dtype.__name__}{values.min():g}.nii.gz")
        img = nib.load(out)
        assert img.get_data_dtype() == dtype
        np.testing.assert_array_equal(np.asarray(img.dataobj).T, values)
        np.testing.assert_array_equal(load_scan(out).array, values)
    assert nib.load(save_scan(Scan(labels, *geometry), tmp_path / "plain.nii")).get_data_dtype() == np.float32
    with pytest.raises(OutputError, match="whole numbers"):
        save_scan(Scan(labels + 0.5, *geometry, meta={"labels": True}), tmp_path / "half.nii")
    assert not (tmp_path / "half.nii").exists()
