"""Pixel decoding and rescale: stored values of each frame -> float32 physical values.

Values are rescaled with RescaleSlope/Intercept (per frame in enhanced multi-frame files),
the Modality LUT where one is given, and DoseGridScaling for RTDOSE. Colour images are
turned to gray (luma). Compressed pixel data without an installed decoder is refused with
the install hint before any decoding is tried.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from medidiff.errors import InvalidScanError, MissingCodecError, UnsupportedFormatError
from medidiff.io._util import one_line, rgb_to_gray
from medidiff.io.dicom.frames import Image
from medidiff.io.dicom.tags import CODEC_HINT, dcmread
from medidiff.io.formats import has_dicom_preamble
from medidiff.io.limits import check_declared_size


def check_decoder(ds, path: Path) -> None:
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


def stored_frames(ds, path: Path) -> np.ndarray:
    """Stored pixel values of every frame, shape (frames, rows, cols), colour turned to gray."""
    from pydicom.pixels import apply_color_lut

    check_decoder(ds, path)
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


def read_values(
    images: list[Image], slots: np.ndarray | None = None, n_slices: int | None = None,
) -> tuple[np.ndarray, object, int]:
    """The rescaled float32 values of ``images`` stacked as (slices, rows, cols), read one file at a time.

    ``slots[k]`` is the slice index of image ``k`` in a volume of ``n_slices`` (default: one
    slice per image, in order); slices no image fills are set to the smallest value read.
    Returns ``(volume, dataset of the first image's file, number of files read)``.
    """
    slots = np.arange(len(images)) if slots is None else np.asarray(slots)
    n_slices = len(images) if n_slices is None else int(n_slices)
    by_file: dict[Path, list[int]] = defaultdict(list)
    for k, im in enumerate(images):
        by_file[im.file].append(k)
    rows, cols = images[0].rows, images[0].cols
    check_declared_size(images[0].file, (n_slices, rows, cols), np.float32, what="DICOM series")
    volume = np.empty((n_slices, rows, cols), dtype=np.float32)
    first_ds = None
    for file, indices in by_file.items():
        try:
            ds = dcmread(file, header_only=False, force=not has_dicom_preamble(file))
        except Exception as exc:
            raise InvalidScanError(file, f"cannot be read; the file may be truncated or corrupt ({one_line(exc)})") from exc
        if first_ds is None or file == images[0].file:
            first_ds = ds
        frames = stored_frames(ds, file)
        use_lut = "ModalityLUTSequence" in ds and "PerFrameFunctionalGroupsSequence" not in ds
        for k in indices:
            im = images[k]
            frame = frames[im.frame or 0]
            if frame.shape != (rows, cols):
                raise InvalidScanError(file, f"frame shape {frame.shape} differs from Rows x Columns {rows}x{cols}")
            if use_lut:
                from pydicom.pixels import apply_modality_lut

                volume[slots[k]] = np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
            elif im.slope != 1.0 or im.intercept != 0.0:
                volume[slots[k]] = (frame.astype(np.float64) * im.slope + im.intercept).astype(np.float32)
            else:
                volume[slots[k]] = frame
    empty = np.setdiff1d(np.arange(n_slices), slots)
    if len(empty):
        volume[empty] = min(float(volume[s].min()) for s in slots)
    return volume, first_ds, len(by_file)
