"""Scan I/O: NIfTI, DICOM (file, multi-frame, series folder), (OME-)TIFF, PNG/JPEG -> ``Scan``.

This layer knows nothing of torch. ``load_scan`` and ``save_scan`` pick the format from
the path; the format modules do the work.
"""

from medidiff.io.scan import Scan, affine_from_spacing
from medidiff.io.dispatch import load_scan, save_scan, detect_format

__all__ = ["Scan", "affine_from_spacing", "load_scan", "save_scan", "detect_format"]
