"""Scan <-> napari layer data: scale is the spacing, world coordinates are RAS mm, round trips exact."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from napari.layers import Image, Labels, Layer

from medidiff.errors import MedidiffError
from medidiff.io import Scan, affine_from_spacing
from napari_medidiff.layers import METADATA_KEY, layer_to_scan, scan_to_layer_data


def make_layer(scan, layer_type="image", name="scan"):
    return Layer.create(*scan_to_layer_data(scan, name, layer_type))


def corners(shape):
    return [tuple(c) for c in np.array(np.meshgrid(*[[0, s - 1] for s in shape])).reshape(len(shape), -1).T]


def test_oblique_volume_scale_is_spacing_and_world_is_ras(oblique_scan, ras_world):
    data, kwargs, kind = scan_to_layer_data(oblique_scan, "obl")
    assert kind == "image" and data.dtype == np.float32 and data.shape == (6, 20, 17)
    layer = Layer.create(data, kwargs, kind)
    np.testing.assert_array_equal(layer.scale, oblique_scan.spacing)
    assert layer.axis_labels == ("z", "y", "x")
    assert [str(u) for u in layer.units] == ["millimeter"] * 3
    for idx in corners(oblique_scan.shape) + [(2, 7, 11)]:
        np.testing.assert_allclose(layer.data_to_world(idx), ras_world(oblique_scan.affine, idx), atol=1e-9)
    stored = layer.metadata[METADATA_KEY]
    assert stored["modality"] == "MR" and stored["spacing"] == [2.5, 0.9, 0.7]
    np.testing.assert_array_equal(np.asarray(stored["affine"]), oblique_scan.affine)


def test_layer_to_scan_gives_the_scan_back_exactly(oblique_scan):
    back = layer_to_scan(make_layer(oblique_scan))
    np.testing.assert_array_equal(back.affine, oblique_scan.affine)
    assert back.spacing == oblique_scan.spacing
    np.testing.assert_array_equal(back.array, oblique_scan.array)
    assert back.modality == "MR" and back.meta == oblique_scan.meta


def test_writer_state_dict_round_trips(oblique_scan):
    """Writers get (data, layer state) from napari, not the layer object."""
    data, state, kind = make_layer(oblique_scan).as_layer_data_tuple()
    back = layer_to_scan(data, state, layer_type=kind)
    np.testing.assert_allclose(back.affine, oblique_scan.affine, atol=1e-6)
    assert back.spacing == oblique_scan.spacing


def test_plain_ras_scan_uses_scale_and_translate_only():
    scan = Scan(np.zeros((4, 5, 6)), (3.0, 2.0, 1.0), affine_from_spacing((3.0, 2.0, 1.0), origin=(7.0, 8.0, 9.0)))
    data, kwargs, _ = scan_to_layer_data(scan, "ras")
    assert "affine" not in kwargs
    assert kwargs["scale"] == (3.0, 2.0, 1.0) and kwargs["translate"] == (9.0, 8.0, 7.0)
    np.testing.assert_array_equal(layer_to_scan(make_layer(scan)).affine, scan.affine)


def test_flipped_axes_go_into_the_affine_not_the_scale(ras_world):
    # LAS, like nibabel's anatomical.nii (and LPS like DICOM): a negative step along x
    affine = np.diag([-2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [32.0, -40.0, -16.0]
    scan = Scan(np.ones((3, 4, 5)), (2.5, 2.0, 2.0), affine)
    layer = make_layer(scan)
    np.testing.assert_array_equal(layer.scale, [2.5, 2.0, 2.0])
    np.testing.assert_array_equal(np.diag(layer.affine.affine_matrix), [1.0, 1.0, -1.0, 1.0])
    np.testing.assert_allclose(layer.data_to_world((2, 3, 4)), ras_world(affine, (2, 3, 4)))


def test_2d_axial_image_world_is_anterior_right(ras_world, rotation):
    affine = np.eye(4)
    affine[:3, :3] = rotation([0, 0, 25.0]) @ np.diag([0.5, 0.6, 1.0])
    affine[:3, 3] = [1.0, 2.0, 3.0]
    scan = Scan(np.random.default_rng(0).random((6, 7)), (0.6, 0.5), affine)
    layer = make_layer(scan)
    assert layer.ndim == 2 and layer.axis_labels == ("y", "x")
    np.testing.assert_array_equal(layer.scale, [0.6, 0.5])
    np.testing.assert_allclose(layer.data_to_world((5, 6)), ras_world(affine, (5, 6)), atol=1e-12)
    np.testing.assert_allclose(layer_to_scan(layer).affine, affine, atol=1e-12)


def test_2d_sagittal_image_keeps_its_affine_in_metadata():
    affine = np.array([[0, 0, 1, 5], [0.5, 0, 0, 6], [0, 0.6, 0, 7], [0, 0, 0, 1.0]])
    scan = Scan(np.random.default_rng(0).random((6, 7)), (0.6, 0.5), affine)
    layer = make_layer(scan)
    np.testing.assert_array_equal(layer.scale, [0.6, 0.5])
    back = layer_to_scan(layer)
    np.testing.assert_array_equal(back.affine, affine)
    assert back.spacing == (0.6, 0.5)


def test_labels_are_integers_both_ways(oblique_scan):
    labels = oblique_scan.with_array((oblique_scan.array > 100).astype(np.float32) * 3)
    data, kwargs, kind = scan_to_layer_data(labels, "mask", "labels")
    assert kind == "labels" and np.issubdtype(data.dtype, np.integer)
    layer = Layer.create(data, kwargs, kind)
    assert isinstance(layer, Labels)
    layer.data[0, 0, 0] = 7  # painted in the viewer
    back = layer_to_scan(layer)
    assert back.array[0, 0, 0] == 7 and set(np.unique(back.array)) <= {0.0, 3.0, 7.0}
    np.testing.assert_array_equal(back.affine, oblique_scan.affine)


def test_layer_from_elsewhere_uses_scale_translate_rotate(ras_world):
    """A labels layer drawn in the viewer (napari's 'new labels' gives scale + translate)."""
    layer = Labels(np.zeros((4, 5, 6), dtype=np.uint8), scale=(2.0, 1.0, 0.5), translate=(10.0, 20.0, 30.0))
    scan = layer_to_scan(layer)
    assert scan.spacing == (2.0, 1.0, 0.5) and scan.modality == "OT"
    np.testing.assert_array_equal(scan.affine, affine_from_spacing((2.0, 1.0, 0.5), origin=(30.0, 20.0, 10.0)))
    rotated = Image(np.zeros((4, 5, 6)), scale=(2.0, 1.0, 0.5), rotate=(30.0, 10.0, -5.0), translate=(1.0, 2.0, 3.0))
    scan = layer_to_scan(rotated)
    np.testing.assert_allclose(scan.spacing, (2.0, 1.0, 0.5))
    for idx in corners((4, 5, 6)):
        np.testing.assert_allclose(ras_world(scan.affine, idx), rotated.data_to_world(idx), atol=1e-9)


def test_moved_layer_is_saved_where_it_is_shown(oblique_scan, ras_world):
    layer = make_layer(oblique_scan)
    layer.translate = (1.0, -2.0, 3.0)
    scan = layer_to_scan(layer)
    assert not np.allclose(scan.affine, oblique_scan.affine)
    for idx in corners(oblique_scan.shape):
        np.testing.assert_allclose(ras_world(scan.affine, idx), layer.data_to_world(idx), atol=1e-9)
    assert scan.modality == "MR"  # metadata other than geometry is kept


def test_unusable_layers_give_a_clear_error():
    with pytest.raises(MedidiffError, match=r"'movie' has 4 dimensions"):
        layer_to_scan(Image(np.zeros((2, 3, 4, 5)), name="movie"))
    with pytest.raises(MedidiffError, match=r"'photo' is an RGB image"):
        layer_to_scan(Image(np.zeros((8, 9, 3), dtype=np.uint8), rgb=True, name="photo"))


def test_bare_array_with_scale_and_non_axial_2d_moved_in_plane():
    scan = layer_to_scan(np.ones((3, 4, 5)), scale=(2.0, 1.0, 0.5), translate=(6.0, 7.0, 8.0))
    np.testing.assert_array_equal(scan.affine, affine_from_spacing((2.0, 1.0, 0.5), origin=(8.0, 7.0, 6.0)))
    # a sagittal single slice (x -> A, y -> S) moved 1.2 mm along its own y axis
    affine = np.array([[0, 0, 1, 5], [0.5, 0, 0, 6], [0, 0.6, 0, 7], [0, 0, 0, 1.0]])
    layer = make_layer(Scan(np.ones((6, 7)), (0.6, 0.5), affine))
    layer.translate = (1.2, 0.0)
    moved = layer_to_scan(layer)
    np.testing.assert_allclose(moved.affine[:3, 3], [5.0, 6.0, 8.2])
    np.testing.assert_allclose(moved.affine[:3, :3], affine[:3, :3])


def test_split_stack_keeps_the_scan_geometry(oblique_scan):
    """napari's Split Stack drops the affine but keeps the metadata; the stored geometry wins."""
    from napari.layers.utils.stack_utils import stack_to_images

    data, kwargs, _ = scan_to_layer_data(oblique_scan, "obl")
    affine = np.eye(5)
    affine[1:, 1:] = kwargs["affine"]
    stack = Image(np.stack([data, data + 1]), scale=(1.0, *kwargs["scale"]), translate=(0.0, *kwargs["translate"]),
                  affine=affine, metadata=kwargs["metadata"])
    second = stack_to_images(stack, axis=0)[1]
    back = layer_to_scan(second)
    np.testing.assert_array_equal(back.affine, oblique_scan.affine)
    np.testing.assert_array_equal(back.array, oblique_scan.array + 1)


def test_radiological_view_turns_only_the_camera(oblique_scan):
    from napari.components import ViewerModel

    from napari_medidiff.layers import use_radiological_view

    viewer = ViewerModel()
    layer = viewer.add_layer(make_layer(oblique_scan))
    before = layer.data_to_world((1, 2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # napari 0.9 deprecates viewer.camera: the plugin must not use it
        use_radiological_view(viewer)
    assert tuple(str(o.value) for o in viewer.scene.camera.orientation2d) == ("up", "left")
    np.testing.assert_array_equal(layer.data_to_world((1, 2, 3)), before)
