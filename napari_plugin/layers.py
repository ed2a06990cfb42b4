"""The one place that converts between a medidiff ``Scan`` and napari layer data.

Geometry mapping (exact, so napari's world coordinates are RAS millimetres):

* A ``Scan`` affine ``A`` maps a voxel index in *reversed* array order ``(x, y, z)`` to RAS
  ``(R, A, S)``. napari maps a data index in array order ``(z, y, x)`` to world coordinates
  in its axis order, so the napari world of a volume is RAS reversed, ``(S, A, R)``
  (axis labels ``z, y, x`` = scanner ``S, A, R``). The napari 4x4 matrix is ``A`` with its
  three spatial rows and columns reversed: ``N = P A P``.
* ``N`` is split into ``scale = spacing`` (the diagonal) and an ``affine`` holding the
  direction cosines (``N``'s columns divided by the spacing) and the origin. So
  ``layer.scale == scan.spacing`` and ``world = affine @ (scale * index)`` reproduces
  ``A`` exactly. When the direction cosines are the identity (a plain RAS scan) the
  affine is left out and the origin goes into ``translate`` instead, so tools that only
  read ``scale``/``translate`` still place it right.
* Display: napari draws the last two world axes with the vertical one pointing down and the
  horizontal one pointing right, so an axial slice (A, R) shows anterior at the bottom.
  ``use_radiological_view(viewer)`` turns the 2D camera to the radiological convention
  (anterior up, patient's right on the screen's left); the coordinates do not change.
* A 2D scan's affine maps ``(x, y, 0)``. When the image lies in an axial plane (its x and
  y steps have no S component) its napari world is ``(A, R)`` with the same exact split;
  any other plane (a sagittal or coronal single slice) cannot be drawn in a 2D RAS world,
  so the layer gets ``scale = spacing`` only and the full affine rides in the metadata.

``layer_to_scan`` composes the layer's whole data-to-world transform (scale, translate,
rotate, shear, affine). When that still equals what ``scan_to_layer_data`` made from the
layer's ``metadata["medidiff_scan"]`` (or that minus its ``affine``, which napari's "Split
Stack" drops while keeping the metadata), the stored affine and spacing are returned bit for
bit; otherwise (the layer was moved, or it came from elsewhere, such as a labels layer
drawn in the viewer) the geometry is rebuilt from the transform itself.

napari is imported lazily (``napari.utils`` only, when a layer is converted or built);
this module never imports torch or a Qt binding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medidiff.errors import InvalidScanError
from medidiff.io.scan import Scan

__all__ = [
    "METADATA_KEY",
    "scan_to_layer_data",
    "layer_to_scan",
    "napari_world_matrix",
    "is_label_like",
    "use_radiological_view",
    "dicom_window",
]

METADATA_KEY = "medidiff_scan"
_AXIS_LABELS = {3: ("z", "y", "x"), 2: ("y", "x")}
# a napari layer's pint unit name -> the unit string medidiff keeps in ``meta["unit"]``
_UNIT_NAMES = {"millimeter": "mm", "micrometer": "µm", "meter": "m", "centimeter": "cm", "nanometer": "nm",
               "pixel": "pixel"}
_IDENTITY_TOL = 1e-12


# ----------------------------------------------------------------------------- geometry


def _is_axial_2d(affine: np.ndarray) -> bool:
    """True when a 2D scan's x and y steps have no S component (its plane is axial)."""
    return bool(abs(affine[2, 0]) < 1e-9 * max(1.0, abs(affine[0, 0]) + abs(affine[1, 0]))
                and abs(affine[2, 1]) < 1e-9 * max(1.0, abs(affine[0, 1]) + abs(affine[1, 1])))


def napari_world_matrix(affine: np.ndarray, ndim: int, spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """The napari ``(ndim+1, ndim+1)`` data-to-world matrix of a Scan affine (array order in, RAS reversed out).

    For a non-axial 2D scan there is no exact 2D RAS world; the matrix is then ``diag(spacing)``.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if ndim == 3:
        idx = [2, 1, 0]
    elif ndim == 2:
        if not _is_axial_2d(affine):
            out = np.eye(3)
            out[0, 0], out[1, 1] = (spacing if spacing is not None else np.linalg.norm(affine[:3, [1, 0]], axis=0))
            return out
        idx = [1, 0]
    else:
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    out = np.eye(ndim + 1)
    out[:ndim, :ndim] = affine[np.ix_(idx, idx)]
    out[:ndim, ndim] = affine[idx, 3]
    return out


def _scan_affine_from_world(world: np.ndarray, ndim: int, template: np.ndarray | None = None) -> np.ndarray:
    """Inverse of ``napari_world_matrix``: a napari data-to-world matrix -> a 4x4 Scan affine."""
    affine = np.eye(4)
    if ndim == 3:
        idx = [2, 1, 0]
    else:
        idx = [1, 0]
        if template is not None and _is_axial_2d(template):
            # keep the plane's S position and the slice direction the 2D world cannot show
            affine[:3, 2] = template[:3, 2]
            affine[2, 3] = template[2, 3]
    affine[np.ix_(idx, idx)] = world[:ndim, :ndim]
    affine[idx, 3] = world[:ndim, ndim]
    return affine


def _split_scale(world: np.ndarray, spacing: tuple[float, ...]) -> dict[str, Any]:
    """Split a data-to-world matrix into napari ``scale`` (= spacing), ``translate`` and ``affine``."""
    ndim = world.shape[0] - 1
    scale = np.array([s if s > 0 else 1.0 for s in spacing], dtype=np.float64)
    direction = world[:ndim, :ndim] / scale[None, :]
    origin = world[:ndim, ndim]
    if np.allclose(direction, np.eye(ndim), rtol=0, atol=_IDENTITY_TOL):
        return {"scale": tuple(scale.tolist()), "translate": tuple(origin.tolist())}
    napari_affine = np.eye(ndim + 1)
    napari_affine[:ndim, :ndim] = direction
    napari_affine[:ndim, ndim] = origin
    return {"scale": tuple(scale.tolist()), "translate": (0.0,) * ndim, "affine": napari_affine}


def _units(scan: Scan) -> tuple[str, ...] | None:
    unit = str(scan.meta.get("unit", "mm") or "mm")
    try:
        from napari.utils._units import get_unit_registry  # napari's own registry, so units compare equal

        get_unit_registry()(unit)
    except Exception:  # pint or napari missing, or a unit pint cannot parse: leave napari's default
        return None
    return (unit,) * scan.ndim


def use_radiological_view(viewer: Any) -> None:
    """Show axial slices as radiologists do: anterior up, patient's right on the screen's left.

    Only the 2D camera turns (``viewer.scene.camera.orientation2d = ("up", "left")``; napari
    0.9 moved the camera from ``viewer.camera``, which now warns); world coordinates stay RAS
    mm and no layer changes.
    """
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
    camera.orientation2d = ("up", "left")


# ----------------------------------------------------------------------------- Scan -> layer


def is_label_like(scan: Scan, max_labels: int = 1000) -> bool:
    """Whether a scan's values look like a label map: non-negative integers, few distinct values."""
    arr = scan.array
    if arr.size == 0 or not np.all(np.isfinite(arr)) or arr.min() < 0 or not np.array_equal(arr, np.rint(arr)):
        return False
    return np.unique(arr).size <= max_labels


def _label_dtype(arr: np.ndarray) -> np.dtype:
    top = float(arr.max()) if arr.size else 0.0
    low = float(arr.min()) if arr.size else 0.0
    for dt in (np.uint8, np.uint16, np.int32):
        info = np.iinfo(dt)
        if info.min <= low and top <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def scan_to_layer_data(scan: Scan, name: str, layer_type: str = "image") -> tuple[np.ndarray, dict[str, Any], str]:
    """A napari ``LayerDataTuple`` ``(data, kwargs, layer_type)`` for ``scan``, geometry exact.

    ``layer_type`` is ``"image"`` (float32 data) or ``"labels"`` (values rounded to the
    smallest integer type that holds them). ``kwargs`` hold ``name``, ``scale`` (= spacing),
    ``translate``, ``affine`` (direction cosines and origin, left out for plain RAS scans),
    ``axis_labels``, ``units`` and ``metadata["medidiff_scan"]`` (affine, spacing, modality,
    meta), which ``layer_to_scan`` uses to give the Scan back unchanged.
    """
    if layer_type not in ("image", "labels"):
        raise ValueError(f"layer_type must be 'image' or 'labels', got {layer_type!r}")
    world = napari_world_matrix(scan.affine, scan.ndim, scan.spacing)
    kwargs: dict[str, Any] = {"name": name, **_split_scale(world, scan.spacing)}
    kwargs["axis_labels"] = _AXIS_LABELS[scan.ndim]
    units = _units(scan)
    if units is not None:
        kwargs["units"] = units
    kwargs["metadata"] = {
        METADATA_KEY: {
            "affine": scan.affine.tolist(),
            "spacing": list(scan.spacing),
            "modality": scan.modality,
            "meta": dict(scan.meta),
        }
    }
    if layer_type == "labels":
        arr = np.rint(scan.array)
        data = arr.astype(_label_dtype(arr))
    else:
        data = scan.array
        window = dicom_window(scan)
        if window is not None:
            kwargs["contrast_limits"] = window
    return data, kwargs, layer_type


def _first_number(value: Any) -> float | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, str):
        value = value.split("\\")[0]  # a multi-valued DICOM string: "40\\400"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def dicom_window(scan: Scan) -> tuple[float, float] | None:
    """The scan's DICOM display window (the first WindowCenter/WindowWidth pair) as contrast limits.

    The window is in rescaled values (HU for CT), which is what ``Scan.array`` holds. None when
    the scan records no usable window.
    """
    tags = scan.meta.get("dicom")
    if not isinstance(tags, Mapping):
        return None
    center, width = _first_number(tags.get("WindowCenter")), _first_number(tags.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    return (center - width / 2.0, center + width / 2.0)


# ----------------------------------------------------------------------------- layer -> Scan


def _layer_state(layer: Any) -> tuple[Any, dict[str, Any], str]:
    """(data, state, layer type) of a napari Layer, or of a layer data tuple."""
    if hasattr(layer, "as_layer_data_tuple"):
        data, state, kind = layer.as_layer_data_tuple()
        return data, dict(state), kind
    if isinstance(layer, tuple):
        data = layer[0]
        state = dict(layer[1]) if len(layer) > 1 and layer[1] else {}
        kind = layer[2] if len(layer) > 2 else "image"
        return data, state, kind
    return layer, {}, "image"


def _data_to_world(ndim: int, state: Mapping[str, Any]) -> np.ndarray:
    """The full napari data-to-world matrix of a layer state (affine after scale/translate/rotate/shear)."""
    from napari.utils.transforms import Affine, CompositeAffine

    def get(key, default):
        value = state.get(key)
        return default if value is None else value

    physical = CompositeAffine(
        scale=np.asarray(get("scale", np.ones(ndim)), dtype=np.float64),
        translate=np.asarray(get("translate", np.zeros(ndim)), dtype=np.float64),
        rotate=np.asarray(get("rotate", np.eye(ndim)), dtype=np.float64),
        shear=np.asarray(get("shear", np.zeros(ndim * (ndim - 1) // 2)), dtype=np.float64),
        ndim=ndim,
    )
    extra = state.get("affine")
    if extra is None:
        extra_matrix = np.eye(ndim + 1)
    elif isinstance(extra, Affine):
        extra_matrix = extra.affine_matrix
    else:
        extra_matrix = np.asarray(extra, dtype=np.float64)
    if extra_matrix.shape != (ndim + 1, ndim + 1):
        extra_matrix = Affine(affine_matrix=extra_matrix, ndim=ndim).affine_matrix
    return extra_matrix @ physical.affine_matrix


def _unit_from_state(state: Mapping[str, Any]) -> str | None:
    units = state.get("units")
    if not units:
        return None
    names = {str(u) for u in units}
    if len(names) != 1:
        return None
    return _UNIT_NAMES.get(names.pop())


def layer_to_scan(
    layer: Any,
    meta: Mapping[str, Any] | None = None,
    *,
    layer_type: str | None = None,
    modality: str | None = None,
    scale: Any = None,
    translate: Any = None,
    affine: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> Scan:
    """The ``Scan`` of a napari layer: exact when the layer came from ``scan_to_layer_data``.

    ``layer`` is a napari ``Layer``, a layer data tuple ``(data, meta, layer_type)``, or the
    data array with ``meta`` (the layer state dict napari gives a writer: ``scale``,
    ``translate``, ``rotate``, ``shear``, ``affine``, ``metadata``, ``units``, ``name``).
    ``scale``, ``translate``, ``affine`` and ``metadata`` override the layer's own (for a bare
    array: ``layer_to_scan(arr, scale=spacing)``). Without medidiff metadata the geometry is
    the layer's transform: spacing from ``scale`` (column norms), affine from all of it.
    Labels (``layer_type="labels"``, or taken from the layer) keep integer values.
    """
    data, state, kind = _layer_state(layer)
    if meta:
        state.update(meta)
    for key, value in (("scale", scale), ("translate", translate), ("affine", affine), ("metadata", metadata)):
        if value is not None:
            state[key] = value
    kind = layer_type or kind
    name = state.get("name") or "layer"
    if state.get("multiscale") or (isinstance(data, (list, tuple)) and data and hasattr(data[0], "shape")):
        data = data[0]  # full-resolution level
    if state.get("rgb"):
        raise InvalidScanError(None, f"layer {name!r} is an RGB image; medidiff works on grayscale scans "
                               "(convert it to one channel first)")
    array = np.asarray(data)
    if array.ndim not in (2, 3):
        raise InvalidScanError(None, f"layer {name!r} has {array.ndim} dimensions (shape {array.shape}); "
                               "medidiff works on 2D images (y, x) and 3D volumes (z, y, x)")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    ndim = array.ndim
    world = _data_to_world(ndim, state)

    metadata = state.get("metadata") or {}
    stored = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
    stored_affine = stored_spacing = None
    if isinstance(stored, Mapping) and stored.get("affine") is not None and stored.get("spacing") is not None:
        stored_affine = np.asarray(stored["affine"], dtype=np.float64)
        stored_spacing = tuple(float(s) for s in stored["spacing"])
        if stored_affine.shape != (4, 4) or len(stored_spacing) != ndim:
            stored_affine = stored_spacing = None

    if stored_affine is not None:
        expected = napari_world_matrix(stored_affine, ndim, stored_spacing)
        tol = 1e-9 * max(1.0, float(np.abs(expected).max()))
        if np.allclose(world, expected, rtol=0, atol=tol) or np.allclose(world, _stripped(expected, stored_spacing), rtol=0, atol=tol):
            scan_affine, spacing = stored_affine, stored_spacing
        elif ndim == 2 and not _is_axial_2d(stored_affine):
            scan_affine = _in_plane_affine(world, stored_affine)
            spacing = _spacing_of(world)
        else:
            scan_affine = _scan_affine_from_world(world, ndim, stored_affine)
            spacing = _spacing_of(world)
    else:
        scan_affine = _scan_affine_from_world(world, ndim)
        spacing = _spacing_of(world)

    scan_meta: dict[str, Any] = dict(stored.get("meta") or {}) if isinstance(stored, Mapping) else {}
    unit = _unit_from_state(state)
    if unit is not None:
        scan_meta["unit"] = unit
    scan_modality = modality or (stored.get("modality") if isinstance(stored, Mapping) else None) or "OT"
    if kind == "labels":
        array = np.rint(array.astype(np.float64))
    return Scan(array=array.astype(np.float32), spacing=spacing, affine=scan_affine, modality=scan_modality, meta=scan_meta)


def _stripped(world: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """The matrix of a layer from ``scan_to_layer_data`` after napari dropped its ``affine``.

    napari's "Split Stack" (and other tools that rebuild a layer from scale/translate) keep
    the metadata but not the affine; the stored geometry is then still the scan's.
    """
    parts = _split_scale(world, spacing)
    ndim = world.shape[0] - 1
    out = np.eye(ndim + 1)
    out[:ndim, :ndim] = np.diag(parts["scale"])
    out[:ndim, ndim] = parts["translate"]
    return out


def _in_plane_affine(world: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """A non-axial 2D scan's affine after the layer moved in its own plane.

    Such a layer's world is millimetres along the image's own (y, x) directions from its
    first pixel; map that back to RAS with the stored plane's unit vectors.
    """
    e_x = stored[:3, 0] / (np.linalg.norm(stored[:3, 0]) or 1.0)
    e_y = stored[:3, 1] / (np.linalg.norm(stored[:3, 1]) or 1.0)
    out = stored.copy()
    out[:3, 0] = e_x * world[1, 1] + e_y * world[0, 1]
    out[:3, 1] = e_x * world[1, 0] + e_y * world[0, 0]
    out[:3, 3] = stored[:3, 3] + e_x * world[1, 2] + e_y * world[0, 2]
    return out


def _spacing_of(world: np.ndarray) -> tuple[float, ...]:
    """Voxel sizes (array order) of a data-to-world matrix: its column norms (1 where zero)."""
    ndim = world.shape[0] - 1
    norms = np.linalg.norm(world[:ndim, :ndim], axis=0)
    return tuple(float(n) if n > 0 else 1.0 for n in norms)
