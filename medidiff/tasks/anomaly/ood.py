"""Out-of-distribution check: is this scan like the healthy scans the model was calibrated on?

An anomaly map measures how far a scan is from the model's picture of healthy anatomy. On a
scan unlike the training data (another modality, another resolution, another body part) the
map is large or meaningless everywhere, and its threshold and FDR guarantee do not hold. Three
robust statistics of the scan are compared with the calibration's (all over the Otsu
foreground, the intensities in network units after the scan's own normalisation, so a rescaled
scan gives the same numbers):

* **residual level**: the median of the anomaly map, against the median of the calibration's
  healthy voxel scores (``healthy_scores``). A scan the model cannot reconstruct has a residual
  many times (> :data:`RESIDUAL_FACTOR`) the healthy one, in every voxel, not just a lesion's.
  A z-score map (``--score zscore``/``ssim``) is signed with a healthy median near 0, so there
  the level is a shift instead (``residual_shift``): the scan's median minus the healthy median,
  in healthy spreads (interquartile range / 1.349 of the healthy scores), flagged above
  :data:`RESIDUAL_SHIFT`.
* **fine structure**: the median gradient magnitude ``|grad x|`` (forward differences in the
  last two axes), against the calibration's. It is a voxel-scale texture level: a scan at another
  resolution or of smooth structures (a microscopy image: about 0.1 of mr2d's training level)
  is off by a factor; healthy slices of the training volumes lie within 0.75-1.3.
* **intensity histogram**: the Wasserstein-1 distance between the scan's foreground intensities
  and the calibration's (from 19 quantiles, 5%-95%), divided by the calibration's inter-quartile
  range. Healthy MR slices: <= 0.08; other images 0.16-0.33.

The last two need the calibration's ``profile`` (stored by :func:`profile_scans` since this
check exists); older calibrations get only the residual check. The limits are deliberately wide
(about 2.5 times the spread seen on healthy held-out slices): the warning is for scans the model
should not be used on, not for borderline cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

QUANTILES = tuple(np.round(np.linspace(0.05, 0.95, 19), 3))
RESIDUAL_FACTOR = 3.0  # residual level above this many times the calibration's
RESIDUAL_SHIFT = 3.0  # z-score maps: median above the calibration's by this many healthy spreads
STRUCTURE_FACTOR = 2.5  # fine-structure level off by more than this factor (either way)
HISTOGRAM_LIMIT = 0.2  # Wasserstein-1 / IQR of the calibration's intensities


class OutOfDistributionWarning(UserWarning):
    """A scan unlike the healthy scans the model was calibrated on (its map cannot be trusted)."""


def _gradient(x: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """``|grad x|`` (forward differences, last two axes) at the foreground voxels that have both neighbours."""
    gy = np.diff(x, axis=-2)[..., :, :-1]
    gx = np.diff(x, axis=-1)[..., :-1, :]
    return np.hypot(gy, gx)[fg[..., :-1, :-1]]


def profile_values(stack: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground intensities and gradient magnitudes of a stack already in network units."""
    x = np.asarray(stack, dtype=np.float64)
    return x[fg], _gradient(x, fg)


def profile_scans(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The calibration's profile from ``(network-unit stack, foreground)`` pairs of healthy scans."""
    vals, grads = zip(*(profile_values(s, f) for s, f in pairs)) if pairs else ((), ())
    v = np.concatenate(vals) if vals else np.zeros(0)
    g = np.concatenate(grads) if grads else np.zeros(0)
    if v.size == 0:
        return {}
    q = np.quantile(v, QUANTILES)
    iqr = float(np.quantile(v, 0.75) - np.quantile(v, 0.25))
    return {"intensity_quantiles": [round(float(a), 6) for a in q], "intensity_iqr": iqr,
            "structure_level": float(np.median(g)) if g.size else 0.0,
            "definition": "network units over the Otsu foreground; structure: median |grad x| (see medidiff.tasks.anomaly.ood)"}


def check(amap: np.ndarray, fg: np.ndarray, stack: np.ndarray, stack_fg: np.ndarray,
          healthy_sorted: np.ndarray | None, profile: dict[str, Any] | None, signed: bool = False) -> dict[str, Any]:
    """The scan's OOD statistics against the calibration, and the reasons it is out of distribution.

    ``amap``/``fg``: the map and its foreground; ``stack``/``stack_fg``: the scan in network
    units as the model saw it. Returns ``{"out_of_distribution": bool, "reasons": [...], ...}``
    with each statistic that could be measured (``residual_ratio``, or ``residual_shift`` for a
    ``signed`` map such as a z-score, ``structure_ratio``, ``intensity_distance``) and its limit.
    """
    out: dict[str, Any] = {"reasons": []}
    values = amap[fg]
    if values.size and healthy_sorted is not None and len(healthy_sorted) and signed:
        q25, ref, q75 = (float(x) for x in np.quantile(healthy_sorted, (0.25, 0.5, 0.75)))
        if q75 > q25:
            shift = (float(np.median(values)) - ref) / ((q75 - q25) / 1.349)
            out["residual_shift"] = shift
            if shift > RESIDUAL_SHIFT:
                out["reasons"].append(f"its score level is {shift:.1f} healthy spreads above the healthy calibration's "
                                      f"(limit {RESIDUAL_SHIFT:g})")
    elif values.size and healthy_sorted is not None and len(healthy_sorted):
        ref = float(np.median(healthy_sorted))
        if ref > 0:
            ratio = float(np.median(values)) / ref
            out["residual_ratio"] = ratio
            if ratio > RESIDUAL_FACTOR:
                out["reasons"].append(f"its residual level is {ratio:.1f}x the healthy calibration's "
                                      f"(limit {RESIDUAL_FACTOR:g}x)")
    if profile and stack_fg.any():
        v, g = profile_values(stack, stack_fg)
        level = float(profile.get("structure_level") or 0.0)
        if level > 0 and g.size:
            ratio = float(np.median(g)) / level
            out["structure_ratio"] = ratio
            if not 1 / STRUCTURE_FACTOR <= ratio <= STRUCTURE_FACTOR:
                out["reasons"].append(f"its fine structure (voxel-scale gradient) is {ratio:.2g}x the training "
                                      f"scans' (expected 1/{STRUCTURE_FACTOR:g}-{STRUCTURE_FACTOR:g}x: another "
                                      "resolution or kind of image)")
        ref_q = profile.get("intensity_quantiles")
        iqr = float(profile.get("intensity_iqr") or 0.0)
        if ref_q and iqr > 0:
            dist = float(np.mean(np.abs(np.quantile(v, QUANTILES) - np.asarray(ref_q)))) / iqr
            out["intensity_distance"] = dist
            if dist > HISTOGRAM_LIMIT:
                out["reasons"].append(f"its normalised intensity histogram is {dist:.2f} IQR from the training "
                                      f"scans' (limit {HISTOGRAM_LIMIT:g})")
    out["out_of_distribution"] = bool(out["reasons"])
    return out


def warning_text(source: str, model: str, info: dict[str, Any]) -> str:
    """The one-line warning for an out-of-distribution scan: which scan, why, and what to expect."""
    return (f"{source}: looks unlike the healthy scans {model} was trained and calibrated on ("
            + "; ".join(info["reasons"]) + "); expect a map that is high over normal tissue or misses lesions, "
            "and a threshold and FDR level that do not hold; use a model trained on scans like this one")
