"""Small helpers shared by the format modules (no torch, no format libraries)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

# ITU-R BT.601 luma weights, the usual RGB -> gray conversion
_LUMA = np.array([0.299, 0.587, 0.114])


def warn(path: str | Path, message: str, stacklevel: int = 3) -> None:
    """A ``UserWarning`` whose text starts with the path, like every medidiff error."""
    warnings.warn(f"{path}: {message}", UserWarning, stacklevel=stacklevel)


def one_line(exc: BaseException) -> str:
    """An exception as one short line: ``Type: message`` with newlines folded."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def rgb_to_gray(arr: np.ndarray, path: str | Path, what: str = "colour image") -> np.ndarray:
    """Luma of an (..., 3|4) array (alpha dropped), with a warning that colour was discarded."""
    channels = arr.shape[-1]
    warn(path, f"{what} with {channels} channels converted to grayscale (luma 0.299 R + 0.587 G + 0.114 B"
         + (", alpha ignored)" if channels == 4 else ")"), stacklevel=4)
    return np.tensordot(arr[..., :3].astype(np.float64), _LUMA, axes=([-1], [0])).astype(np.float32)


def json_value(value: Any) -> Any:
    """A JSON-friendly version of a tag value (str, number, list) -- never bytes or objects."""
    if value is None:
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [json_value(v) for v in value]
    return str(value)
