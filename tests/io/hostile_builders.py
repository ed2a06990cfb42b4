"""Hostile and broken scan files, built on the fly (no shipped binaries), for the reliability tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel
import numpy as np


def nifti_header_only(path: Path, shape: tuple[int, ...], dtype=np.float32, payload: bytes = b"", affine=None) -> Path:
    """A NIfTI-1 file whose header declares ``shape`` x ``dtype`` but which holds only ``payload``.

    A ``.gz`` name writes it gzip-compressed (a small file that declares a huge volume).
    """
    header = nibabel.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    header.set_sform(np.eye(4) if affine is None else affine, code=1)
    header.set_qform(np.eye(4), code=1)
    blob = header.binaryblock + b"\x00" * 4 + payload
    if path.name.endswith(".gz"):
        blob = gzip.compress(blob, compresslevel=1)
    path.write_bytes(blob)
    return path


def tiff_header_only(path: Path, width: int, height: int, pages: int = 1, bits: int = 16, payload: int = 64) -> Path:
    """A little-endian TIFF with ``pages`` uncompressed gray pages declaring ``height`` x ``width`` pixels each.

    Each page's one strip points at the same ``payload`` bytes, so the file stays tiny.
    """
    entries_per_ifd = 9
    ifd_size = 2 + entries_per_ifd * 12 + 4
    data_offset = 8 + pages * ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for p in range(pages):
        next_ifd = 8 + (p + 1) * ifd_size if p + 1 < pages else 0
        entries = [
            (256, 4, 1, width),          # ImageWidth (LONG)
            (257, 4, 1, height),         # ImageLength
            (258, 3, 1, bits),           # BitsPerSample
            (259, 3, 1, 1),              # Compression: none
            (262, 3, 1, 1),              # Photometric: min-is-black
            (273, 4, 1, data_offset),    # StripOffsets
            (277, 3, 1, 1),              # SamplesPerPixel
            (278, 4, 1, height),         # RowsPerStrip
            (279, 4, 1, min(width * height * bits // 8, 2**32 - 1)),  # StripByteCounts (a lie)
        ]
        out += struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            packed = struct.pack("<HHI", tag, kind, count)
            packed += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
            out += packed
        out += struct.pack("<I", next_ifd)
    out += b"\x00" * payload
    path.write_bytes(bytes(out))
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares ``width`` x ``height`` 8-bit gray pixels, with one empty IDAT."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def dicom_header_only(path: Path, rows: int, cols: int, frames: int = 1, pixel_bytes: int = 64) -> Path:
    """A multi-frame CT DICOM file declaring ``frames`` x ``rows`` x ``cols`` 16-bit pixels but holding ``pixel_bytes``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SpacingBetweenSlices = [1, 1], 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.PixelData = b"\x00" * pixel_bytes
    ds.save_as(path, enforce_file_format=True)
    return path
