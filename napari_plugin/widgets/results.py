"""Task results back into the viewer: ``Scan``s as layers with exact geometry.

The result layers keep the input layer's metadata (plus the result's own geometry record), so
whatever else rode on the input (a study id, source tags) rides on the outputs too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medidiff.io.scan import Scan

from ..layers import layer_to_scan, scan_to_layer_data

__all__ = ["input_scan", "add_scan_layer", "add_stacked_layer"]


def input_scan(layer: Any) -> Scan:
    """The ``Scan`` of an input layer (geometry from its transform; see ``napari_medidiff.layers``)."""
    return layer_to_scan(layer)


def _merge_metadata(kwargs: dict[str, Any], like: Any | None, extra: dict[str, Any] | None) -> None:
    if like is not None:
        # keep whatever else the input layer carried; the result's own geometry record wins
        kwargs["metadata"] = {**dict(getattr(like, "metadata", {}) or {}), **kwargs["metadata"]}
    if extra:
        kwargs["metadata"] = {**kwargs["metadata"], **extra}


def add_scan_layer(viewer: Any, scan: Scan, name: str, layer_type: str = "image", *, like: Any | None = None,
                   metadata: dict[str, Any] | None = None, **style: Any) -> Any:
    """Add ``scan`` as a new layer (geometry exact via ``scan_to_layer_data``) and return it.

    ``like`` is the input layer whose metadata the result inherits; ``style`` are extra layer
    arguments (``colormap``, ``opacity``, ``blending``, ``contrast_limits``...).
    """
    data, kwargs, kind = scan_to_layer_data(scan, name, layer_type)
    _merge_metadata(kwargs, like, metadata)
    kwargs.update(style)
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def add_stacked_layer(viewer: Any, scans: Sequence[Scan], name: str, layer_type: str = "image", *,
                      metadata: dict[str, Any] | None = None, **style: Any) -> Any:
    """Add same-shaped ``scans`` as one layer with a leading ``sample`` axis (slider), geometry of the first."""
    if not scans:
        raise ValueError("no scans to add")
    data0, kwargs, kind = scan_to_layer_data(scans[0], name, layer_type)
    data = np.stack([scan_to_layer_data(s, name, layer_type)[0] for s in scans]).astype(data0.dtype, copy=False)
    ndim = data0.ndim
    kwargs["scale"] = (1.0, *kwargs["scale"])
    kwargs["translate"] = (0.0, *kwargs.get("translate", (0.0,) * ndim))
    if kwargs.get("affine") is not None:
        affine = np.eye(ndim + 2)
        affine[1:, 1:] = np.asarray(kwargs["affine"])
        kwargs["affine"] = affine
    kwargs["axis_labels"] = ("sample", *kwargs["axis_labels"])
    if "units" in kwargs:
        kwargs["units"] = ("pixel", *kwargs["units"])
    _merge_metadata(kwargs, None, metadata)
    kwargs.update(style)
    return getattr(viewer, f"add_{kind}")(data, **kwargs)
