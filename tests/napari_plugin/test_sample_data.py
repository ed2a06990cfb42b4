"""The shipped sample MRI opens with its real geometry."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medidiff.sample_data import BRAIN_MRI, make_brain_mri


def test_sample_layer_data_matches_the_source_scan(anatomical_affine):
    [(data, kwargs, kind)] = make_brain_mri()
    assert kind == "image" and data.shape == (25, 41, 33) and data.dtype == np.float32
    assert kwargs["scale"] == (2.0, 2.0, 2.0)
    stored = kwargs["metadata"]["medidiff_scan"]
    assert stored["modality"] == "MR"
    np.testing.assert_array_equal(np.asarray(stored["affine"]), anatomical_affine)
    assert BRAIN_MRI.stat().st_size < 100_000  # small enough to ship


@pytest.mark.qt
def test_sample_opens_in_viewer_with_the_right_scale(make_napari_viewer, anatomical_affine, ras_world):
    viewer = make_napari_viewer()
    [layer] = viewer.open_sample("medidiff", "brain_mri")
    np.testing.assert_array_equal(layer.scale, (2.0, 2.0, 2.0))
    assert [str(u) for u in layer.units] == ["millimeter"] * 3
    for idx in [(0, 0, 0), (24, 40, 32), (12, 20, 16)]:
        np.testing.assert_allclose(layer.data_to_world(idx), ras_world(anatomical_affine, idx), atol=1e-9)
    # the x axis runs right to left (LAS): world R falls as the column index grows
    assert layer.data_to_world((0, 0, 1))[2] - layer.data_to_world((0, 0, 0))[2] == pytest.approx(-2.0)


@pytest.mark.qt
def test_microscopy_sample_opens_in_pixels_beside_the_mri(make_napari_viewer):
    from medidiff.builtin.sample_scans import microscopy_sample

    viewer = make_napari_viewer()
    [layer] = viewer.open_sample("medidiff", "cell_microscopy")
    scan = microscopy_sample()
    np.testing.assert_array_equal(layer.data, scan.array)
    assert layer.data.shape == (660, 275)
    assert [str(u) for u in layer.units] == ["pixel", "pixel"]  # the file gives no physical size
    assert layer.metadata["medidiff_scan"]["modality"] == "microscopy"
