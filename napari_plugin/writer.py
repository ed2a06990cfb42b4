"""npe2 writers: an image or labels layer -> NIfTI, a DICOM series folder, or OME-TIFF.

Each writer is napari's single-layer API ``write(path, data, meta) -> [written paths]``:
``meta`` is the layer state napari hands over (scale, translate, affine, metadata, ...),
``layers.layer_to_scan`` turns it back into a ``Scan`` (exact geometry when the layer came
from medidiff) and ``medidiff.io.save_scan`` writes it. Labels layers are written with their
integer values (rounded, never rescaled; ``meta["labels"]`` makes NIfTI store them in an integer
type, so segmentation tools open them as label maps).

napari's save dialog has already asked before replacing an existing file, so the writers
pass ``overwrite=True``; the output is written atomically by ``medidiff.io``.

DICOM: napari picks a writer by the file name's extension, so the DICOM writer answers to
``.dcm``; ``scan.dcm`` is written as the series folder ``scan/`` (one file per slice), and
that folder is what the writer returns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .layers import layer_to_scan

__all__ = [
    "write_nifti_image",
    "write_nifti_labels",
    "write_dicom_image",
    "write_dicom_labels",
    "write_tiff_image",
    "write_tiff_labels",
    "dicom_folder_for",
]


def _save(path: str, data: Any, meta: dict[str, Any], layer_type: str, fmt: str) -> list[str]:
    from medidiff.io import save_scan

    scan = layer_to_scan(data, meta, layer_type=layer_type)
    if layer_type == "labels":  # stored as integers (NIfTI: the smallest exact integer type)
        scan = scan.with_array(scan.array, meta={**scan.meta, "labels": True})
    target = dicom_folder_for(path) if fmt == "dicom" else Path(path)
    written = save_scan(scan, target, format=fmt, overwrite=True)
    return [os.fspath(written)]


def dicom_folder_for(path: str | os.PathLike) -> Path:
    """The series folder a DICOM save to ``path`` writes: ``out/ct.dcm`` -> ``out/ct``."""
    p = Path(path)
    return p.with_suffix("") if p.suffix.lower() in (".dcm", ".dicom") else p


def write_nifti_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write an image layer as NIfTI (``.nii`` / ``.nii.gz``) with its affine."""
    return _save(path, data, meta, "image", "nifti")


def write_nifti_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a labels layer as NIfTI with integer values and its affine."""
    return _save(path, data, meta, "labels", "nifti")


def write_dicom_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write an image layer as a DICOM series folder (``x.dcm`` -> folder ``x``)."""
    return _save(path, data, meta, "image", "dicom")


def write_dicom_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a labels layer as a DICOM series folder with integer values."""
    return _save(path, data, meta, "labels", "dicom")


def write_tiff_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write an image layer as OME-TIFF with its physical pixel sizes."""
    return _save(path, data, meta, "image", "tiff")


def write_tiff_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a labels layer as OME-TIFF with integer values."""
    return _save(path, data, meta, "labels", "tiff")
