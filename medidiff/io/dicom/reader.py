"""``read_dicom``: a DICOM file (single or multi-frame) or a series folder -> ``Scan``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medidiff.errors import InvalidScanError, SeriesSelectionError
from medidiff.io._util import json_value
from medidiff.io.dicom.frames import Image, images_of
from medidiff.io.dicom.geometry import affine_of, geometry_groups, order_images
from medidiff.io.dicom.pixels import read_values
from medidiff.io.dicom.series import choose_series, read_single_header, scan_folder, series_info
from medidiff.io.dicom.tags import KEPT_TAGS, series_uid
from medidiff.io.scan import Scan


def _meta_of(ds, n_images: int) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    for keyword in KEPT_TAGS:
        value = ds.get(keyword)
        if value is not None and str(value) != "":
            tags[keyword] = str(value)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is not None:
        tags["TransferSyntaxUID"] = str(tsyntax)
    for keyword in ("PhotometricInterpretation", "WindowCenter", "WindowWidth", "RescaleType", "DoseUnits"):
        value = ds.get(keyword)
        if value is not None and str(value) != "":
            tags[keyword] = json_value(value)
    return {"format": "dicom", "unit": "mm", "dicom": tags, "n_images": n_images}


def read_dicom(path: Path, series: str | int | None = None, volume: int | None = None) -> Scan:
    """A DICOM file (single or multi-frame) or a folder holding one or more series."""
    if path.is_dir():
        found, looked_at = scan_folder(path)
        if not found:
            raise InvalidScanError(
                path, f"holds no DICOM images ({looked_at} files looked at); give a folder with one DICOM series or a scan file",
            )
        _, members = choose_series(path, found, series)
    else:
        ds = read_single_header(path)
        if series is not None:
            wanted = str(series)
            if wanted not in (series_uid(ds), str(ds.get("SeriesNumber", ""))):
                raise SeriesSelectionError(path, f"holds only {series_info(series_uid(ds), [(path, ds)]).describe()}, not {wanted!r}")
        members = [(path, ds)]

    images: list[Image] = []
    for file, ds in members:
        images.extend(images_of(ds, file))
    images = geometry_groups(images, path)
    images, dist = order_images(images, path, volume)
    affine, spacing = affine_of(images, dist, path)

    volume_arr, first_ds, n_files = read_values(images)
    meta = _meta_of(first_ds, len(images))
    if path.is_dir():
        meta["files"] = n_files
    array = volume_arr[0] if len(images) == 1 else volume_arr
    if array.ndim == 2:
        spacing = spacing[1:]
    modality = str(first_ds.get("Modality", "") or "OT")
    return Scan(array=array, spacing=spacing, affine=affine, modality=modality, meta=meta)
