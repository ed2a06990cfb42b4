"""The npe2 reader and writers: NIfTI, DICOM series and OME-TIFF round trips with the geometry intact.

Tests marked ``qt`` use a real napari viewer (run under ``xvfb-run -a``).
"""

from __future__ import annotations

import numpy as np
import npe2
import pytest

from medidiff.io import load_scan
from napari_medidiff.layers import METADATA_KEY
from napari_medidiff.reader import get_reader, read


@pytest.fixture(scope="module", autouse=True)
def _discovered():
    """npe2's plugin manager finds medidiff through its ``napari.manifest`` entry point."""
    npe2.PluginManager.instance().discover(include_npe1=False)


def corners(shape):
    return [tuple(c) for c in np.array(np.meshgrid(*[[0, s - 1] for s in shape])).reshape(len(shape), -1).T]


def assert_world_is_ras(layer, affine, ras_world, atol=1e-6):
    for idx in corners(layer.data.shape) + [tuple(s // 2 for s in layer.data.shape)]:
        np.testing.assert_allclose(layer.data_to_world(idx), ras_world(affine, idx), atol=atol)


# ----------------------------------------------------------------------------- get_reader


def test_get_reader_accepts_scans_and_dicom_folders(oblique_nifti, ct_series, tmp_path):
    assert callable(get_reader(str(oblique_nifti)))
    assert callable(get_reader(str(ct_series)))
    assert callable(get_reader([str(oblique_nifti), str(oblique_nifti)]))
    for name in ("b.ome.tiff", "c.dcm", "d.NII.GZ"):
        assert callable(get_reader(str(tmp_path / name))), name


def test_get_reader_claims_extensionless_dicom_and_only_tiffs_with_physical_sizes(ct_series, tmp_path):
    import tifffile

    one_slice = sorted(p for p in ct_series.iterdir() if p.is_file())[0]
    bare = tmp_path / "IM000001"
    bare.write_bytes(one_slice.read_bytes())
    text = tmp_path / "Makefile"
    text.write_text("all:\n\techo no scan\n")
    assert callable(get_reader(str(bare)))
    assert get_reader(str(text)) is None
    image = np.arange(64, dtype=np.uint16).reshape(8, 8)
    plain = tmp_path / "photo.tif"
    tifffile.imwrite(plain, image)
    calibrated = tmp_path / "cells.tif"
    tifffile.imwrite(calibrated, image, imagej=True, resolution=(1 / 0.25, 1 / 0.25), metadata={"unit": "um"})
    assert get_reader(str(plain)) is None  # napari's reader opens it just as well
    assert callable(get_reader(str(calibrated)))
    [(data, kwargs, _)] = read(str(calibrated))
    np.testing.assert_allclose(kwargs["scale"], (0.25, 0.25))


@pytest.mark.qt
def test_viewer_opens_an_extensionless_dicom_file(make_napari_viewer, ct_series, tmp_path):
    one_slice = sorted(p for p in ct_series.iterdir() if p.is_file())[0]
    bare = tmp_path / "IM000001"
    bare.write_bytes(one_slice.read_bytes())
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(bare), plugin=None)  # as File > Open: napari finds medidiff by the name
    assert layer.data.ndim == 2 and layer.metadata["medidiff_scan"]["modality"] == "CT"


def test_get_reader_refuses_other_paths(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no scans here")
    store = tmp_path / "image.zarr"
    store.mkdir()
    (store / ".zarray").write_text("{}")
    assert get_reader(str(tmp_path / "table.csv")) is None
    assert get_reader(str(notes)) is None
    assert get_reader(str(store)) is None


# ----------------------------------------------------------------------------- npe2 (no viewer)


def test_npe2_read_nifti_keeps_geometry(oblique_nifti, oblique_scan):
    [(data, kwargs, kind)] = npe2.read([str(oblique_nifti)], stack=False, plugin_name="medidiff")
    assert kind == "image" and kwargs["name"] == "oblique"
    np.testing.assert_allclose(kwargs["scale"], oblique_scan.spacing, rtol=1e-6)
    np.testing.assert_allclose(kwargs["metadata"][METADATA_KEY]["affine"], oblique_scan.affine, atol=1e-5)
    np.testing.assert_allclose(data, oblique_scan.array, rtol=1e-6)


def test_dicom_folder_with_two_series_gives_two_layers(two_series_folder):
    layers = npe2.read([str(two_series_folder)], stack=False, plugin_name="medidiff")
    assert len(layers) == 2
    by_modality = {ld[1]["metadata"][METADATA_KEY]["modality"]: ld for ld in layers}
    assert set(by_modality) == {"MR", "CT"}
    names = [ld[1]["name"] for ld in layers]
    assert len(set(names)) == 2 and all(n.startswith("study [") for n in names)
    ct_data, ct_kwargs, _ = by_modality["CT"]
    assert ct_data.shape == (4, 8, 9)
    np.testing.assert_allclose(ct_kwargs["scale"], (3.0, 1.5, 1.25), atol=1e-6)
    np.testing.assert_allclose(ct_data, np.arange(4 * 8 * 9).reshape(4, 8, 9), atol=0.5)
    assert by_modality["MR"][0].shape == (6, 20, 17)


def test_bad_file_gives_one_clear_notification(bad_nifti, notifications):
    result = npe2.read([str(bad_nifti)], stack=False, plugin_name="medidiff")
    assert result == [(None,)]  # napari's "nothing to add": no traceback, no second dialog
    messages = notifications.messages()
    assert len(messages) == 1
    assert messages[0].startswith(f"medidiff could not open {bad_nifti}")
    assert "cannot be read as nifti" in messages[0]


def test_4d_nifti_opens_its_first_volume_with_a_warning(example4d, notifications):
    [(data, kwargs, kind)] = npe2.read([str(example4d)], stack=False, plugin_name="medidiff")
    assert data.shape == (24, 96, 128) and kwargs["name"] == "example4d [volume 0]"
    [message] = notifications.messages()
    assert "is 4D with 2 volumes" in message and "opened volume 0" in message
    assert {n.severity.name for n in notifications} == {"WARNING"}


def test_writer_never_overwrites_the_file_it_came_from(oblique_nifti, tmp_path):
    from medidiff.errors import OutputError

    copy = tmp_path / "mine.nii.gz"
    copy.write_bytes(oblique_nifti.read_bytes())
    [layer_data] = npe2.read([str(copy)], stack=False, plugin_name="medidiff")
    before = copy.read_bytes()
    with pytest.raises(OutputError, match=r"mine\.nii\.gz: this is \(or holds\) an input"):
        npe2.write(str(copy), [layer_data], plugin_name="medidiff")
    assert copy.read_bytes() == before


def test_npe2_write_nifti_from_layer_data(oblique_nifti, tmp_path):
    [layer_data] = npe2.read([str(oblique_nifti)], stack=False, plugin_name="medidiff")
    out = tmp_path / "copy.nii.gz"
    written = npe2.write(str(out), [layer_data], plugin_name="medidiff")
    assert written == [str(out)]
    np.testing.assert_allclose(load_scan(out).affine, load_scan(oblique_nifti).affine, atol=1e-6)


# ----------------------------------------------------------------------------- real viewer


@pytest.mark.qt
def test_viewer_nifti_round_trip(make_napari_viewer, oblique_nifti, tmp_path, ras_world):
    original = load_scan(oblique_nifti)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(oblique_nifti), plugin="medidiff")
    np.testing.assert_allclose(layer.scale, original.spacing, rtol=1e-12)
    assert_world_is_ras(layer, original.affine, ras_world, atol=1e-9)
    assert not np.allclose(layer.affine.affine_matrix, np.eye(4))  # the oblique affine is kept

    out = tmp_path / "saved.nii.gz"
    assert viewer.layers.save(str(out), plugin="medidiff") == [str(out)]
    back = load_scan(out)
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-6)
    np.testing.assert_allclose(back.spacing, original.spacing, rtol=1e-6)
    np.testing.assert_array_equal(back.array, original.array)

    [again] = viewer.open(str(out), plugin="medidiff")
    assert_world_is_ras(again, original.affine, ras_world, atol=1e-5)


@pytest.mark.qt
def test_viewer_dicom_series_round_trip(make_napari_viewer, ct_series, tmp_path, ras_world):
    original = load_scan(ct_series)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(ct_series), plugin="medidiff")
    assert layer.name == "ct_series"
    np.testing.assert_allclose(layer.scale, original.spacing, rtol=1e-12)
    assert_world_is_ras(layer, original.affine, ras_world, atol=1e-9)

    written = viewer.layers.save(str(tmp_path / "ct_copy.dcm"), plugin="medidiff")
    folder = tmp_path / "ct_copy"
    assert written == [str(folder)] and folder.is_dir() and len(list(folder.iterdir())) == original.shape[0]
    back = load_scan(folder)
    assert back.modality == "CT"
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-4)  # DICOM stores decimal strings
    step = (original.array.max() - original.array.min()) / 60000  # int16 rescale quantisation
    assert np.abs(back.array - original.array).max() <= max(step, 1e-3)

    [again] = viewer.open(str(folder), plugin="medidiff")
    assert_world_is_ras(again, original.affine, ras_world, atol=1e-3)


@pytest.mark.qt
def test_viewer_labels_saved_as_integers(make_napari_viewer, oblique_nifti, tmp_path):
    original = load_scan(oblique_nifti)
    viewer = make_napari_viewer()
    [image] = viewer.open(str(oblique_nifti), plugin="medidiff")
    mask = (image.data > 110).astype(np.uint8) * 2
    mask[0, :3, :3] = 5
    viewer.add_labels(mask, scale=image.scale, translate=image.translate, affine=image.affine,
                      metadata=image.metadata, name="tumour_labels")
    out = tmp_path / "tumour_labels.nii.gz"
    viewer.layers.selection = {viewer.layers["tumour_labels"]}
    assert viewer.layers.save(str(out), selected=True, plugin="medidiff") == [str(out)]
    back = load_scan(out)
    np.testing.assert_array_equal(back.array, mask.astype(np.float32))
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-6)
    import nibabel

    assert nibabel.load(out).get_data_dtype() == np.uint8  # an integer label file, not float32

    [labels] = viewer.open(str(out), plugin="medidiff")  # "labels" in the name + integer values
    assert labels._type_string == "labels"
    np.testing.assert_array_equal(labels.data, mask)


@pytest.mark.qt
def test_viewer_ome_tiff_round_trip(make_napari_viewer, oblique_nifti, tmp_path, ras_world):
    original = load_scan(oblique_nifti)
    viewer = make_napari_viewer()
    viewer.open(str(oblique_nifti), plugin="medidiff")
    out = tmp_path / "scan.ome.tif"
    assert viewer.layers.save(str(out), plugin="medidiff") == [str(out)]
    back = load_scan(out)
    np.testing.assert_allclose(back.spacing, original.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-6)
    np.testing.assert_array_equal(back.array, original.array)
    [again] = viewer.open(str(out), plugin="medidiff")
    np.testing.assert_allclose(again.scale, original.spacing, rtol=1e-6)
    assert_world_is_ras(again, original.affine, ras_world, atol=1e-5)


@pytest.mark.qt
def test_viewer_bad_file_is_a_message_not_a_crash(make_napari_viewer, bad_nifti, notifications):
    viewer = make_napari_viewer()
    assert viewer.open(str(bad_nifti), plugin="medidiff") == []
    # the File > Open path, with medidiff remembered as the reader for .nii.gz (napari's own
    # imageio reader also claims .nii.gz, so without a preference napari asks which to use);
    # an exception here would pop napari's "choose another reader" dialog instead
    from napari.settings import get_settings

    get_settings().plugins.extension2reader = {"*.nii.gz": "medidiff"}
    viewer.window._qt_viewer._qt_open([str(bad_nifti)], stack=False)
    assert len(viewer.layers) == 0
    messages = notifications.messages()
    assert len(messages) == 2 and all(m.startswith(f"medidiff could not open {bad_nifti}:") for m in messages)
    assert {n.severity.name for n in notifications} == {"ERROR"}
