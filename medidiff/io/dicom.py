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
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.version import __version__
from medidiff.errors import InvalidScanError, MissingCodecError, SeriesSelectionError, UnsupportedFormatError
from medidiff.io._util import json_value, one_line, rgb_to_gray, warn
from medidiff.io.scan import Scan

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
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
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

_MODALITIES = {
    "CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT", "SC", "RTDOSE", "SM",
    "OCT", "OP", "XC", "IO", "PX", "ES", "GM", "SEG",
}


# ---------------------------------------------------------------------------------------
# reading: one record per 2D image (a frame of a file)
# ---------------------------------------------------------------------------------------


@dataclass
class _Image:
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


@dataclass
class SeriesInfo:
    """One series found in a DICOM folder (what ``medidiff info`` lists)."""

    uid: str
    number: str
    description: str
    modality: str
    images: int
    files: list[Path] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        desc = f" {self.description!r}" if self.description else ""
        return f"series {self.number or '?'}{desc} ({self.modality or '?'}, {self.images} images), uid {self.uid}"


def _dcmread(path: Path, *, header_only: bool, force: bool = False):
    import pydicom

    return pydicom.dcmread(str(path), stop_before_pixels=header_only, force=force)


def has_dicom_preamble(path: str | Path) -> bool:
    """True when the file has the 128-byte preamble and "DICM" magic of a DICOM Part 10 file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _floats(value: Any) -> list[float] | None:
    """A tag value (number, string, MultiValue) as a list of floats; None when absent or not numeric."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


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


def _images_of(ds, path: Path) -> list[_Image]:
    """One ``_Image`` per frame of ``ds`` (header only), with its geometry and rescale."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    multi = "NumberOfFrames" in ds and ds.get("NumberOfFrames") not in (None, "")
    shared = [_first_item(ds, "SharedFunctionalGroupsSequence")] if "SharedFunctionalGroupsSequence" in ds else []
    shared = [g for g in shared if g is not None]
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []) or [])

    top_ipp = _floats(ds.get("ImagePositionPatient"))
    top_iop = _floats(ds.get("ImageOrientationPatient"))
    top_ps = _floats(ds.get("PixelSpacing")) or _floats(ds.get("ImagerPixelSpacing"))
    top_thick = _floats(ds.get("SliceThickness"))
    top_step = _floats(ds.get("SpacingBetweenSlices"))
    offsets = _floats(ds.get("GridFrameOffsetVector"))
    top_slope = _floats(ds.get("RescaleSlope"))
    top_inter = _floats(ds.get("RescaleIntercept"))
    dose_scale = _floats(ds.get("DoseGridScaling")) if str(ds.get("Modality", "")) == "RTDOSE" else None
    instance = int(_floats(ds.get("InstanceNumber"))[0]) if _floats(ds.get("InstanceNumber")) else 0
    base_key = tuple(
        (_floats(ds.get(k)) or [0.0])[0]
        for k in ("TemporalPositionIdentifier", "AcquisitionNumber", "EchoNumbers", "TriggerTime")
    )

    images = []
    for i in range(n_frames):
        groups = ([per_frame[i]] if i < len(per_frame) else []) + shared
        ipp = _floats(_fg_value(groups, "PlanePositionSequence", "ImagePositionPatient"))
        iop = _floats(_fg_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient")) or top_iop
        ps = _floats(_fg_value(groups, "PixelMeasuresSequence", "PixelSpacing")) or top_ps
        thick = _floats(_fg_value(groups, "PixelMeasuresSequence", "SliceThickness")) or top_thick
        step = _floats(_fg_value(groups, "PixelMeasuresSequence", "SpacingBetweenSlices")) or top_step
        slope = _floats(_fg_value(groups, "PixelValueTransformationSequence", "RescaleSlope")) or top_slope
        inter = _floats(_fg_value(groups, "PixelValueTransformationSequence", "RescaleIntercept")) or top_inter
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
            _Image(
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


def _series_uid(ds) -> str:
    return str(ds.get("SeriesInstanceUID", "") or "unknown")


def _scan_folder(folder: Path) -> tuple[dict[str, list], int]:
    """Headers of every DICOM image under ``folder``, grouped by SeriesInstanceUID."""
    from pydicom.errors import InvalidDicomError

    series: dict[str, list] = defaultdict(list)
    looked_at = 0
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in file.relative_to(folder).parts):
            continue  # hidden files and folders (including medidiff's own temporary outputs)
        looked_at += 1
        if file.name.upper() == "DICOMDIR":
            continue
        preamble = has_dicom_preamble(file)
        if not preamble and file.suffix.lower() not in DICOM_SUFFIXES:
            continue  # not DICOM (README, .json, images, ...)
        try:
            ds = _dcmread(file, header_only=True, force=not preamble)
        except InvalidDicomError:
            continue
        except Exception as exc:  # a file that claims to be DICOM but cannot be parsed
            if preamble:
                raise InvalidScanError(file, f"is a DICOM file that cannot be read ({one_line(exc)}); remove or replace it") from exc
            continue
        if "SOPClassUID" not in ds and "Rows" not in ds:
            continue  # forced read of a non-DICOM file
        if "Rows" not in ds or "Columns" not in ds:
            continue  # no image: RTSTRUCT, RTPLAN, SR, DICOMDIR, ...
        series[_series_uid(ds)].append((file, ds))
    return series, looked_at


def _series_info(uid: str, members: list) -> SeriesInfo:
    ds = members[0][1]
    n_images = sum(int(d.get("NumberOfFrames", 1) or 1) for _, d in members)
    return SeriesInfo(
        uid=uid,
        number=str(ds.get("SeriesNumber", "") or ""),
        description=str(ds.get("SeriesDescription", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        images=n_images,
        files=[f for f, _ in members],
    )


def list_series(path: str | Path) -> list[SeriesInfo]:
    """The image series in a DICOM folder (or the one series of a DICOM file)."""
    path = Path(path)
    if path.is_dir():
        found, _ = _scan_folder(path)
        return [_series_info(uid, members) for uid, members in found.items()]
    ds = _read_single_header(path)
    return [_series_info(_series_uid(ds), [(path, ds)])]


def _choose_series(folder: Path, found: dict[str, list], series: str | int | None) -> tuple[str, list]:
    infos = {uid: _series_info(uid, members) for uid, members in found.items()}
    listing = "; ".join(info.describe() for info in infos.values())
    if series is None:
        if len(found) == 1:
            uid = next(iter(found))
            return uid, found[uid]
        raise SeriesSelectionError(
            folder,
            f"holds {len(found)} series; pick one with series=UID or series=NUMBER "
            f"(--series on the command line): {listing}",
        )
    wanted = str(series).strip()
    if wanted in found:
        return wanted, found[wanted]
    by_number = [uid for uid, info in infos.items() if info.number.strip() == wanted]
    if len(by_number) == 1:
        return by_number[0], found[by_number[0]]
    if len(by_number) > 1:
        raise SeriesSelectionError(folder, f"several series have SeriesNumber {wanted}; pick one by its SeriesInstanceUID: {listing}")
    raise SeriesSelectionError(folder, f"has no series {wanted!r} (neither a SeriesInstanceUID nor a SeriesNumber here): {listing}")


def _read_single_header(path: Path):
    from pydicom.errors import InvalidDicomError

    try:
        ds = _dcmread(path, header_only=True, force=False)
    except InvalidDicomError:
        # no preamble: try a forced read, but only accept it if it looks like an image
        try:
            ds = _dcmread(path, header_only=True, force=True)
        except Exception as exc:
            raise UnsupportedFormatError(path, f"is not a DICOM file ({one_line(exc)})") from exc
        if "SOPClassUID" not in ds and "Rows" not in ds:
            raise UnsupportedFormatError(path, "is not a DICOM file (no DICOM header found)")
    except Exception as exc:
        raise InvalidScanError(path, f"DICOM header cannot be read, the file may be truncated or corrupt ({one_line(exc)})") from exc
    if "Rows" not in ds or "Columns" not in ds:
        kind = str(ds.get("Modality", "")) or "non-image"
        raise InvalidScanError(path, f"holds no image (a {kind} DICOM object without pixel data)")
    return ds


def _check_decoder(ds, path: Path) -> None:
    """Fail early with the install hint when compressed pixel data has no usable decoder."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None:
        return
    uid = UID(str(tsyntax))
    if not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise UnsupportedFormatError(path, f"pixel data uses transfer syntax {uid.name} ({uid}), which medidiff cannot decode") from exc
    if not decoder.is_available:
        raise MissingCodecError(path, f"pixel data is compressed ({uid.name}, {uid}) and no decoder for it is installed; {CODEC_HINT}")


def _pixels(ds, path: Path) -> np.ndarray:
    """Stored pixel values of every frame, shape (frames, rows, cols), colour turned to gray."""
    from pydicom.pixels import apply_color_lut

    _check_decoder(ds, path)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        text = str(exc)
        if "missing dependencies" in text or "plugin" in text.lower() and "available" in text.lower():
            raise MissingCodecError(path, f"pixel data cannot be decompressed ({one_line(exc)}); {CODEC_HINT}") from exc
        raise InvalidScanError(path, f"pixel data cannot be read; the file may be truncated or corrupt ({one_line(exc)})") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        samples = 3
    if samples > 1:
        arr = rgb_to_gray(np.asarray(arr), path, what=f"DICOM {photometric} image")
    if n_frames == 1 and arr.ndim == 2:
        arr = arr[None]
    return np.asarray(arr)


def _geometry_groups(images: list[_Image], path: Path) -> list[_Image]:
    """Keep the largest set of images sharing size and orientation (drop localizers), with a warning."""
    def key(im: _Image):
        iop = None if im.orientation is None else tuple(np.round(im.orientation, 3))
        return (im.rows, im.cols, iop)

    counts = Counter(key(im) for im in images)
    if len(counts) == 1:
        return images
    best, n_best = counts.most_common(1)[0]
    kept = [im for im in images if key(im) == best]
    warn(path, f"series mixes image sizes or orientations; kept the {n_best} images of size "
         f"{best[0]}x{best[1]} with orientation {best[2]}, skipped {len(images) - n_best} (localizers?)")
    return kept


def _describe_volumes(path: Path, n_per: int, n_pos: int) -> str:
    return (f"has {n_per} images at each of {n_pos} slice positions (time points, echoes or repeats); "
            f"pick one with volume=N (--volume N on the command line), N from 0 to {n_per - 1}")


def _order_images(images: list[_Image], path: Path, volume: int | None) -> tuple[list[_Image], np.ndarray | None]:
    """Sort by position along the slice normal; returns the chosen images and their positions along it."""
    have_geometry = all(im.position is not None and im.orientation is not None for im in images)
    if not have_geometry:
        ordered = sorted(images, key=lambda im: (im.order_key, str(im.file)))  # no positions: numbering
        if volume not in (None, 0):
            raise InvalidScanError(path, f"volume={volume} does not apply: the images have no slice positions")
        return ordered, None
    iop = images[0].orientation
    normal = np.cross(iop[:3], iop[3:])
    dist = np.array([float(np.dot(im.position, normal)) for im in images])
    order = np.lexsort((np.arange(len(images)), dist))
    images = [images[i] for i in order]
    dist = dist[order]
    # group images that sit at the same position (several time points / echoes)
    tol = 1e-3
    groups: list[list[int]] = [[0]]
    for i in range(1, len(images)):
        if abs(dist[i] - dist[groups[-1][0]]) <= tol:
            groups[-1].append(i)
        else:
            groups.append([i])
    sizes = {len(g) for g in groups}
    if sizes == {1}:
        if volume not in (None, 0):
            raise InvalidScanError(path, f"volume={volume} does not apply: the series has one image per slice position")
        if _numbered_backwards(images):
            images, dist = images[::-1], dist[::-1]
        return images, dist
    if len(sizes) > 1:
        raise InvalidScanError(
            path, f"has repeated slice positions with unequal counts ({len(images)} images at {len(groups)} positions); "
            "the series cannot be stacked into one volume",
        )
    n_per = sizes.pop()
    if volume is None:
        raise InvalidScanError(path, _describe_volumes(path, n_per, len(groups)))
    if not 0 <= volume < n_per:
        raise InvalidScanError(path, f"volume={volume} is out of range; " + _describe_volumes(path, n_per, len(groups)))
    chosen = []
    for g in groups:
        members = sorted(g, key=lambda i: images[i].order_key)
        chosen.append(members[volume])
    picked, picked_dist = [images[i] for i in chosen], dist[[g[0] for g in groups]]
    if _numbered_backwards(picked):
        picked, picked_dist = picked[::-1], picked_dist[::-1]
    return picked, picked_dist


def _numbered_backwards(images: list[_Image]) -> bool:
    """True when the images, already sorted by position, are numbered strictly backwards.

    The *order* of slices always comes from their positions; the numbering (InstanceNumber,
    then frame index) only picks which end is slice 0, so a series written from a volume
    whose slice axis runs against the normal reads back in its original direction.
    Shuffled or missing numbers keep the ascending-along-the-normal order.
    """
    if len(images) < 2:
        return False
    keys = [im.order_key[-2:] for im in images]  # (InstanceNumber, frame index)
    if len(set(keys)) != len(keys):
        return False
    return all(a > b for a, b in zip(keys, keys[1:]))


def _check_spacing(dist: np.ndarray, path: Path) -> tuple[float, np.ndarray | None]:
    """Median slice step; warns naming the positions around each gap or irregular step."""
    steps = np.diff(dist)
    step = float(np.median(steps))
    bad = np.nonzero(np.abs(steps - step) > max(0.01 * abs(step), 1e-3))[0]
    if len(bad):
        parts = []
        for i in bad[:6]:
            missing = int(round(steps[i] / step)) - 1 if step != 0 else 0
            extra = f", about {missing} slice(s) missing" if missing >= 1 else ""
            parts.append(f"between slice positions {dist[i]:.3f} and {dist[i + 1]:.3f} mm ({abs(steps[i]):.3f} mm apart{extra})")
        more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
        warn(path, f"inconsistent slice spacing (usual step {abs(step):.3f} mm): gap " + "; ".join(parts) + more
             + f"; the volume assumes a uniform {abs(step):.3f} mm step, so positions beyond a gap are off")
        return step, bad
    return step, None


def _affine(images: list[_Image], dist: np.ndarray | None, path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """RAS affine (x=column, y=row, z=slice) and spacing in array order (z, y, x)."""
    first = images[0]
    ps = first.pixel_spacing
    if ps is None or ps[0] <= 0 or ps[1] <= 0:
        if first.position is not None:
            warn(path, "no PixelSpacing; assuming 1 mm pixels")
        ps = (1.0, 1.0)
    if dist is None:  # no patient geometry (secondary capture, ...)
        z = first.thickness or 1.0
        what = f"{ps[1]:g} x {ps[0]:g} mm pixels from PixelSpacing" if first.pixel_spacing else "1 mm pixels"
        warn(path, f"has no patient geometry (ImagePositionPatient/ImageOrientationPatient); "
             f"using an axis-aligned affine with {what}")
        affine = np.diag([ps[1], ps[0], z, 1.0])
        return affine, (float(z), float(ps[0]), float(ps[1]))
    iop = first.orientation
    row_dir, col_dir = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(row_dir, col_dir)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]  # x index = column: moves along the row direction
    lps[:3, 1] = col_dir * ps[0]  # y index = row: moves along the column direction
    lps[:3, 3] = first.position
    n = len(images)
    if n >= 2:
        step, gaps = _check_spacing(dist, path)
        if gaps is None:
            step_vec = (images[-1].position - images[0].position) / (n - 1)
        else:
            diffs = np.diff(np.stack([im.position for im in images]), axis=0)
            best = int(np.argmin(np.abs(np.diff(dist) - step)))
            step_vec = diffs[best]
        lps[:3, 2] = step_vec
        z_spacing = abs(step)
    else:
        z_spacing = first.thickness or 1.0
        lps[:3, 2] = normal * z_spacing
    return _LPS_RAS @ lps, (float(z_spacing), float(ps[0]), float(ps[1]))


def _meta_of(ds, path: Path, n_images: int) -> dict[str, Any]:
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
        found, looked_at = _scan_folder(path)
        if not found:
            raise InvalidScanError(
                path, f"holds no DICOM images ({looked_at} files looked at); give a folder with one DICOM series or a scan file",
            )
        _, members = _choose_series(path, found, series)
        where = path
    else:
        ds = _read_single_header(path)
        if series is not None:
            wanted = str(series)
            if wanted not in (_series_uid(ds), str(ds.get("SeriesNumber", ""))):
                raise SeriesSelectionError(path, f"holds only {_series_info(_series_uid(ds), [(path, ds)]).describe()}, not {wanted!r}")
        members = [(path, ds)]
        where = path

    images: list[_Image] = []
    for file, ds in members:
        images.extend(_images_of(ds, file))
    images = _geometry_groups(images, where)
    images, dist = _order_images(images, where, volume)
    affine, spacing = _affine(images, dist, where)

    # read the pixels, one file at a time
    by_file: dict[Path, list[int]] = defaultdict(list)
    for k, im in enumerate(images):
        by_file[im.file].append(k)
    rows, cols = images[0].rows, images[0].cols
    volume_arr = np.empty((len(images), rows, cols), dtype=np.float32)
    first_ds = None
    for file, indices in by_file.items():
        try:
            ds = _dcmread(file, header_only=False, force=not has_dicom_preamble(file))
        except Exception as exc:
            raise InvalidScanError(file, f"cannot be read; the file may be truncated or corrupt ({one_line(exc)})") from exc
        if first_ds is None or file == images[0].file:
            first_ds = ds
        frames = _pixels(ds, file)
        use_lut = "ModalityLUTSequence" in ds and "PerFrameFunctionalGroupsSequence" not in ds
        for k in indices:
            im = images[k]
            frame = frames[im.frame or 0]
            if frame.shape != (rows, cols):
                raise InvalidScanError(file, f"frame shape {frame.shape} differs from Rows x Columns {rows}x{cols}")
            if use_lut:
                from pydicom.pixels import apply_modality_lut

                volume_arr[k] = np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
            elif im.slope != 1.0 or im.intercept != 0.0:
                volume_arr[k] = (frame.astype(np.float64) * im.slope + im.intercept).astype(np.float32)
            else:
                volume_arr[k] = frame
    meta = _meta_of(first_ds, where, len(images))
    if path.is_dir():
        meta["files"] = len(by_file)
    array = volume_arr[0] if len(images) == 1 else volume_arr
    if array.ndim == 2:
        spacing = spacing[1:]
    modality = str(first_ds.get("Modality", "") or "OT")
    return Scan(array=array, spacing=spacing, affine=affine, modality=modality, meta=meta)


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


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
    return code if code in _MODALITIES else "OT"


def _sop_class(modality: str) -> str:
    return {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}.get(modality, SECONDARY_CAPTURE_STORAGE)


def _source_tags(meta: dict[str, Any]) -> dict[str, str]:
    """DICOM tags from meta["dicom"] (or flat keys with DICOM keyword names)."""
    tags = {k: str(v) for k, v in meta.items() if k in KEPT_TAGS and v is not None}
    tags.update({k: str(v) for k, v in (meta.get("dicom") or {}).items() if v is not None})
    return tags


def slice_geometry(scan: Scan) -> dict[str, Any]:
    """IOP, per-slice IPP (LPS), PixelSpacing and slice spacing from the scan's RAS affine."""
    lps = _LPS_RAS @ scan.affine
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dc, dr = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    if dc == 0 or dr == 0:
        raise InvalidScanError(None, f"affine has a zero in-plane axis, cannot write DICOM geometry:\n{scan.affine}")
    row_dir, col_dir = col_step / dc, row_step / dr
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(slice_step) == 0:
        slice_step = normal * (float(scan.spacing[0]) if scan.ndim == 3 else 1.0)
    n = scan.shape[0] if scan.ndim == 3 else 1
    positions = [lps[:3, 3] + k * slice_step for k in range(n)]
    return {
        "iop": list(row_dir) + list(col_dir),
        "positions": positions,
        "pixel_spacing": (dr, dc),
        "slice_spacing": abs(float(np.dot(slice_step, normal))),
        "orthogonal": abs(float(np.dot(row_dir, col_dir))) < 1e-4,
    }


def write_dicom_series(scan: Scan, folder: Path, *, single_file: Path | None = None, label: str | Path | None = None) -> list[Path]:
    """Write ``scan`` into ``folder`` as one file per slice (or one file at ``single_file`` for 2D).

    ``label`` is the path named in warnings (the final output, not the temporary folder).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    volume = scan.as_volume()
    geometry = slice_geometry(scan)
    if not geometry["orthogonal"]:
        warn(label or folder, "the affine's row and column axes are not orthogonal; DICOM cannot store the shear exactly")
    meta = scan.meta
    synthetic = bool(meta.get("synthetic"))
    src = {} if synthetic else _source_tags(meta)
    modality = _modality_code(scan.modality)
    sop_class = _sop_class(modality)
    dtype, slope, intercept = choose_rescale(volume.array)
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    study_uid = src.get("StudyInstanceUID") or generate_uid()
    series_uid = generate_uid()
    frame_uid = src.get("FrameOfReferenceUID") or generate_uid()
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

    n = volume.shape[0]
    rows, cols = volume.shape[1], volume.shape[2]
    written = []
    for k in range(n):
        sop_uid = generate_uid()
        file_meta = FileMetaDataset()
        file_meta.MediaStorageSOPClassUID = sop_class
        file_meta.MediaStorageSOPInstanceUID = sop_uid
        file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        file_meta.ImplementationVersionName = f"MEDIDIFF_{__version__}"[:16]
        ds = pydicom.Dataset()
        ds.file_meta = file_meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
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
        ds.InstanceNumber = k + 1
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
        ds.ImagePositionPatient = [_ds_number(v) for v in geometry["positions"][k]]
        normal = np.cross(geometry["iop"][:3], geometry["iop"][3:])
        ds.SliceLocation = _ds_number(float(np.dot(geometry["positions"][k], normal)))
        ds.PixelSpacing = [_ds_number(v) for v in geometry["pixel_spacing"]]
        ds.SliceThickness = _ds_number(geometry["slice_spacing"] or 1.0)
        if n > 1:
            ds.SpacingBetweenSlices = _ds_number(geometry["slice_spacing"])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if dtype == np.int16 else 0
        ds.RescaleSlope = _ds_number(slope)
        ds.RescaleIntercept = _ds_number(intercept)
        ds.RescaleType = "HU" if modality == "CT" else "US"
        stored = _quantise(volume.array[k], dtype, slope, intercept)
        ds.PixelData = np.ascontiguousarray(stored).astype(dtype.newbyteorder("<")).tobytes()
        out = single_file if single_file is not None else folder / f"IM{k + 1:05d}.dcm"
        ds.save_as(str(out), enforce_file_format=True)
        written.append(out)
    return written

