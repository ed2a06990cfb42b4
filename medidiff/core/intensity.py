"""Intensity normalisation: scan units <-> the network's [-1, 1], stored with a model.

The diffusion network works on values around [-1, 1]. A ``Normaliser`` maps scan units
(HU, MR signal, photon counts) linearly to that range and back, so that every task
returns results in the input's own units. The map is linear and never clips, so noise
levels convert exactly (:meth:`Normaliser.scale_sigma`) and out-of-range tissue survives.

Fixed and per-scan normalisers
------------------------------
CT has absolute units (HU), so a CT model keeps one fixed window (``kind="ct-window"``); so do
``"given"`` and ``"identity"`` normalisers. MR, microscopy and most other images have **no
absolute units**: the same scan may be stored as 0..1, 0..988 or 0..4095. For them the
normaliser's ``kind`` names a *rule* that is fitted on **each scan on its own**
(:meth:`Normaliser.for_scan`), at training time and again on every input scan, so a model never
sees the units of the file:

``"foreground"`` (models trained from this version on)
    ``low`` = the ``p_lo`` percentile of all voxels (the dark end: background where there is
    one), ``high`` = the ``p_hi`` percentile of the *foreground* voxels (those above
    ``low + 10% * (p_hi(all) - low)``), so the field of view (how much background) does not
    change the map.
``"percentile"`` (older models, e.g. the built-in ``mr2d`` and ``micro2d``)
    ``low, high`` = the ``p_lo``, ``p_hi`` percentiles of all voxels: the rule their training
    data was mapped with (one pooled fit), now applied to each input scan, which maps a scan
    to the range their training data had.

The percentiles (``detail``, e.g. ``"0.5-99.5"``) are taken on a copy smoothed in-plane by a
Gaussian of 1 pixel, which removes ~70% of the noise std, and -- where the noise is biased, as
Rician noise is in the dark background -- mapped through the noise model's inverse of the mean
(``signal_of_mean``), so a noisy scan gets (nearly) the map its clean version would get.

Noise-aware tails
-----------------
Smoothing alone is not enough at the dark end. The 0.5th percentile of a flat background with
(smoothed) noise of std ``s`` lies ``2.58 s`` below the background, so a scan with Gaussian noise of
10 % of its range got ``low`` about 10 % of the range too low, and the network saw it shifted
(measured: -2.6/-5.1/-10.2 % at 2.5/5/10 % noise on ``mr_sample``; the MR denoising rows lost up
to 1.3 dB). When the caller knows the noise (``noise_std``: its std in scan units at a signal
level; denoising has estimated it anyway), each end is **deconvolved by a local Gaussian fit**.
The smoothed values are ``v = c + e``, ``e ~ N(0, s^2)``, with ``s = noise_std(q) * ||g||_2`` (``g``
the smoothing kernel). Around the percentile ``q`` the density of ``v`` is modelled as a Gaussian
``N(m, D^2)`` (a tissue class, or a flat background with its noise). Weighting the values by a
Gaussian kernel ``N(q, b^2)`` (``b = s``) gives a weighted mean ``mu`` and variance ``V``; for a
Gaussian density the product is Gaussian too, so ``D^2 = V b^2 / (b^2 - V)`` and ``m = (mu (D^2 +
b^2) - q D^2) / b^2``. The noise-free class has spread ``d = sqrt(max(D^2 - 1.1 s^2, 0))`` (a spread within 5 % of the
noise std, about the noise estimate's own error, counts as flat: near ``D = s`` the square root
is ill-conditioned), so the
noise-free percentile sits ``d / D`` as far from ``m``: ``low = m + (q - m) d / D``. A flat
background (``D = s``, whatever share of the voxels it holds) maps onto the background itself;
a wide tail (``V`` near ``b^2``: no curvature at this scale) is left as it is, and a Gaussian
class lands exactly on its clean percentile. ``s = 0`` leaves ``q`` as it is, and training on clean
scans passes no noise, so trained models are unchanged. (Tweedie's posterior mean ``q + s^2
d/dq log p(q)`` is not the right map: posterior means are under-dispersed, so it over-corrects
every end that is not a flat background.)

Every step -- smoothing, percentiles, the threshold, the tail correction (``noise_std`` scales with
the scan) -- commutes with ``x -> a*x + b`` (``a > 0``), so the fitted map does too:
``for_scan(a*x + b).forward(a*x + b) == for_scan(x).forward(x)`` up to rounding, and results in
scan units scale with the scan.
The stored ``low``/``high`` of a per-scan normaliser are the median fit over the training scans:
the units generated images are given in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from medidiff.errors import InvalidScanError

# (centre, width) in HU; the window's ends map to -1 and 1
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "wide": (0.0, 2000.0),
}

PER_SCAN_KINDS = ("foreground", "percentile")  # rules fitted on each scan on its own
DEFAULT_PERCENTILES = (0.5, 99.5)
_SMOOTH_PX = 1.0  # in-plane Gaussian smoothing before the percentiles (white noise std x 0.28)
_FOREGROUND_LEVEL = 0.1  # foreground: above low + 10% of the (all-voxel) range
_MAX_VOXELS = 2_000_000  # percentiles on at most this many voxels (a fixed stride)
_TAIL_BANDWIDTH = 1.0  # the noise-aware tails' kernel bandwidth, in smoothed-noise stds
_FLAT_MARGIN = 1.1  # a local spread within 5% of the noise std (~ its estimate's error) counts as flat


def _smoothed_values(array: np.ndarray) -> np.ndarray:
    """The voxels of ``array`` smoothed in-plane (the last two axes), as a flat float64 array."""
    arr = np.asarray(array, dtype=np.float64)
    sigma = [0.0] * (arr.ndim - 2) + [_SMOOTH_PX, _SMOOTH_PX] if arr.ndim >= 2 else [_SMOOTH_PX]
    flat = ndi.gaussian_filter(arr, sigma, mode="reflect").ravel()
    if flat.size > _MAX_VOXELS:
        flat = flat[:: flat.size // _MAX_VOXELS + 1]
    return flat


NoiseStd = Callable[[float], float] | float  # noise std in scan units, at a signal level or everywhere


def _smoothing_gain(ndim: int) -> float:
    """``||g||_2`` of the smoothing kernel: the factor white noise's std keeps after ``_smoothed_values``."""
    dims = min(ndim, 2)
    delta = np.zeros((17,) * dims)
    delta[(8,) * dims] = 1.0
    return float(np.sqrt(np.sum(ndi.gaussian_filter(delta, _SMOOTH_PX, mode="reflect") ** 2)))


def _noise_at(noise_std: NoiseStd, level: float) -> float:
    value = float(noise_std(level) if callable(noise_std) else noise_std)
    return value if np.isfinite(value) and value > 0 else 0.0


def _tail(values: np.ndarray, p: float, s: float) -> float:
    """The ``p`` percentile of ``values`` with noise of std ``s`` deconvolved by a local Gaussian fit (module docstring)."""
    q = float(np.percentile(values, p))
    if s <= 0:
        return q
    b2 = (_TAIL_BANDWIDTH * s) ** 2
    w = np.exp(-0.5 * (values - q) ** 2 / b2)
    total = float(w.sum())
    if not total > 1e-12:
        return q
    mean = float(np.dot(w, values) / total)
    var = float(np.dot(w, (values - mean) ** 2) / total)
    if not 0 < var < 0.99 * b2:  # a point mass (nothing to deconvolve), or a tail too wide to move
        return q
    spread2 = var * b2 / (b2 - var)  # D^2 of the local Gaussian N(m, D^2) of the noisy values
    centre = (mean * (spread2 + b2) - q * spread2) / b2
    return centre + (q - centre) * float(np.sqrt(max(spread2 - _FLAT_MARGIN * s * s, 0.0) / spread2))


def _parse_percentiles(detail: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in detail.split("-"))
    except ValueError:
        return DEFAULT_PERCENTILES
    return (lo, hi) if 0 <= lo < hi <= 100 else DEFAULT_PERCENTILES


def fit_scan_range(array: np.ndarray, kind: str = "foreground", percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                   source: str = "scan", signal_of_mean: Callable[[np.ndarray], np.ndarray] | None = None,
                   noise_std: NoiseStd | None = None) -> tuple[float, float]:
    """``(low, high)`` of one scan by the per-scan rule ``kind`` (see the module docstring).

    ``signal_of_mean`` maps a local mean of the noisy scan to the noise-free signal (e.g. the
    Rician bias correction); applied to the smoothed values before the percentiles.
    ``noise_std``: the scan's noise std in scan units (a number, or a function of the signal
    level): both ends are then corrected for it (noise-aware tails); ``None`` for clean scans.
    Raises :class:`InvalidScanError` (naming ``source``) for an empty, non-finite or constant scan.
    """
    arr = np.asarray(array)
    if arr.size == 0:
        raise InvalidScanError(source, "is empty")
    if not np.all(np.isfinite(arr)):
        raise InvalidScanError(source, "contains NaN or Inf values")
    values = _smoothed_values(arr)
    if signal_of_mean is not None:
        values = np.asarray(signal_of_mean(values), dtype=np.float64)
    p_lo, p_hi = percentiles
    low, top = (float(v) for v in np.percentile(values, [p_lo, p_hi]))
    scale = max(abs(low), abs(top), 1e-30)
    if not top - low > 1e-6 * scale:
        raise InvalidScanError(source, f"is (almost) constant: its {p_lo:g}th-{p_hi:g}th percentiles are both "
                                       f"{low:.6g}; there is nothing to normalise or denoise")
    if kind not in PER_SCAN_KINDS:
        raise ValueError(f"unknown per-scan normaliser rule {kind!r}; choose one of {PER_SCAN_KINDS}")
    gain = _smoothing_gain(arr.ndim) if noise_std is not None else 0.0
    if gain:
        low = _tail(values, p_lo, gain * _noise_at(noise_std, low))
    if kind == "percentile":
        high = _tail(values, p_hi, gain * _noise_at(noise_std, top)) if gain else top
    else:
        fg = values[values > low + _FOREGROUND_LEVEL * (top - low)]
        high = _tail(fg, p_hi, gain * _noise_at(noise_std, float(np.percentile(fg, p_hi))) if gain else 0.0)
    if not high > low:  # the correction cannot cross the ends over; keep the plain percentiles then
        return fit_scan_range(arr, kind, percentiles, source, signal_of_mean)
    return low, high


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

    @property
    def per_scan(self) -> bool:
        """True when the map is a rule fitted on each scan (MR, microscopy), not fixed units (CT)."""
        return self.kind in PER_SCAN_KINDS

    def for_scan(self, array: np.ndarray, source: str = "scan",
                 signal_of_mean: Callable[[np.ndarray], np.ndarray] | None = None,
                 noise_std: NoiseStd | None = None) -> "Normaliser":
        """The fixed normaliser for one scan: itself for fixed kinds, the rule fitted on ``array`` otherwise.

        ``source`` names the scan in errors (a constant scan cannot be normalised);
        ``signal_of_mean`` and ``noise_std`` (pass both for a noisy scan): see :func:`fit_scan_range`.
        """
        if not self.per_scan:
            return self
        low, high = fit_scan_range(array, self.kind, _parse_percentiles(self.detail), source, signal_of_mean,
                                   noise_std)
        return Normaliser(low, high, kind="fixed", detail=f"{self.kind} {self.detail} of this scan")

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
    def per_scan_rule(cls, arrays: Iterable[np.ndarray], kind: str = "foreground",
                      percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> "Normaliser":
        """A per-scan rule; its stored ``low``/``high`` are the median fit over ``arrays`` (reference units)."""
        fits = np.array([fit_scan_range(a, kind, percentiles, source=f"training scan {i + 1}")
                         for i, a in enumerate(arrays)], dtype=np.float64)
        if fits.size == 0:
            raise ValueError("cannot fit a normaliser on no data")
        low, high = (float(v) for v in np.median(fits, axis=0))
        if high <= low:
            high = low + 1.0
        return cls(low, high, kind=kind, detail=f"{percentiles[0]:g}-{percentiles[1]:g}")

    @classmethod
    def for_modality(cls, arrays: Iterable[np.ndarray], modality: str, ct_window: str | None = None) -> "Normaliser":
        """The default for a modality: a CT window for CT, the per-scan foreground rule otherwise."""
        if modality.upper() == "CT":
            return cls.ct_window(ct_window or "wide")
        return cls.per_scan_rule(arrays)
