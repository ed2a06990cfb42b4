"""(OME-)TIFF and PNG/JPEG: physical sizes, colour to gray, lossy PNG scaling."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import tifffile
from PIL import Image

from medidiff.errors import InvalidScanError
from medidiff.io import Scan, load_scan, save_scan


@pytest.fixture(scope="module")
def cell() -> np.ndarray:
    return skimage.data.cell()  # (660, 550) uint8, quantitative phase image, 0.107 µm pixels


def test_png_grayscale(tmp_path, cell):
    path = tmp_path / "cell.png"
    Image.fromarray(cell).save(path)
    scan = load_scan(path)
    assert scan.shape == cell.shape and scan.array.dtype == np.float32
    np.testing.assert_array_equal(scan.array, cell)
    assert scan.spacing == (1.0, 1.0)


def test_rgb_png_turns_gray_with_warning(tmp_path):
    rgb = skimage.data.chelsea()
    path = tmp_path / "cat.png"
    Image.fromarray(rgb).save(path)
    with pytest.warns(UserWarning, match="grayscale") as record:
        scan = load_scan(path)
    assert str(record[0].message).startswith(str(path))
    assert scan.shape == rgb.shape[:2]
    np.testing.assert_allclose(scan.array, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-3)


def test_jpeg_reads(tmp_path):
    path = tmp_path / "camera.jpg"
    Image.fromarray(skimage.data.camera()).save(path, quality=95)
    scan = load_scan(path)
    assert scan.shape == (512, 512)
    assert np.abs(scan.array - skimage.data.camera()).mean() < 3


def test_png_exact_and_lossy_saves(tmp_path, cell):
    exact = Scan(cell.astype(np.float32), (1.0, 1.0), np.eye(4))
    path = save_scan(exact, tmp_path / "exact.png")
    with Image.open(path) as img:
        assert img.mode == "L"
    np.testing.assert_array_equal(load_scan(path).array, cell)

    values = (cell.astype(np.float32) - 100.0) / 37.0  # negative floats: must be scaled
    lossy = Scan(values, (0.107, 0.107), np.diag([0.107, 0.107, 1, 1]))
    with pytest.warns(UserWarning, match="lossy"):
        path = save_scan(lossy, tmp_path / "lossy.png")
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # 16-bit
    back = load_scan(path)
    step = (values.max() - values.min()) / 65535
    assert np.abs(back.array - values).max() <= step / 2 + 1e-5
    assert back.spacing == pytest.approx((0.107, 0.107))


def test_png_refuses_a_volume(tmp_path):
    from medidiff.errors import OutputError

    vol = Scan(np.zeros((3, 4, 5), np.float32), (1, 1, 1), np.eye(4))
    with pytest.raises(OutputError, match="PNG holds one 2D image"):
        save_scan(vol, tmp_path / "vol.png")
    assert not (tmp_path / "vol.png").exists()


def test_ome_tiff_round_trip_keeps_spacing(tmp_path):
    rng = np.random.default_rng(0)
    stack = Scan(rng.random((5, 12, 10)).astype(np.float32), (2.0, 0.26, 0.29), np.diag([0.29, 0.26, 2.0, 1.0]),
                 modality="microscopy", meta={"unit": "µm"})
    path = save_scan(stack, tmp_path / "stack.ome.tif")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert 'PhysicalSizeX="0.29"' in tif.ome_metadata and 'PhysicalSizeZ="2.0"' in tif.ome_metadata
    back = load_scan(path)
    np.testing.assert_array_equal(back.array, stack.array)
    assert back.spacing == pytest.approx(stack.spacing)
    assert back.meta["unit"] == "µm" and back.modality == "microscopy"


def test_foreign_ome_tiff_without_medidiff_tag(tmp_path, cell):
    path = tmp_path / "cell.ome.tif"
    tifffile.imwrite(path, cell, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.107, "PhysicalSizeY": 0.107})
    scan = load_scan(path)
    assert scan.spacing == pytest.approx((0.107, 0.107))
    assert scan.meta["unit"] == "µm" and scan.modality == "microscopy"
    np.testing.assert_allclose(np.diag(scan.affine)[:2], [0.107, 0.107])


def test_imagej_tiff_spacing(tmp_path):
    vol = np.arange(4 * 6 * 7, dtype=np.uint16).reshape(4, 6, 7)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, vol, imagej=True, resolution=(1 / 0.5, 1 / 0.25), metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"})
    scan = load_scan(path)
    np.testing.assert_array_equal(scan.array, vol)
    assert scan.spacing == pytest.approx((1.5, 0.25, 0.5))
    assert scan.meta["unit"] == "µm"


def test_tiff_resolution_in_centimetres(tmp_path, cell):
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, cell, resolution=(50.0, 25.0), resolutionunit="CENTIMETER")  # pixels per cm
    scan = load_scan(path)
    assert scan.spacing == pytest.approx((0.4, 0.2))  # mm, (y, x)
    assert scan.meta["unit"] == "mm"


def test_rgb_tiff_and_channel_axis(tmp_path):
    rgb = skimage.data.astronaut()[:64, :48]
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.warns(UserWarning, match="grayscale"):
        scan = load_scan(tmp_path / "rgb.tif")
    assert scan.shape == (64, 48)

    two = np.stack([np.zeros((3, 8, 9)), np.ones((3, 8, 9))], axis=1).astype(np.float32)  # (z, c, y, x)
    path = tmp_path / "two_channels.ome.tif"
    tifffile.imwrite(path, two, ome=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InvalidScanError, match="2 channels") as err:
        load_scan(path)
    assert "volume=" in str(err.value) and str(err.value).startswith(str(path))
    nuclei = load_scan(path, volume=1)
    assert nuclei.shape == (3, 8, 9) and float(nuclei.array.mean()) == 1.0


def test_nifti_tiff_nifti_keeps_geometry(tmp_path, oblique_scan):
    back = load_scan(save_scan(oblique_scan, tmp_path / "obl.tif"))
    np.testing.assert_allclose(back.affine, oblique_scan.affine, atol=1e-9)
    assert back.spacing == pytest.approx(oblique_scan.spacing)
    assert back.modality == "MR"


def test_truncated_png_and_tiff(tmp_path, cell):
    Image.fromarray(cell).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidScanError) as err:
        load_scan(tmp_path / "cut.png")
    assert str(err.value).startswith(str(tmp_path / "cut.png"))

    tifffile.imwrite(tmp_path / "ok.tif", np.ones((4, 64, 64), np.float32), photometric="minisblack")
    data = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(InvalidScanError) as err:
        load_scan(tmp_path / "cut.tif")
    assert str(err.value).startswith(str(tmp_path / "cut.tif"))
