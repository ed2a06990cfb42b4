"""SliceLayout: a 2D model on a volume goes slice by slice, and back exactly."""

import numpy as np
import pytest

from medidiff.core.slicing import SliceLayout
from medidiff.errors import InvalidScanError


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_volume_round_trip_along_the_model_axis(axis):
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    layout = SliceLayout.for_dims(2, 3, axis)
    items = layout.to_items(vol)
    assert items.shape[0] == vol.shape[axis] == layout.n_items(vol.shape)
    assert items.shape[1:] == layout.item_shape(vol.shape)
    np.testing.assert_array_equal(items[1], np.take(vol, 1, axis=axis))
    np.testing.assert_array_equal(layout.from_items(items * 2), vol * 2)
    assert layout.item_spacing((1.0, 2.0, 3.0)) == tuple(s for i, s in enumerate((1.0, 2.0, 3.0)) if i != axis % 3)


def test_image_and_3d_model_are_one_item():
    img = np.ones((7, 8), np.float32)
    layout = SliceLayout.for_dims(2, 2)
    assert layout.to_items(img).shape == (1, 7, 8) and not layout.slice_wise
    vol = np.ones((3, 7, 8), np.float32)
    layout3 = SliceLayout.for_dims(3, 3)
    assert layout3.to_items(vol).shape == (1, 3, 7, 8)
    assert layout3.from_items(layout3.to_items(vol)).shape == vol.shape


def test_3d_model_refuses_a_2d_image():
    with pytest.raises(InvalidScanError, match="scan.png: is a 2D image .* model is 3D"):
        SliceLayout.for_dims(3, 2, source="scan.png", shape=(7, 8))
