"""Intensity normalisation fitted on training data and stored with a model.

The diffusion network works on values around [-1, 1]. A ``Normaliser`` maps scan units
(HU, MR signal, photon counts) linearly to that range and back, so that every task
returns results in the input's own units. The map is linear and never clips, so noise
levels convert exactly (:meth:`Normaliser.scale_sigma`) and out-of-range tissue survives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

# (centre, width) in HU; the window's ends map to -1 and 1
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "wide": (0.0, 2000.0),
}


@dataclass(frozen=True)
class Normaliser:
    """Linear map sending ``low`` to -1 and ``high`` to +1 (``kind`` records how they were chosen)."""

    low: float
    high: float
    kind: str = "percentile"
    detail: str = ""

    def __post_init__(self) -> None:
        if not np.isfinite(self.low) or not np.isfinite(self.high) or self.high <= self.low:
            raise ValueError(f"normaliser range must be finite and increasing, got [{self.low}, {self.high}]")

    @property
    def half_range(self) -> float:
        return (self.high - self.low) / 2.0

    def forward(self, array: np.ndarray) -> np.ndarray:
        """Scan units -> network units (float32)."""
        centre = (self.high + self.low) / 2.0
        return ((np.asarray(array, dtype=np.float32) - centre) / self.half_range).astype(np.float32)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        """Network units -> scan units (float32)."""
        centre = (self.high + self.low) / 2.0
        return (np.asarray(array, dtype=np.float32) * self.half_range + centre).astype(np.float32)

    def scale_sigma(self, sigma: float | np.ndarray) -> float | np.ndarray:
        """A noise std in scan units expressed in network units."""
        return np.asarray(sigma, dtype=np.float64) / self.half_range if np.ndim(sigma) else float(sigma) / self.half_range

    def unscale_sigma(self, sigma: float | np.ndarray) -> float | np.ndarray:
        """A noise std in network units expressed in scan units."""
        return np.asarray(sigma, dtype=np.float64) * self.half_range if np.ndim(sigma) else float(sigma) * self.half_range

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> "Normaliser":
        return cls(**state)

    @classmethod
    def ct_window(cls, name_or_window: str | tuple[float, float]) -> "Normaliser":
        """A CT preset by name (``"soft-tissue"``, ``"brain"``, ...) or an explicit (centre, width)."""
        if isinstance(name_or_window, str):
            if name_or_window not in CT_WINDOWS:
                raise ValueError(f"unknown CT window {name_or_window!r}; choose one of {sorted(CT_WINDOWS)}")
            centre, width = CT_WINDOWS[name_or_window]
            label = name_or_window
        else:
            centre, width = map(float, name_or_window)
            label = f"centre={centre:g},width={width:g}"
        return cls(centre - width / 2, centre + width / 2, kind="ct-window", detail=label)

    @classmethod
    def fit(
        cls,
        arrays: Iterable[np.ndarray],
        percentiles: tuple[float, float] = (0.5, 99.5),
        max_voxels: int = 2_000_000,
        seed: int = 0,
    ) -> "Normaliser":
        """Fit percentile clipping points on (a random subset of) the voxels of ``arrays``."""
        rng = np.random.default_rng(seed)
        chunks = []
        arrays = list(arrays)
        per = max(1, max_voxels // max(1, len(arrays)))
        for arr in arrays:
            flat = np.asarray(arr, dtype=np.float32).ravel()
            if flat.size > per:
                flat = flat[rng.choice(flat.size, per, replace=False)]
            chunks.append(flat)
        if not chunks:
            raise ValueError("cannot fit a normaliser on no data")
        values = np.concatenate(chunks)
        low, high = np.percentile(values, percentiles)
        if high <= low:
            high = low + 1.0
        return cls(float(low), float(high), kind="percentile", detail=f"{percentiles[0]:g}-{percentiles[1]:g}")

    @classmethod
    def for_modality(cls, arrays: Iterable[np.ndarray], modality: str, ct_window: str | None = None) -> "Normaliser":
        """The default for a modality: a CT window for CT, percentile clipping otherwise."""
        if modality.upper() == "CT":
            return cls.ct_window(ct_window or "wide")
        return cls.fit(arrays)
