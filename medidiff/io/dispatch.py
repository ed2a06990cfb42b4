"""``load_scan`` / ``save_scan`` / ``detect_format``: pick the format, check the result, write atomically.

Every problem with the input becomes a ``MedidiffError`` subclass whose message starts
with the path; no raw nibabel/pydicom/tifffile/Pillow exception leaves ``load_scan``.
"""

from __future__ import annotations

import gzip
from dataclasses import replace
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medidiff.errors import InvalidScanError, MedidiffError, OutputError, ScanError, UnsupportedFormatError
from medidiff.io._util import one_line
from medidiff.io.atomic import atomic_dir, atomic_file, check_output_path
from medidiff.io.formats import format_from_name
from medidiff.io.scan import Scan

FORMATS = ("nifti", "dicom", "tiff", "png")
_SUPPORTED = ".nii/.nii.gz (NIfTI), .dcm or a DICOM folder, .tif/.tiff/.ome.tif (TIFF), .png/.jpg"


def _format_from_name(path: Path) -> str | None:
    """The format an extension names, or None (no extension, or an unknown one)."""
    return format_from_name(path)


def _sniff(path: Path) -> str | None:
    """The format from the first bytes of a file (magic numbers), or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(352)
    except OSError:
        return None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff":
        return "png"
    if head[:2] == b"\x1f\x8b":  # gzip: maybe a .nii.gz without its name
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(352)
        except (OSError, EOFError):
            return None
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if len(head) >= 8 and head[4:8] in (b"n+2\x00",):
        return "nifti"
    return None


def detect_format(path: str | Path) -> str:
    """``"nifti"``, ``"dicom"``, ``"tiff"`` or ``"png"`` for an existing file or folder.

    A folder is a DICOM series folder. A file is known by its extension, else by its
    first bytes (DICOM files often have no extension).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ScanError(path, "no such file or folder")
    if path.is_dir():
        return "dicom"
    fmt = _format_from_name(path) or _sniff(path)
    if fmt is None:
        raise UnsupportedFormatError(path, f"is not a scan medidiff can read (unknown extension and contents); supported: {_SUPPORTED}")
    return fmt


def _check_values(scan: Scan, path: Path) -> Scan:
    if any(s == 0 for s in scan.shape):
        raise InvalidScanError(path, f"has a zero-size axis (shape {scan.shape})")
    finite = np.isfinite(scan.array)
    if not finite.all():
        n_nan = int(np.isnan(scan.array).sum())
        n_inf = int(finite.size - finite.sum()) - n_nan
        raise InvalidScanError(
            path, f"has {n_nan} NaN and {n_inf} infinite values out of {scan.array.size}; "
            "fix or mask them (e.g. numpy.nan_to_num) before using the scan",
        )
    if any(not np.isfinite(s) or s <= 0 for s in scan.spacing) or not np.isfinite(scan.affine).all():
        raise InvalidScanError(path, f"has unusable geometry: spacing {scan.spacing}, affine {scan.affine.tolist()}")
    if abs(np.linalg.det(scan.affine[:3, :3])) < 1e-12 and scan.ndim == 3:
        raise InvalidScanError(path, f"has a singular affine {scan.affine.tolist()}")
    return scan


def load_scan(
    path: str | Path,
    *,
    volume: int | None = None,
    series: str | int | None = None,
    modality: str | None = None,
    fill_gaps: bool = False,
) -> Scan:
    """Read a NIfTI file, DICOM file or series folder, (OME-)TIFF, or PNG/JPEG as a ``Scan``.

    volume:   index of the volume of a 4D NIfTI file (or of the one time/channel axis of a
              TIFF, or of the repeats of a DICOM series with several images per position).
    series:   SeriesInstanceUID or SeriesNumber, for a DICOM folder that holds several series.
    modality: overrides the modality read from the file (e.g. ``"CT"`` for a NIfTI file).
    fill_gaps: a DICOM series with missing slices is refused unless this is set; then blank
              slices fill the missing positions and every slice keeps its real position
              (``meta["filled_slices"]`` lists them).

    Declared sizes are checked before reading (``medidiff.io.limits``; the limit is
    ``MEDIDIFF_MAX_SCAN_BYTES`` or half the available memory).

    Raises a ``medidiff.errors.ScanError`` subclass (message starting with the path) for a
    missing, unreadable, unsupported or unusable input.
    """
    path = Path(path).expanduser()
    fmt = detect_format(path)
    if series is not None and fmt != "dicom":
        raise InvalidScanError(path, f"series={series!r} only applies to DICOM folders; this is a {fmt} file")
    if fill_gaps and fmt != "dicom":
        raise InvalidScanError(path, f"fill_gaps (--fill-gaps) only applies to DICOM series; this is a {fmt} file")
    if volume is not None and (isinstance(volume, bool) or int(volume) != volume or volume < 0):
        raise InvalidScanError(path, f"volume={volume!r} must be a whole number >= 0")
    try:
        if fmt == "nifti":
            from medidiff.io.nifti import read_nifti

            scan = read_nifti(path, volume=volume)
        elif fmt == "dicom":
            from medidiff.io.dicom import read_dicom

            scan = read_dicom(path, series=series, volume=volume, fill_gaps=fill_gaps)
        elif fmt == "tiff":
            from medidiff.io.tiff import read_tiff

            scan = read_tiff(path, volume=volume)
        else:
            from medidiff.io.png import read_png

            if volume not in (None, 0):
                raise InvalidScanError(path, f"is a 2D image; volume={volume} does not apply")
            scan = read_png(path)
    except MedidiffError:
        raise
    except MemoryError as exc:  # under the size limit, but memory ran out anyway
        raise InvalidScanError(path, f"not enough memory to read it ({one_line(exc)}); free memory or lower "
                                     "MEDIDIFF_MAX_SCAN_BYTES so such files are refused up front") from exc
    except Exception as exc:  # the library's own error: truncated, corrupt or not really this format
        raise InvalidScanError(
            path, f"cannot be read as {fmt}; the file may be truncated, corrupt or not a {fmt} file ({one_line(exc)})"
        ) from exc
    scan = _check_values(scan, path)
    meta = dict(scan.meta)
    meta["source_path"] = str(path.resolve())
    changes = {"meta": meta}
    if modality:
        changes["modality"] = str(modality)
    return scan.with_array(scan.array, **changes)


def output_format(path: str | Path, format: str | None = None) -> str:
    """The format ``save_scan`` writes for ``path``: ``format`` if given, else from the extension.

    A path without an extension (or an existing folder) is a DICOM series folder.
    """
    path = Path(path)
    if format is not None:
        fmt = str(format).lower()
        fmt = {"nii": "nifti", "dcm": "dicom", "tif": "tiff", "ome-tiff": "tiff"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise UnsupportedFormatError(path, f"unknown output format {format!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    fmt = _format_from_name(path)
    if fmt is None and (path.suffix == "" or path.is_dir()):
        return "dicom"
    if fmt is None:
        raise UnsupportedFormatError(path, f"cannot tell the output format from the extension {path.suffix!r}; use {_SUPPORTED} "
                                           "or a folder name (no extension) for a DICOM series, or pass format=")
    return fmt


def save_scan(
    scan: Scan,
    path: str | Path,
    *,
    format: str | None = None,
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
    source: Scan | None = None,
) -> Path:
    """Write ``scan`` to ``path`` atomically and return the path written.

    format:    ``"nifti"``, ``"dicom"`` (a folder of one file per slice; a ``.dcm`` path
               writes one file for a 2D scan), ``"tiff"`` (OME-TIFF) or ``"png"`` (2D);
               by default from the extension, and a path without one is a DICOM folder.
    overwrite: replace an existing output; without it an existing path is refused.
               Missing parent folders are created. An output that is, holds or lies inside
               an input, sits under a file, or cannot be written (read-only, ``/proc``, disk
               full) raises ``OutputError`` (one line) and leaves no temporary file.
    inputs:    paths that must never be written onto (the scan's own ``meta["source_path"]``
               and ``source``'s are added).
    source:    the scan this one was derived from: its ``meta`` (DICOM patient/study tags,
               units) fills in what ``scan.meta`` lacks.
    """
    if not isinstance(scan, Scan):
        raise TypeError(f"save_scan expects a Scan, got {type(scan).__name__}")
    path = Path(path).expanduser()
    protected = [Path(p) for p in inputs]
    for s in (scan, source):
        if s is not None and s.meta.get("source_path"):
            protected.append(Path(s.meta["source_path"]))
    if source is not None:
        meta = {k: v for k, v in source.meta.items() if k not in ("source_path",)}
        meta.update(scan.meta)
        if isinstance(source.meta.get("dicom"), dict) and isinstance(scan.meta.get("dicom"), dict):
            meta["dicom"] = {**source.meta["dicom"], **scan.meta["dicom"]}
        scan = scan.with_array(scan.array, meta=meta)
    fmt = output_format(path, format)
    check_output_path(path, overwrite=overwrite, inputs=protected)
    _check_writable(scan, path, fmt)
    if scan.ndim == 3 and scan.shape[0] == 1 and (fmt == "png" or path.suffix.lower() in (".dcm", ".dicom")):
        scan = replace(scan, array=scan.array[0], spacing=scan.spacing[1:])

    if fmt == "nifti":
        from medidiff.io.nifti import write_nifti

        with atomic_file(path, overwrite=overwrite, inputs=protected) as tmp:
            write_nifti(scan, tmp, label=path)
    elif fmt == "tiff":
        from medidiff.io.tiff import write_tiff

        with atomic_file(path, overwrite=overwrite, inputs=protected) as tmp:
            write_tiff(scan, tmp)
    elif fmt == "png":
        from medidiff.io.png import write_png

        with atomic_file(path, overwrite=overwrite, inputs=protected) as tmp:
            write_png(scan, tmp, label=path)
    else:
        from medidiff.io.dicom import write_dicom_series

        if path.suffix.lower() in (".dcm", ".dicom"):
            if scan.ndim != 2:
                raise OutputError(f"{path}: a .dcm path holds one 2D image; this scan is 3D {scan.shape}. "
                                  "Give a folder name (no extension) to write a DICOM series")
            with atomic_file(path, overwrite=overwrite, inputs=protected) as tmp:
                write_dicom_series(scan, tmp.parent, single_file=tmp, label=path)
        else:
            with atomic_dir(path, overwrite=overwrite, inputs=protected) as tmp:
                write_dicom_series(scan, tmp, label=path)
    return path


def _check_writable(scan: Scan, path: Path, fmt: str) -> None:
    if scan.array.size == 0:
        raise OutputError(f"{path}: the scan is empty (shape {scan.shape}); nothing to write")
    if not np.isfinite(scan.array).all():
        raise OutputError(f"{path}: the scan has NaN or infinite values; {fmt} cannot store them faithfully")
    if fmt == "png" and scan.ndim != 2:
        if scan.shape[0] != 1:
            raise OutputError(f"{path}: PNG holds one 2D image; this scan is 3D {scan.shape}. Use .tif, .nii.gz or a DICOM folder")
