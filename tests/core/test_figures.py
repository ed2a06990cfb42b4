"""Report pictures show medical slices as radiologists view them; other images as stored."""

from __future__ import annotations

import numpy as np

from medidiff.reporting.figures import radiological


def _marked(shape=(6, 8)) -> np.ndarray:
    img = np.zeros(shape, np.float32)
    img[-1, -1] = 1.0  # the voxel with the largest row and column index
    return img


def test_ras_axial_slice_is_turned_anterior_up_right_on_the_left():
    # columns run towards patient right (+R), rows towards anterior (+A): the marked voxel is the
    # most anterior and most rightward, so it belongs at the picture's top left
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    out = radiological(_marked(), affine, "MR")
    assert out[0, 0] == 1.0 and out.sum() == 1.0


def test_las_slice_keeps_its_columns():
    # columns run towards patient left (nibabel's anatomical.nii): only the rows flip
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    out = radiological(_marked(), affine, "CT")
    assert out[0, -1] == 1.0


def test_transposed_in_plane_axes_are_swapped_back():
    # columns along A and rows along R: the picture is transposed so rows run along A
    affine = np.array([[0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    out = radiological(_marked((6, 8)), affine, "MR")
    assert out.shape == (8, 6) and out[0, 0] == 1.0


def test_microscopy_and_unknown_images_are_drawn_as_stored():
    img = _marked()
    for modality in ("microscopy", "OT"):
        assert np.array_equal(radiological(img, np.diag([2.0, 2.0, 3.0, 1.0]), modality), img)
