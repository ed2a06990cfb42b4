"""npe2 reader: NIfTI, DICOM (files and series folders) and (OME-)TIFF -> napari layers.

``get_reader(path)`` returns ``None`` for paths medidiff does not read, so napari can try
another plugin. It claims NIfTI, DICOM files (also without an extension: by their ``DICM``
preamble), DICOM series folders, and only those TIFFs it reads better than napari's own reader
(with physical pixel sizes). napari offers a file to a reader by its name pattern alone, so
``napari.yaml`` lists ``*.ome.tif(f)`` but not ``*.tif``, and names without a dot or with a
numeric suffix (``IM000001``, ``1.2.840.113619.2.55.3.1``) for extension-less DICOM files. The reader function reads with ``medidiff.io.load_scan`` and converts with
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

from medidiff.errors import InvalidScanError, MedidiffError
from medidiff.io.formats import TIFF_SUFFIXES, has_dicom_preamble, is_dicom_folder
from medidiff.io.formats import VOLUME_SUFFIXES as FILE_SUFFIXES  # napari reads pictures itself

from .layers import is_label_like, scan_to_layer_data

__all__ = ["get_reader", "read", "read_scans", "layer_name", "error_message"]

LOG = logging.getLogger(__name__)

# file-name words that mark a label map (opened as a labels layer when its values are integers)
_LABEL_WORDS = ("label", "labels", "seg", "segmentation", "mask", "masks", "aseg", "parc", "annotation")

LayerDataTuple = tuple[Any, dict[str, Any], str]


def _suffix_ok(path: str) -> bool:
    return path.lower().endswith(FILE_SUFFIXES)


def _is_dicom_folder(path: str) -> bool:
    """Whether a folder holds DICOM files (``medidiff.io.formats.is_dicom_folder``, 4 levels deep).

    ``medidiff.io.detect_format`` calls every folder DICOM; napari asks the reader about any
    folder (zarr stores, image stacks, ...), so the plugin only claims folders that hold at
    least one DICOM file among the first 500 files.
    """
    return is_dicom_folder(path, max_depth=4, max_files=500)


def _tiff_we_handle_better(path: str) -> bool:
    """A TIFF whose physical pixel size medidiff reads (OME-TIFF, or ImageJ ``unit``/``spacing``).

    napari's own reader opens any other TIFF just as well (pixels, no scale), so medidiff leaves
    those to it: claiming every ``.tif`` is what made napari ask "which reader?" for each one.
    """
    if path.lower().endswith((".ome.tif", ".ome.tiff")):
        return True
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if tif.is_ome:
                return True
            imagej = tif.imagej_metadata if tif.is_imagej else None
            return bool(imagej and (imagej.get("unit") or imagej.get("spacing")))
    except Exception:  # not readable as TIFF here: let napari's reader say so
        return False


def _supported(path: str) -> bool:
    if os.path.isdir(path):
        return _is_dicom_folder(path)
    if path.lower().endswith(TIFF_SUFFIXES):
        return _tiff_we_handle_better(path)
    if _suffix_ok(path):
        return True
    return has_dicom_preamble(path)  # DICOM files often have no extension (IM000001, UID names)


def get_reader(path: str | Sequence[str]) -> Callable[..., list[LayerDataTuple]] | None:
    """The npe2 ``get_reader`` hook: a reader function for ``path``, or ``None`` when medidiff cannot read it."""
    paths = _as_list(path)
    if not paths or not all(_supported(p) for p in paths):
        return None
    return read


def read(path: str | Sequence[str], stack: bool = False) -> list[LayerDataTuple]:
    """The reader function napari calls: layers for ``path``; bad input becomes one error notification."""
    out: list[LayerDataTuple] = []
    for p in _as_list(path):
        try:
            out.extend(_read_one(p))
        except MedidiffError as exc:
            _notify_error(error_message(p, exc))
    return out or [(None,)]  # type: ignore[list-item]  # npe2's "read, nothing to add" sentinel


def error_message(path: str, exc: BaseException) -> str:
    """The one line shown when ``path`` cannot be opened; it always names the file."""
    text = str(exc)
    if os.path.basename(os.path.normpath(path)) not in text:
        text = f"{path}: {text}"
    return f"medidiff could not open {text}"


def _as_list(path: str | Sequence[str]) -> list[str]:
    return [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path]


def _notify_error(message: str) -> None:
    _notify(message, error=True)


def _notify(message: str, error: bool) -> None:
    (LOG.error if error else LOG.warning)(message)
    try:
        from napari.utils.notifications import show_error, show_warning

        (show_error if error else show_warning)(message)
    except Exception:  # pragma: no cover - napari missing or its notification manager shut down
        pass


def read_scans(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """Layer data tuples for one path or several (each read on its own); raises ``MedidiffError``."""
    out: list[LayerDataTuple] = []
    for p in _as_list(path):
        out.extend(_read_one(p))
    return out


def _read_one(path: str) -> list[LayerDataTuple]:
    from medidiff.io import load_scan

    if os.path.isdir(path):
        from medidiff.io.dicom import list_series

        series = list_series(path)
        if len(series) > 1:
            names = [layer_name(path, info) for info in series]
            out, failed = [], []
            for info, name in zip(series, names):
                if names.count(name) > 1:  # same number and description: tell them apart by UID
                    name = f"{name[:-1]} {info.uid[-6:]}]"
                try:
                    out.append(_layer(load_scan(path, series=info.uid), name))
                except MedidiffError as exc:  # one unusable series (a localiser, ...) must not hide the others
                    failed.append(exc)
            if failed and not out:
                raise failed[0]
            for exc in failed:
                _notify(f"medidiff skipped a series: {exc}", error=False)
            return out
    try:
        scan = load_scan(path)
    except InvalidScanError as exc:
        # a 4D NIfTI, or a TIFF with a time/channel axis: open the first volume and say so
        if "volume=N" not in str(exc):
            raise
        scan = load_scan(path, volume=0)
        _notify(f"{exc}. medidiff opened volume 0 only; to work on another, extract it with "
                f"`medidiff convert {Path(path).name} OUT.nii.gz --volume N` and open that.", error=False)
        return [_layer(scan, f"{layer_name(path)} [volume 0]")]
    return [_layer(scan, layer_name(path))]


def layer_name(path: str, series: Any = None) -> str:
    """A layer name from a path (``brain.nii.gz`` -> ``brain``), plus the series number/description."""
    p = Path(path)
    name = p.name
    for suffix in (".nii.gz", ".ome.tiff", ".ome.tif", *FILE_SUFFIXES):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    if series is not None:
        parts = [series.modality or "", f"series {series.number}" if series.number else "", series.description or ""]
        label = " ".join(p for p in parts if p) or f"series {series.uid[-6:]}"
        name = f"{name} [{label}]"
    return name


def _layer(scan, name: str) -> LayerDataTuple:
    layer_type = "labels" if _named_like_labels(name) and is_label_like(scan) else "image"
    return scan_to_layer_data(scan, name, layer_type)


def _named_like_labels(name: str) -> bool:
    import re

    words = re.split(r"[^a-z]+", name.lower())
    return any(w in _LABEL_WORDS for w in words)
