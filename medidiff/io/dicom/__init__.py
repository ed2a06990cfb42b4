"""DICOM <-> ``Scan``: single files, multi-frame files and series folders, geometry kept.

Reading
    Slices are ordered by their ImagePositionPatient projected on the slice normal
    (row x column direction cosines), never by file name or InstanceNumber. The affine
    comes from ImageOrientationPatient, ImagePositionPatient and PixelSpacing, converted
    from DICOM's LPS to RAS; it maps ``(x=column, y=row, z=slice)`` indices to millimetres.
    Values are rescaled (RescaleSlope/Intercept, the Modality LUT, DoseGridScaling).

Writing
    One file per slice in a folder, Explicit VR Little Endian, int16 (or uint16) values
    with a RescaleSlope/Intercept that covers the value range at full precision.

``scan.meta["dicom"]`` holds the patient/study tags (strings) needed to write a derived
series back into the same study; ``scan.meta["synthetic"] = True`` writes a fresh,
clearly marked synthetic patient and study instead.

One module per job: ``series`` (finding and choosing series in folders), ``frames``
(per-image header records), ``geometry`` (slice order, affine and its inverse),
``pixels`` (decoding and rescale), ``reader`` and ``writer``.
"""

from medidiff.io.dicom.geometry import slice_geometry
from medidiff.io.dicom.reader import read_dicom
from medidiff.io.dicom.series import SeriesInfo, list_series
from medidiff.io.dicom.tags import CODEC_HINT, KEPT_TAGS, PATIENT_TAGS, SERIES_TAGS, STUDY_TAGS
from medidiff.io.dicom.writer import choose_rescale, write_dicom_series
from medidiff.io.formats import DICOM_SUFFIXES, has_dicom_preamble

__all__ = [
    "CODEC_HINT", "DICOM_SUFFIXES", "KEPT_TAGS", "PATIENT_TAGS", "SERIES_TAGS", "STUDY_TAGS",
    "SeriesInfo", "choose_rescale", "has_dicom_preamble", "list_series", "read_dicom",
    "slice_geometry", "write_dicom_series",
]
