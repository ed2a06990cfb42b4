"""Series discovery: which files of a folder are DICOM images, grouped by series, and picking one."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from medidiff.errors import InvalidScanError, SeriesSelectionError, UnsupportedFormatError
from medidiff.io._util import one_line, warn
from medidiff.io.dicom.tags import dcmread, series_uid
from medidiff.io.formats import DICOM_SUFFIXES, has_dicom_preamble


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
        """One line: number, description, modality, image count and UID."""
        desc = f" {self.description!r}" if self.description else ""
        return f"series {self.number or '?'}{desc} ({self.modality or '?'}, {self.images} images), uid {self.uid}"


def scan_folder(folder: Path) -> tuple[dict[str, list], int]:
    """Headers of every DICOM image under ``folder``, grouped by SeriesInstanceUID.

    Returns ``({uid: [(file, dataset), ...]}, number of files looked at)``.
    """
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
            ds = dcmread(file, header_only=True, force=not preamble)
        except Exception as exc:  # a file that claims to be DICOM but cannot be parsed
            if preamble and not isinstance(exc, InvalidDicomError):
                raise InvalidScanError(file, f"is a DICOM file that cannot be read ({one_line(exc)}); remove or replace it") from exc
            warn(file, f"has a DICOM name but is not a DICOM file ({one_line(exc)}); skipped")
            continue
        if "SOPClassUID" not in ds and "Rows" not in ds:
            warn(file, "has a DICOM name but no DICOM header (not a DICOM file); skipped")
            continue  # forced read of a non-DICOM file
        if "Rows" not in ds or "Columns" not in ds:
            continue  # no image: RTSTRUCT, RTPLAN, SR, DICOMDIR, ...
        series[series_uid(ds)].append((file, ds))
    return series, looked_at


def series_info(uid: str, members: list) -> SeriesInfo:
    """The ``SeriesInfo`` of one group of ``(file, dataset)`` members."""
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
        found, _ = scan_folder(path)
        return [series_info(uid, members) for uid, members in found.items()]
    ds = read_single_header(path)
    return [series_info(series_uid(ds), [(path, ds)])]


def choose_series(folder: Path, found: dict[str, list], series: str | int | None) -> tuple[str, list]:
    """The (uid, members) of the series ``series`` names (UID or SeriesNumber); the only one if None."""
    infos = {uid: series_info(uid, members) for uid, members in found.items()}
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


def read_single_header(path: Path):
    """The header of one DICOM image file; one-line errors for non-DICOM, corrupt or image-less files."""
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(path, header_only=True, force=False)
    except InvalidDicomError:
        # no preamble: try a forced read, but only accept it if it looks like an image
        try:
            ds = dcmread(path, header_only=True, force=True)
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
