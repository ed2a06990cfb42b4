"""The *Slice along* control: which axis a 2D model walks through a volume (or "whole volume").

A 2D model on a volume ``(z, y, x)`` sees one slice at a time, taken along the model's
``config.slice_axis`` (axis 0 when the model does not record one; ``medidiff.core.slicing``).
This control lets the user take the slices along another axis: the task then runs on
:func:`along_axis`'s view of the model, a shallow copy (same network, same weights) whose
config names the chosen axis, so every task that slices by the model's config (denoising,
anomaly detection) follows it and puts the results back in the scan's own axis order. A 3D
model takes the whole volume (the control says so and is disabled); a 2D image has nothing to
choose.

Axis names: the array axes are ``z`` (slices), ``y`` (rows) and ``x`` (columns). For a medical
scan the anatomical plane of the slices is named too, from the scan's affine: slices across an
array axis whose step points mostly along S are axial, along A coronal, along R sagittal.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QWidget

from .wording import AXIS_NAMES, PLANE_NAMES, SLICE_AXIS_TIP

__all__ = ["SliceAxisControl", "along_axis", "axis_labels"]


def along_axis(model: Any, axis: int | None) -> Any:
    """``model`` itself (``axis`` None or the model's own) or a view of it that slices along ``axis``."""
    if axis is None or model.config.spatial_dims != 2:
        return model
    own = model.config.slice_axis if model.config.slice_axis is not None else 0
    if int(axis) == int(own):
        return model
    view = copy.copy(model)  # the same network and weights; only the layout record differs
    view.config = dataclasses.replace(model.config, slice_axis=int(axis))
    return view


def axis_labels(affine: np.ndarray | None, medical: bool) -> list[str]:
    """Plain names of the three array axes of a volume: ``"z (slices) - axial"``..."""
    labels = []
    for axis in range(3):
        label = AXIS_NAMES[axis]
        if medical and affine is not None:
            column = np.asarray(affine, dtype=np.float64)[:3, 2 - axis]  # the affine takes (x, y, z) indices
            label = f"{label} - {PLANE_NAMES[int(np.argmax(np.abs(column)))]}"
        labels.append(label)
    return labels


class SliceAxisControl(QComboBox):
    """The axis a 2D model slices a volume along; "whole volume" (disabled) for a 3D model.

    ``update_for(model_config, scan_ndim, affine, medical)`` refills it for the chosen model and
    layer; ``axis()`` is the chosen array axis, or ``None`` when there is nothing to choose.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setToolTip(SLICE_AXIS_TIP)
        self.update_for(None, 2)

    def update_for(self, model_config: dict[str, Any] | None, scan_ndim: int, affine: np.ndarray | None = None,
                   medical: bool = False) -> None:
        """Refill for this model (its ``config.json`` as a dict, or None) and a layer of ``scan_ndim`` dims."""
        self.blockSignals(True)
        self.clear()
        dims = int((model_config or {}).get("spatial_dims") or 2)
        if dims == 3:
            self.addItem("whole volume (3D model)", None)
        elif scan_ndim != 3:
            self.addItem("one image (2D)", None)
        else:
            own = (model_config or {}).get("slice_axis")
            own = int(own) if own is not None else 0
            for axis, label in enumerate(axis_labels(affine, medical)):
                self.addItem(f"{label} (as the model learnt)" if axis == own else label, axis)
            self.setCurrentIndex(own)
        self.setEnabled(dims == 2 and scan_ndim == 3)
        self.blockSignals(False)

    def axis(self) -> int | None:
        """The chosen array axis (0, 1, 2), or None (a 3D model or a 2D image)."""
        data = self.currentData()
        return None if data is None else int(data)

    def set_axis(self, axis: int) -> None:
        """Choose array axis ``axis`` (when the control offers it)."""
        index = self.findData(int(axis))
        if index >= 0:
            self.setCurrentIndex(index)
