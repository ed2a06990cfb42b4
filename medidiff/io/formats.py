"""Which paths are scans: the suffixes of every format and the "is this a DICOM folder" test.

The one home for these decisions; the reader/writer modules, training data discovery,
the napari reader and the tasks all take them from here. No format library is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".btf", ".tf8")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")  # 2D pictures (Pillow)
VOLUME_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES + TIFF_SUFFIXES  # medical formats (napari reads pictures itself)
# every file suffix load_scan reads, longest first so stripping one never leaves ".ome" or ".nii"
SCAN_SUFFIXES = tuple(sorted(VOLUME_SUFFIXES + IMAGE_SUFFIXES, key=len, reverse=True))

_NOT_DICOM_FOLDERS = (".zarr", ".n5", ".ome.zarr")


def has_dicom_preamble(path: str | Path) -> bool:
    """True when the file has the 128-byte preamble and "DICM" magic of a DICOM Part 10 file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def format_from_name(path: str | Path) -> str | None:
    """``"nifti"``, ``"dicom"``, ``"tiff"`` or ``"png"`` from a file name's suffix, or None."""
    name = Path(path).name.lower()
    for fmt, suffixes in (("nifti", NIFTI_SUFFIXES), ("dicom", DICOM_SUFFIXES), ("tiff", TIFF_SUFFIXES), ("png", IMAGE_SUFFIXES)):
        if name.endswith(suffixes):
            return fmt
    return None


def scan_stem(path: str | Path) -> str:
    """A scan file's name without its scan suffix (``case1.nii.gz`` -> ``case1``)."""
    name = Path(path).name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_dicom_folder(path: str | Path, *, max_depth: int = 1, max_files: int = 500) -> bool:
    """Whether ``path`` is a folder holding DICOM files: a quick, bounded look.

    A file counts when its suffix is a DICOM one or it has the ``DICM`` preamble (DICOM files
    often have no extension). Only the first ``max_files`` files (sorted, hidden ones
    skipped) down to ``max_depth`` folder levels are looked at; ``max_depth=1`` means the
    folder's own files only, so a folder *of* series folders is not itself a series.
    """
    path = os.fspath(path)
    if not os.path.isdir(path) or path.rstrip("/\\").lower().endswith(_NOT_DICOM_FOLDERS):
        return False
    root_depth = path.rstrip(os.sep).count(os.sep)
    seen = 0
    for folder, subdirs, files in os.walk(path):
        if folder.rstrip(os.sep).count(os.sep) - root_depth + 1 >= max_depth:
            subdirs[:] = []
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if name.lower().endswith(DICOM_SUFFIXES) or has_dicom_preamble(os.path.join(folder, name)):
                return True
            seen += 1
            if seen >= max_files:
                return False
    return False


def is_scan_path(path: str | Path, *, max_depth: int = 1) -> bool:
    """Whether ``path`` names something ``load_scan`` reads: a file with a scan suffix or a DICOM folder."""
    if os.path.isdir(path):
        return is_dicom_folder(path, max_depth=max_depth)
    return Path(path).name.lower().endswith(SCAN_SUFFIXES)
