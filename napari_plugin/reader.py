"""npe2 reader: NIfTI, DICOM (files and series folders) and (OME-)TIFF -> napari layers.

``get_reader(path)`` returns ``None`` for paths medidiff does not read, so napari can try
another plugin. The reader function reads with ``medidiff.io.load_scan`` and converts with
``layers.scan_to_layer_data``; a DICOM folder holding several series gives one layer per
series.

A file medidiff cannot use (corrupt, truncated, unsupported content) raises a
``MedidiffError`` whose message names the file and the problem. The reader shows that
message as a napari error notification and returns napari's "nothing to add" value
``[(None,)]``: the user sees one clear line instead of napari's generic "Tried opening with
medidiff, but failed ... try another plugin" dialog. For scripts that need an exception,
``read_scans`` (and ``medidiff.io.load_scan``) raise it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medidiff.errors import MedidiffError

from .layers import is_label_like, scan_to_layer_data

__all__ = ["get_reader", "read_scans", "layer_name"]

LOG = logging.getLogger(__name__)

FILE_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".dicom", ".ima", ".tif", ".tiff")
# file-name words that mark a label map (opened as a labels layer when its values are integers)
_LABEL_WORDS = ("label", "labels", "seg", "segmentation", "mask", "masks", "aseg", "parc", "annotation")

LayerDataTuple = tuple[Any, dict[str, Any], str]


def _suffix_ok(path: str) -> bool:
    return path.lower().endswith(FILE_SUFFIXES)


def _is_dicom_folder(path: str) -> bool:
    try:
        from medidiff.io import detect_format

        return detect_format(path) == "dicom"
    except MedidiffError:
        return False
    except Exception:  # detection must never break napari's open dialog
        LOG.debug("medidiff could not tell what %s is", path, exc_info=True)
        return False


def _supported(path: str) -> bool:
    if os.path.isdir(path):
        return _is_dicom_folder(path)
    return _suffix_ok(path)


def get_reader(path: str | Sequence[str]) -> Callable[..., list[LayerDataTuple]] | None:
    """The npe2 ``get_reader`` hook: a reader function for ``path``, or ``None`` when medidiff cannot read it."""
    paths = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path]
    if not paths or not all(_supported(p) for p in paths):
        return None
    return read


def read(path: str | Sequence[str], stack: bool = False) -> list[LayerDataTuple]:
    """The reader function napari calls: layers for ``path``; bad input becomes one error notification."""
    try:
        return read_scans(path)
    except MedidiffError as exc:
        message = f"medidiff could not open {exc}" if isinstance(getattr(exc, "path", None), Path) else str(exc)
        _notify_error(message)
        return [(None,)]  # type: ignore[list-item]  # npe2's "read, nothing to add" sentinel


def _notify_error(message: str) -> None:
    LOG.error(message)
    try:
        from napari.utils.notifications import show_error

        show_error(message)
    except Exception:  # pragma: no cover - napari missing or its notification manager shut down
        pass


def read_scans(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """Layer data tuples for one path or several (each read on its own); raises ``MedidiffError``."""
    paths = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path]
    out: list[LayerDataTuple] = []
    for p in paths:
        out.extend(_read_one(p))
    return out


def _read_one(path: str) -> list[LayerDataTuple]:
    from medidiff.io import load_scan

    if os.path.isdir(path):
        from medidiff.io.dicom import list_series

        series = list_series(path)
        if len(series) > 1:
            out = []
            for info in series:
                scan = load_scan(path, series=info.uid)
                out.append(_layer(scan, layer_name(path, info), path))
            return out
    scan = load_scan(path)
    return [_layer(scan, layer_name(path), path)]


def layer_name(path: str, series: Any = None) -> str:
    """A layer name from a path (``brain.nii.gz`` -> ``brain``), plus the series number/description."""
    p = Path(path)
    name = p.name
    for suffix in (".nii.gz", ".ome.tiff", ".ome.tif", *FILE_SUFFIXES):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    if series is not None:
        parts = [f"series {series.number}" if series.number else f"series {series.uid[-8:]}"]
        if series.description:
            parts.append(series.description)
        name = f"{name} [{' '.join(parts)}]"
    return name


def _layer(scan, name: str, path: str) -> LayerDataTuple:
    layer_type = "labels" if _named_like_labels(name) and is_label_like(scan) else "image"
    data, kwargs, kind = scan_to_layer_data(scan, name, layer_type)
    kwargs["metadata"]["medidiff_scan"]["source"] = os.path.abspath(path)
    return data, kwargs, kind


def _named_like_labels(name: str) -> bool:
    import re

    words = re.split(r"[^a-z]+", name.lower())
    return any(w in _LABEL_WORDS for w in words)
