"""Checks and small helpers shared by the noise models (array validation, seeds, dtypes)."""

from __future__ import annotations

import numpy as np

WINDOW = 5  # neighbourhood (in coefficients) for the weak-texture test
MIN_SIDE = 8  # smallest slice side the wavelet estimators accept
MIN_COEFFS = 64  # fewest selected coefficients an estimate is made from


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def out_dtype(image: np.ndarray) -> np.dtype:
    return np.dtype(np.float64) if image.dtype == np.float64 else np.dtype(np.float32)


def as_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{what} must be 2D (y, x) or 3D (z, y, x); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{what} must hold real numbers; got dtype {arr.dtype}")
    if arr.shape[-1] < MIN_SIDE or arr.shape[-2] < MIN_SIDE:
        raise ValueError(f"{what} slices must be at least {MIN_SIDE}x{MIN_SIDE} pixels; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or Inf values")
    return arr


def slices_of(arr: np.ndarray) -> list[np.ndarray]:
    return [arr] if arr.ndim == 2 else [arr[i] for i in range(arr.shape[0])]
