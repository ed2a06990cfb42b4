"""One record per 2D image (a frame of a file): its position, orientation, pixel size and rescale.

Single-frame files give one record; enhanced multi-frame files give one per frame, with the
per-frame and shared functional groups consulted before the top-level tags; RTDOSE frames
are placed by GridFrameOffsetVector along the slice normal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medidiff.io.dicom.tags import floats


@dataclass
class Image:
    """A 2D image (one frame of one file) with the header values that place and scale it."""

    file: Path
    frame: int | None  # index into a multi-frame file's frames, None for single-frame files
    rows: int
    cols: int
    position: np.ndarray | None  # ImagePositionPatient (LPS, mm)
    orientation: np.ndarray | None  # ImageOrientationPatient (6 direction cosines)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns)
    thickness: float | None
    slope: float = 1.0
    intercept: float = 0.0
    order_key: tuple = field(default_factory=tuple)  # to order several images at one position


def _first_item(ds, sequence: str):
    seq = ds.get(sequence) if ds is not None else None
    if seq is None or len(seq) == 0:
        return None
    return seq[0]


def _fg_value(groups: list, sequence: str, keyword: str):
    """The first value of ``keyword`` inside ``sequence`` of the given functional group items."""
    for group in groups:
        item = _first_item(group, sequence)
        if item is not None and keyword in item:
            value = item.get(keyword)
            if value is not None and value != "":
                return value
    return None


def images_of(ds, path: Path) -> list[Image]:
    """One ``Image`` per frame of ``ds`` (header only), with its geometry and rescale."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    multi = "NumberOfFrames" in ds and ds.get("NumberOfFrames") not in (None, "")
    shared = [_first_item(ds, "SharedFunctionalGroupsSequence")] if "SharedFunctionalGroupsSequence" in ds else []
    shared = [g for g in shared if g is not None]
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []) or [])

    top_ipp = floats(ds.get("ImagePositionPatient"))
    top_iop = floats(ds.get("ImageOrientationPatient"))
    top_ps = floats(ds.get("PixelSpacing")) or floats(ds.get("ImagerPixelSpacing"))
    top_thick = floats(ds.get("SliceThickness"))
    top_step = floats(ds.get("SpacingBetweenSlices"))
    offsets = floats(ds.get("GridFrameOffsetVector"))
    top_slope = floats(ds.get("RescaleSlope"))
    top_inter = floats(ds.get("RescaleIntercept"))
    dose_scale = floats(ds.get("DoseGridScaling")) if str(ds.get("Modality", "")) == "RTDOSE" else None
    instance = int(floats(ds.get("InstanceNumber"))[0]) if floats(ds.get("InstanceNumber")) else 0
    base_key = tuple(
        (floats(ds.get(k)) or [0.0])[0]
        for k in ("TemporalPositionIdentifier", "AcquisitionNumber", "EchoNumbers", "TriggerTime")
    )

    images = []
    for i in range(n_frames):
        groups = ([per_frame[i]] if i < len(per_frame) else []) + shared
        ipp = floats(_fg_value(groups, "PlanePositionSequence", "ImagePositionPatient"))
        iop = floats(_fg_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient")) or top_iop
        ps = floats(_fg_value(groups, "PixelMeasuresSequence", "PixelSpacing")) or top_ps
        thick = floats(_fg_value(groups, "PixelMeasuresSequence", "SliceThickness")) or top_thick
        step = floats(_fg_value(groups, "PixelMeasuresSequence", "SpacingBetweenSlices")) or top_step
        slope = floats(_fg_value(groups, "PixelValueTransformationSequence", "RescaleSlope")) or top_slope
        inter = floats(_fg_value(groups, "PixelValueTransformationSequence", "RescaleIntercept")) or top_inter
        if ipp is None and top_ipp is not None and len(top_ipp) == 3:
            ipp = list(top_ipp)
            if n_frames > 1 and iop is not None and len(iop) == 6:
                normal = np.cross(iop[:3], iop[3:])
                if offsets is not None and len(offsets) == n_frames:
                    # RTDOSE: offsets along the normal, relative to the first frame's position
                    shift = offsets[i] - offsets[0]
                else:
                    shift = i * ((step or thick or [1.0])[0])
                ipp = list(np.asarray(top_ipp) + shift * normal)
        frame_slope = (slope or [1.0])[0] * ((dose_scale or [1.0])[0])
        images.append(
            Image(
                file=path,
                frame=i if multi else None,
                rows=rows,
                cols=cols,
                position=np.asarray(ipp, dtype=np.float64) if ipp is not None and len(ipp) == 3 else None,
                orientation=np.asarray(iop, dtype=np.float64) if iop is not None and len(iop) == 6 else None,
                pixel_spacing=(float(ps[0]), float(ps[1])) if ps is not None and len(ps) >= 2 else None,
                thickness=float((step or thick)[0]) if (step or thick) else None,
                slope=float(frame_slope),
                intercept=float((inter or [0.0])[0]),
                order_key=base_key + (instance, i),
            )
        )
    return images
