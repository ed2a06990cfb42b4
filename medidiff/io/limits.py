"""How big a scan may be: declared sizes are checked before any voxel is read.

A file's header declares its shape and data type; a hostile or broken header can declare
far more than the file holds (a 400-byte NIfTI declaring 30000^3 voxels) or than memory
can take (a small gzip of zeros that inflates to many GiB). Every reader calls
``check_declared_size`` with the declared shape and type before reading, and refuses a
scan whose values would need more memory than the limit:

- ``MEDIDIFF_MAX_SCAN_BYTES`` (an environment variable: bytes, or with a K/M/G/T suffix,
  e.g. ``16G``) sets the limit;
- otherwise it is half of the memory available now (``MemAvailable`` in ``/proc/meminfo``),
  or 8 GiB where that cannot be read.

The size counted is what reading costs at its peak: the declared values in their stored
type (what the file library allocates) plus the float32, (z, y, x)-ordered copy a ``Scan``
holds. A 1024^3 float32 volume therefore needs 8 GiB, as measured (issue 17: 8.5 GB RSS).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medidiff.errors import InvalidScanError, MedidiffError

ENV_VAR = "MEDIDIFF_MAX_SCAN_BYTES"
FALLBACK_LIMIT = 8 * 1024**3
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def available_memory() -> int | None:
    """The host memory available now (``MemAvailable`` of /proc/meminfo, bytes), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def max_scan_bytes() -> int:
    """The largest scan (in bytes of memory needed to read it) that readers accept now."""
    text = os.environ.get(ENV_VAR, "").strip()
    if text:
        match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]?)(?:i?B)?", text, flags=re.IGNORECASE)
        value = float(match.group(1)) * _UNITS[match.group(2).upper()] if match else -1.0
        if not math.isfinite(value) or value <= 0:
            raise MedidiffError(f"{ENV_VAR}={text!r}: not a size; give bytes, or a number with K, M, G or T (e.g. 16G)")
        return int(value)
    available = available_memory()
    return available // 2 if available else FALLBACK_LIMIT


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps the number >= 1 (``4 GiB``, ``12.5 MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} PiB"


def needed_bytes(shape: Sequence[int], dtype) -> int:
    """Memory needed to read values of ``shape`` stored as ``dtype`` into a float32 ``Scan``."""
    voxels = math.prod(int(s) for s in shape)
    return voxels * (np.dtype(dtype).itemsize + 4)


def check_declared_size(path: str | Path | None, shape: Sequence[int], dtype, what: str = "scan") -> int:
    """Refuse (``InvalidScanError``, one line) a ``shape`` x ``dtype`` that needs more memory than the limit.

    Returns the bytes needed. Called before any voxel is read.
    """
    needed = needed_bytes(shape, dtype)
    limit = max_scan_bytes()
    if needed > limit:
        dims = " x ".join(str(int(s)) for s in shape)
        source = f"set by {ENV_VAR}" if os.environ.get(ENV_VAR, "").strip() else \
            f"half the available memory; set {ENV_VAR} to change it"
        raise InvalidScanError(
            path, f"{what} declares {dims} values of {np.dtype(dtype).name}, which need {format_bytes(needed)} "
            f"to read, more than the limit of {format_bytes(limit)} ({source})",
        )
    return needed


def check_file_holds(path: str | Path, offset: int, shape: Sequence[int], dtype, what: str = "scan") -> None:
    """Refuse an uncompressed file shorter than ``offset`` + the bytes its header declares (truncated)."""
    declared = int(offset) + math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    size = Path(path).stat().st_size
    if size < declared:
        dims = " x ".join(str(int(s)) for s in shape)
        raise InvalidScanError(
            path, f"is truncated: its {what} header declares {dims} values of {np.dtype(dtype).name} "
            f"({format_bytes(declared)} with the header) but the file holds {format_bytes(size)}",
        )


def check_gzip_holds(path: str | Path, offset: int, shape: Sequence[int], dtype, what: str = "scan") -> None:
    """Refuse a gzip file that inflates to less than ``offset`` + the bytes its header declares.

    Readers allocate the declared size before inflating, so a small gzip declaring a huge
    volume would cost that memory before failing. The gzip trailer's ISIZE (the inflated
    size modulo 2**32) settles the usual case for free; only when it disagrees is the
    stream inflated once, in 1 MiB pieces that are counted and dropped (bounded memory).
    """
    declared = int(offset) + math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    try:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            isize = int.from_bytes(fh.read(4), "little")
    except OSError:
        return  # too short for a trailer: the reader reports the broken file
    if isize == declared % 2**32:
        return
    inflated = _inflated_size(path, declared)
    if inflated < declared:
        dims = " x ".join(str(int(s)) for s in shape)
        raise InvalidScanError(
            path, f"is truncated: its {what} header declares {dims} values of {np.dtype(dtype).name} "
            f"({format_bytes(declared)} with the header) but the compressed data inflates to {format_bytes(inflated)}",
        )


def _inflated_size(path: str | Path, stop: int) -> int:
    """Bytes a gzip file inflates to (all members), counted in 1 MiB pieces; stops counting at ``stop``."""
    import zlib

    inflated = 0
    inflater = zlib.decompressobj(wbits=31)
    try:
        with open(path, "rb") as fh:
            pending = fh.read(1 << 20)
            while pending and inflated < stop:
                out = inflater.decompress(pending, 1 << 20)  # at most 1 MiB out per call: bounded memory
                inflated += len(out)
                if inflater.eof:  # end of one member: another may follow
                    pending = inflater.unused_data or fh.read(1 << 20)
                    inflater = zlib.decompressobj(wbits=31)
                else:
                    pending = inflater.unconsumed_tail or fh.read(1 << 20)
    except (OSError, zlib.error):
        pass  # a corrupt stream: what inflated so far is what it holds
    return inflated
