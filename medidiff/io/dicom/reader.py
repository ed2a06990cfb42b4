"""``read_dicom``: a DICOM file (single or multi-frame) or a series folder -> ``Scan``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medidiff.errors import InvalidScanError, SeriesSelectionError
from medidiff.io._util import json_value, warn
from medidiff.io.dicom.frames import Image, images_of
from medidiff.io.dicom.geometry import affine_of, geometry_groups, order_images, slice_slots
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


def read_dicom(path: Path, series: str | int | None = None, volume: int | None = None, fill_gaps: bool = False) -> Scan:
    """A DICOM file (single or multi-frame) or a folder holding one or more series.

    A series with missing slices is refused (its later slices would sit at wrong
    positions) unless ``fill_gaps``: then blank slices (the smallest value of the series)
    fill the missing positions, every image keeps its real position, and
    ``meta["filled_slices"]`` lists the indices of the blank slices.
    """
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
    slots, n_slices = slice_slots(dist, len(images), path, fill_gaps)
    affine, spacing = affine_of(images, dist, path, slots)

    volume_arr, first_ds, n_files = read_values(images, slots, n_slices)
    meta = _meta_of(first_ds, len(images))
    filled = [int(i) for i in sorted(set(range(n_slices)) - {int(s) for s in slots})]
    if filled:
        meta["filled_slices"] = filled
        warn(path, f"filled {len(filled)} missing slice(s) (indices {filled[:10]}{' ...' if len(filled) > 10 else ''}) "
             f"with blank slices of value {float(volume_arr[filled[0]].flat[0]):g}; every other slice keeps its own position")
    if path.is_dir():
        meta["files"] = n_files
    array = volume_arr[0] if n_slices == 1 else volume_arr
    if array.ndim == 2:
        spacing = spacing[1:]
    modality = str(first_ds.get("Modality", "") or "OT")
    return Scan(array=array, spacing=spacing, affine=affine, modality=modality, meta=meta)
