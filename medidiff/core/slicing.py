"""How a model's items map onto a scan: a 2D model on a volume goes slice by slice.

Every task that runs a network over a scan (denoising, anomaly detection) needs the same
bookkeeping: which array the network sees as a batch of items ``(N, *spatial)`` and how the
results go back into the scan's own axis order. The rules, in one place:

* a 2D model on a 2D image ``(y, x)``: one item, the image itself;
* a 2D model on a volume ``(z, y, x)``: one item per slice along the model's ``slice_axis``
  (axis 0 when the model does not record one), so a model trained on axial slices of a volume
  sees axial slices again;
* a 3D model on a volume: one item, the volume;
* a 3D model on a 2D image: refused (:class:`~medidiff.errors.InvalidScanError`).

Use::

    layout = SliceLayout.for_model(model, scan)
    items = layout.to_items(scan.array)          # (N, *spatial) view
    ...                                          # network work on items (or on masks)
    arr = layout.from_items(result_items)        # scan's shape again

``to_items``/``from_items`` are exact inverses (views via ``np.moveaxis``, no copy, no
interpolation), and work for any per-voxel array of the scan's shape (maps, masks, uncertainty).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medidiff.errors import InvalidScanError

__all__ = ["SliceLayout"]


@dataclass(frozen=True)
class SliceLayout:
    """Scan array ``<->`` network items ``(N, *spatial)``.

    ``axis``: the scan axis the slices are taken along, or ``None`` when the whole scan is one
    item (a 2D image, or a volume with a 3D model). ``scan_ndim``: 2 or 3.
    """

    scan_ndim: int
    axis: int | None = None

    @classmethod
    def for_model(cls, model, scan) -> "SliceLayout":
        """The layout for ``model`` (a ``DiffusionModel``) on ``scan`` (a ``Scan``)."""
        return cls.for_dims(model.config.spatial_dims, scan.ndim, model.config.slice_axis,
                            source=scan.meta.get("source_path") or "scan", shape=scan.shape)

    @classmethod
    def for_dims(cls, model_dims: int, scan_ndim: int, slice_axis: int | None = None,
                 source: str = "scan", shape: tuple[int, ...] | None = None) -> "SliceLayout":
        """The layout from the numbers alone (``slice_axis`` ``None`` means axis 0)."""
        if scan_ndim not in (2, 3):
            raise InvalidScanError(source, f"must be a 2D image or a 3D volume; got {scan_ndim} dimensions")
        if model_dims == 3 and scan_ndim != 3:
            what = f"a 2D image {tuple(shape)}" if shape is not None else "a 2D image"
            raise InvalidScanError(source, f"is {what} but the model is 3D; use a 2D model or a volume")
        if model_dims == 2 and scan_ndim == 3:
            return cls(3, int(slice_axis if slice_axis is not None else 0) % 3)
        return cls(scan_ndim, None)

    @property
    def slice_wise(self) -> bool:
        """True when a volume is cut into slices (a 2D model on a volume)."""
        return self.axis is not None

    def n_items(self, shape: tuple[int, ...]) -> int:
        """How many items a scan of ``shape`` gives."""
        return 1 if self.axis is None else int(shape[self.axis])

    def item_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The spatial shape of one item of a scan of ``shape``."""
        return tuple(shape) if self.axis is None else tuple(s for i, s in enumerate(shape) if i != self.axis)

    def item_spacing(self, spacing: tuple[float, ...]) -> tuple[float, ...]:
        """The voxel size of one item (in-plane spacing for slices), in item axis order."""
        return tuple(spacing) if self.axis is None else tuple(s for i, s in enumerate(spacing) if i != self.axis)

    def to_items(self, array: np.ndarray) -> np.ndarray:
        """``(N, *spatial)``: the scan-shaped ``array`` as the network's items (a view)."""
        arr = np.asarray(array)
        if arr.ndim != self.scan_ndim:
            raise ValueError(f"expected a {self.scan_ndim}D array, got shape {arr.shape}")
        return arr[None] if self.axis is None else np.moveaxis(arr, self.axis, 0)

    def from_items(self, items: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_items`: items back in the scan's axis order."""
        arr = np.asarray(items)
        return arr[0] if self.axis is None else np.moveaxis(arr, 0, self.axis)
