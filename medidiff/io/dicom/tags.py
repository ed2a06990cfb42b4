"""DICOM constants shared by reading and writing: kept tags, storage classes, LPS <-> RAS, tag parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CODEC_HINT = 'install the decoders with: pip install "medidiff[dicom-codecs]"'

# tags kept in meta["dicom"] (strings) so a derived series can be written back into its study
PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge")
STUDY_TAGS = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "StudyDescription",
    "AccessionNumber", "ReferringPhysicianName",
)
SERIES_TAGS = (
    "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "FrameOfReferenceUID",
    "BodyPartExamined", "PatientPosition", "Manufacturer", "SOPClassUID",
)
KEPT_TAGS = PATIENT_TAGS + STUDY_TAGS + SERIES_TAGS

# DICOM LPS <-> nibabel RAS: negate the first two world axes
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

MODALITIES = {
    "CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT", "SC", "RTDOSE", "SM",
    "OCT", "OP", "XC", "IO", "PX", "ES", "GM", "SEG",
}


def dcmread(path: Path, *, header_only: bool, force: bool = False):
    """``pydicom.dcmread`` of ``path`` (pixels skipped when ``header_only``)."""
    import pydicom

    return pydicom.dcmread(str(path), stop_before_pixels=header_only, force=force)


def floats(value: Any) -> list[float] | None:
    """A tag value (number, string, MultiValue) as a list of floats; None when absent or not numeric."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def series_uid(ds) -> str:
    """The SeriesInstanceUID of a dataset (``"unknown"`` when it has none)."""
    return str(ds.get("SeriesInstanceUID", "") or "unknown")
