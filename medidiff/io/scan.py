"""The one data type that crosses every layer: a scan with its geometry.

Axis conventions (the contract every module relies on):

* ``array`` is float32, ``(z, y, x)`` for volumes and ``(y, x)`` for images.
* ``spacing`` is in the same axis order as ``array`` (mm for medical scans, the
  physical unit in ``meta["unit"]`` for microscopy), so it is napari's ``scale``.
* ``affine`` is 4x4 and maps a voxel index given in *reversed* array order
  ``(x, y, z)`` (``(x, y, 0)`` for images) to RAS world millimetres -- exactly
  nibabel's convention for ``array.T``. So ``nibabel.Nifti1Image(scan.array.T, scan.affine)``
  is the same scan.
* ``meta`` carries source tags needed to write the data back (DICOM patient/study
  tags, OME metadata, ...). It must stay JSON-friendly (str, numbers, lists, dicts).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Scan:
    """A float32 image or volume plus spacing, RAS affine, modality and source metadata."""

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray
    modality: str = "OT"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        if arr.ndim not in (2, 3):
            raise ValueError(f"Scan arrays are 2D (y, x) or 3D (z, y, x); got shape {arr.shape}")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != arr.ndim:
            raise ValueError(f"spacing {spacing} does not match array of {arr.ndim} dimensions")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "meta", dict(self.meta))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def orientation(self) -> str:
        """Orientation code such as ``"RAS"`` or ``"LPS"`` of the (x, y, z) voxel axes."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    def with_array(self, array: np.ndarray, **changes: Any) -> "Scan":
        """A new scan with the same geometry and metadata (plus ``changes``) around ``array``."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"new array shape {array.shape} differs from the scan's {self.array.shape}")
        return replace(self, array=array, **changes)

    def as_volume(self) -> "Scan":
        """A 2D image as a one-slice volume (z=1), geometry unchanged; volumes as they are."""
        if self.ndim == 3:
            return self
        z = float(np.linalg.norm(self.affine[:3, 2])) or 1.0
        return replace(self, array=self.array[None], spacing=(z, *self.spacing))

    def to_nifti_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(data in nibabel's x-first order, affine), for writing with nibabel."""
        return self.array.T, self.affine


def affine_from_spacing(spacing: tuple[float, ...], origin: tuple[float, ...] | None = None) -> np.ndarray:
    """A diagonal RAS affine for an array with ``spacing`` in array axis order."""
    rev = tuple(reversed(spacing))
    aff = np.eye(4)
    for i, s in enumerate(rev):
        aff[i, i] = s
    if origin is not None:
        aff[: len(origin), 3] = origin
    return aff
