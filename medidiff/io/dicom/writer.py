"""``write_dicom_series``: a ``Scan`` -> one DICOM file per slice, geometry and study kept.

One tag template is built per series (patient, study, series, orientation, pixel format,
rescale) and copied for each slice, which then only gets its own UID, number, position
and pixels. Files are Explicit VR Little Endian, int16 (or uint16) values with a
RescaleSlope/Intercept that covers the value range at full precision (``choose_rescale``).
"""

from __future__ import annotations

import copy
import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.io._util import warn
from medidiff.io.dicom.geometry import slice_geometry
from medidiff.io.dicom.tags import (
    CT_IMAGE_STORAGE, KEPT_TAGS, MODALITIES, MR_IMAGE_STORAGE, SECONDARY_CAPTURE_STORAGE,
)
from medidiff.io.scan import Scan
from medidiff.version import __version__


def _ds_number(value: float) -> str:
    """A DS string (at most 16 characters) for ``value``."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _ds_float(value: float) -> float:
    return float(_ds_number(value))


def choose_rescale(values: np.ndarray) -> tuple[np.dtype, float, float]:
    """Storage type and (slope, intercept) that cover ``values`` at the best integer precision.

    Integer-valued data whose range spans at most 65536 values is stored exactly with slope 1.
    Otherwise the range is spread over all 65536 int16 codes; slope and intercept are the
    values the DS strings hold, so readers reproduce them exactly.
    """
    lo, hi = float(np.min(values)), float(np.max(values))
    integral = bool(np.all(np.equal(np.mod(values, 1), 0)))
    if integral and lo >= -32768 and hi <= 32767:
        return np.dtype(np.int16), 1.0, 0.0
    if integral and lo >= 0 and hi <= 65535:
        return np.dtype(np.uint16), 1.0, 0.0
    if integral and hi - lo <= 65535:
        return np.dtype(np.int16), 1.0, float(lo + 32768)  # exact: integer offset only
    if hi == lo:
        return np.dtype(np.int16), 1.0, _ds_float(lo)
    # slope rounded *up* in its DS form so the range still fits; intercept puts lo at -32768
    slope = (hi - lo) / 65535.0
    slope_ds = _ds_float(slope * (1 + 1e-9))  # DS keeps ~11 digits; any rest is clipped away
    intercept_ds = _ds_float(lo + 32768.0 * slope_ds)
    return np.dtype(np.int16), slope_ds, intercept_ds


def _quantise(values: np.ndarray, dtype: np.dtype, slope: float, intercept: float) -> np.ndarray:
    info = np.iinfo(dtype)
    stored = np.rint((values.astype(np.float64) - intercept) / slope)
    return np.clip(stored, info.min, info.max).astype(dtype)


def _modality_code(modality: str) -> str:
    code = str(modality or "OT").upper()
    return code if code in MODALITIES else "OT"


def _sop_class(modality: str) -> str:
    return {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}.get(modality, SECONDARY_CAPTURE_STORAGE)


def _source_tags(meta: dict[str, Any]) -> dict[str, str]:
    """DICOM tags from meta["dicom"] (or flat keys with DICOM keyword names)."""
    tags = {k: str(v) for k, v in meta.items() if k in KEPT_TAGS and v is not None}
    tags.update({k: str(v) for k, v in (meta.get("dicom") or {}).items() if v is not None})
    return tags


def _series_template(scan: Scan, n: int, geometry: dict[str, Any], dtype: np.dtype, slope: float, intercept: float):
    """The dataset every slice of the series shares: patient, study, series, orientation, pixel format."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    meta = scan.meta
    synthetic = bool(meta.get("synthetic"))
    src = {} if synthetic else _source_tags(meta)
    modality = _modality_code(scan.modality)
    sop_class = _sop_class(modality)
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    series_uid = generate_uid()
    description = str(meta.get("description") or meta.get("SeriesDescription") or "")
    if synthetic:
        description = ("SYNTHETIC " + description).strip() if "SYNTHETIC" not in description.upper() else description
        patient_name, patient_id = "SYNTHETIC^medidiff", "SYNTHETIC-" + series_uid.split(".")[-1][-12:]
    else:
        description = description or f"medidiff {src.get('SeriesDescription', '')}".strip()
        patient_name = src.get("PatientName", "")
        patient_id = src.get("PatientID", "")
    try:
        series_number = int(float(meta.get("series_number", 0))) or (int(float(src.get("SeriesNumber", 0) or 0)) + 1000)
    except (TypeError, ValueError):
        series_number = 1000

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = sop_class
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    file_meta.ImplementationVersionName = f"MEDIDIFF_{__version__}"[:16]
    ds = pydicom.Dataset()
    ds.file_meta = file_meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.StudyInstanceUID = src.get("StudyInstanceUID") or generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = src.get("FrameOfReferenceUID") or generate_uid()
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = src.get("PatientBirthDate", "")
    ds.PatientSex = src.get("PatientSex", "")
    if "PatientAge" in src:
        ds.PatientAge = src["PatientAge"]
    ds.StudyDate = src.get("StudyDate", date)
    ds.StudyTime = src.get("StudyTime", time)
    ds.StudyID = src.get("StudyID", "")
    ds.AccessionNumber = src.get("AccessionNumber", "")
    ds.ReferringPhysicianName = src.get("ReferringPhysicianName", "")
    if src.get("StudyDescription"):
        ds.StudyDescription = src["StudyDescription"]
    elif synthetic:
        ds.StudyDescription = "SYNTHETIC data generated by medidiff"
    for keyword in ("BodyPartExamined", "PatientPosition"):
        if src.get(keyword):
            setattr(ds, keyword, src[keyword])
    if synthetic:
        ds.PatientIdentityRemoved = "YES"
        ds.BurnedInAnnotation = "NO"
    ds.SeriesDescription = description[:64]
    ds.SeriesNumber = series_number
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.Manufacturer = "medidiff"
    ds.SoftwareVersions = __version__
    ds.DerivationDescription = "synthetic, generated by medidiff" if synthetic else "derived by medidiff"
    if sop_class == SECONDARY_CAPTURE_STORAGE:
        ds.ConversionType = "WSD"
    if sop_class == MR_IMAGE_STORAGE:
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D" if n > 1 else "2D"
    if sop_class == CT_IMAGE_STORAGE:
        ds.KVP = ""
    ds.AcquisitionNumber = 1
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [_ds_number(v) for v in geometry["iop"]]
    ds.PixelSpacing = [_ds_number(v) for v in geometry["pixel_spacing"]]
    ds.SliceThickness = _ds_number(geometry["slice_spacing"] or 1.0)
    if n > 1:
        ds.SpacingBetweenSlices = _ds_number(geometry["slice_spacing"])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if dtype == np.int16 else 0
    ds.RescaleSlope = _ds_number(slope)
    ds.RescaleIntercept = _ds_number(intercept)
    ds.RescaleType = "HU" if modality == "CT" else "US"
    return ds


def write_dicom_series(scan: Scan, folder: Path, *, single_file: Path | None = None, label: str | Path | None = None) -> list[Path]:
    """Write ``scan`` into ``folder`` as one file per slice (or one file at ``single_file`` for 2D).

    ``label`` is the path named in warnings (the final output, not the temporary folder).
    """
    from pydicom.uid import generate_uid

    volume = scan.as_volume()
    geometry = slice_geometry(scan)
    if not geometry["orthogonal"]:
        warn(label or folder, "the affine's row and column axes are not orthogonal; DICOM cannot store the shear exactly")
    dtype, slope, intercept = choose_rescale(volume.array)
    n, rows, cols = volume.shape
    template = _series_template(scan, n, geometry, dtype, slope, intercept)
    template.Rows, template.Columns = rows, cols
    normal = np.cross(geometry["iop"][:3], geometry["iop"][3:])
    written = []
    for k in range(n):
        ds = copy.deepcopy(template)
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds_number(v) for v in geometry["positions"][k]]
        ds.SliceLocation = _ds_number(float(np.dot(geometry["positions"][k], normal)))
        stored = _quantise(volume.array[k], dtype, slope, intercept)
        ds.PixelData = np.ascontiguousarray(stored).astype(dtype.newbyteorder("<")).tobytes()
        out = single_file if single_file is not None else folder / f"IM{k + 1:05d}.dcm"
        ds.save_as(str(out), enforce_file_format=True)
        written.append(out)
    return written
