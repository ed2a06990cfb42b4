"""Layers and writers keep what the data is: pixel units, the DICOM window, the source modality,
integer labels."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("napari")

from medidiff.io import Scan, load_scan, save_scan  # noqa: E402
from napari_medidiff.layers import layer_to_scan, scan_to_layer_data  # noqa: E402


def test_a_plain_pixel_layer_comes_back_in_pixels():
    from napari.layers import Image

    plain = Image(np.random.default_rng(0).random((12, 10)).astype(np.float32), name="plain")
    scan = layer_to_scan(plain)
    assert scan.meta["unit"] == "pixel"
    _, kwargs, _ = scan_to_layer_data(scan, "back", "image")
    assert kwargs["units"] == ("pixel", "pixel")
    again = Image(plain.data, **{k: v for k, v in kwargs.items() if k != "metadata"})
    assert [str(u) for u in again.units] == ["pixel", "pixel"]
    # a layer in millimetres stays in millimetres
    mm = Image(plain.data, scale=(0.5, 0.5), units=("mm", "mm"))
    assert layer_to_scan(mm).meta["unit"] == "mm"


@pytest.fixture()
def windowed_ct(ct_series, tmp_path):
    """The CT series with a soft-tissue window (centre 40, width 400) and a second one after it."""
    import pydicom

    folder = tmp_path / "ct_windowed"
    shutil.copytree(ct_series, folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.WindowCenter = [40, 600]
        ds.WindowWidth = [400, 1600]
        ds.save_as(path)
    return folder


@pytest.mark.qt
def test_dicom_window_is_the_initial_contrast(make_napari_viewer, windowed_ct, ct_series):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(windowed_ct), plugin="medidiff")
    assert tuple(layer.contrast_limits) == pytest.approx((-160.0, 240.0))
    [plain] = viewer.open(str(ct_series), plugin="medidiff")  # no window: napari's own range
    assert tuple(plain.contrast_limits) == pytest.approx((float(plain.data.min()), float(plain.data.max())))


@pytest.mark.qt
def test_dicom_output_keeps_the_source_modality(make_napari_viewer, qtbot, tiny_mr_model, mr_slices, tmp_path):
    """An MR NIfTI (no modality in the file) set to MR in the widget, denoised, saved as DICOM:
    an MR image (derived), not Secondary Capture; a layer with no source is Secondary Capture."""
    import pydicom
    from pydicom.uid import MRImageStorage, SecondaryCaptureImageStorage

    from napari_medidiff.widgets.denoise import DenoiseWidget
    from viewer_helpers import dock, run_widget

    nifti = save_scan(mr_slices.with_array(mr_slices.array, modality="OT"), tmp_path / "epi.nii.gz")
    viewer = make_napari_viewer()
    [src] = viewer.open(str(nifti), plugin="medidiff")
    widget = dock(viewer, DenoiseWidget)
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    widget.modality.setCurrentText("MR")
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    out = viewer.layers[f"{src.name} denoised"]
    viewer.layers.selection = {out}
    [written] = viewer.layers.save(str(tmp_path / "denoised.dcm"), selected=True, plugin="medidiff")
    first = pydicom.dcmread(sorted(p for p in (tmp_path / "denoised").iterdir())[0])
    assert first.Modality == "MR" and first.SOPClassUID == MRImageStorage
    assert "DERIVED" in list(first.ImageType)

    drawn = viewer.add_image(np.random.default_rng(1).random((3, 16, 16)).astype(np.float32), name="drawn")
    viewer.layers.selection = {drawn}
    viewer.layers.save(str(tmp_path / "drawn.dcm"), selected=True, plugin="medidiff")
    first = pydicom.dcmread(sorted(p for p in (tmp_path / "drawn").iterdir())[0])
    assert first.SOPClassUID == SecondaryCaptureImageStorage


def test_labels_layer_saves_as_an_integer_nifti(tmp_path):
    import nibabel

    from napari_medidiff.writer import write_nifti_labels

    labels = np.zeros((4, 6, 5), dtype=np.uint8)
    labels[1:3, 2:4, 1:4] = 3
    scan = Scan(labels.astype(np.float32), (2.0, 1.0, 1.0), np.diag([1.0, 1.0, 2.0, 1.0]), "MR", {})
    data, kwargs, _ = scan_to_layer_data(scan, "tumour labels", "labels")
    [path] = write_nifti_labels(str(tmp_path / "labels.nii.gz"), data, kwargs)
    img = nibabel.load(path)
    assert np.issubdtype(img.get_data_dtype(), np.integer)
    np.testing.assert_array_equal(np.asarray(img.dataobj).T, labels)
    assert load_scan(path).array.max() == 3
