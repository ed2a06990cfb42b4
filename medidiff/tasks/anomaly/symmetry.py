"""Left-right mirror comparison of an anomaly map: what the brain's other half says is normal.

A reconstruction-based map is high wherever the model reconstructs healthy anatomy poorly, lesion
or not: ventricle edges, sulci, the slice's hardest structures. Those healthy hot spots vary from
slice to slice more than a small iso-intense lesion raises the map (benchmarks/README.md, "Anomaly
map settings"), and they are mostly **symmetric**: the same structure sits in both hemispheres. A
lesion usually sits in one. So the map is compared with its own mirror image about the tissue's
mid-line,

    m'(x) = m(x) - w * m(R x),

with ``R`` the reflection along the left-right axis (the array's last axis: image columns, which
run left-right in axial slices) and ``w`` in ``[0, 1]`` (``mirror``). A hot spot present on both
sides is damped by ``w``; one present on one side only (a lesion) keeps its height, and its mirror
image becomes a dip. ``w < 1`` keeps part of a lesion that crosses the mid-line (which its own
mirror image would cancel at ``w = 1``).

The mid-line is the reflection that best overlaps the tissue mask with itself (Dice of ``fg`` and
``R fg`` over whole-voxel and half-voxel centres near the mask's centroid), estimated from the mask,
not the intensities, so a bright lesion does not pull it towards mirroring itself (an
intensity-correlation estimate did, on benchmarks/anomaly.py). Voxels mirrored outside the array
use the edge voxel; those outside the tissue have map value 0.

The map stays a function of the map alone, so everything downstream (the calibrated threshold,
the FDR tables, the scan score) is measured on the same mirrored maps, and scaling the scan by a
positive factor changes nothing (the map is already unit-free).
"""

from __future__ import annotations

import numpy as np

SEARCH_FRACTION = 0.125  # search the mid-line within +-1/8 of the side around the tissue centroid


def reflect(a: np.ndarray, centre2: int) -> np.ndarray:
    """``a`` mirrored along its last axis about ``centre2 / 2`` (column ``j`` -> ``centre2 - j``, clipped)."""
    n = a.shape[-1]
    j = np.clip(centre2 - np.arange(n), 0, n - 1)
    return a[..., j]


def midline(fg: np.ndarray) -> int:
    """Twice the mid-line column of the tissue mask ``fg`` (its last axis): the best self-overlap by Dice."""
    n = fg.shape[-1]
    cols = np.nonzero(fg.reshape(-1, n).any(axis=0))[0]
    if cols.size == 0:
        return n - 1
    weights = fg.reshape(-1, n).sum(axis=0).astype(np.float64)
    c2 = int(round(2 * float((np.arange(n) * weights).sum() / weights.sum())))
    span = max(2, int(round(2 * SEARCH_FRACTION * n)))
    total = float(fg.sum())
    best, best_c2 = -1.0, c2
    for cand in range(c2 - span, c2 + span + 1):
        overlap = float((fg & reflect(fg, cand)).sum())
        score = 2 * overlap / (total + float(reflect(fg, cand).sum()))
        # ties go to the candidate nearest the centroid, so a flat optimum stays put
        if score > best + 1e-12 or (abs(score - best) <= 1e-12 and abs(cand - c2) < abs(best_c2 - c2)):
            best, best_c2 = score, cand
    return best_c2


def mirror_difference(m: np.ndarray, fg: np.ndarray, weight: float) -> np.ndarray:
    """``m - weight * m(mirrored)`` inside ``fg`` (0 outside), about the mid-line of ``fg``."""
    if weight <= 0 or not fg.any():
        return m
    c2 = midline(fg)
    out = m - weight * np.where(reflect(fg, c2), reflect(m, c2), 0.0)
    return np.where(fg, out, 0.0).astype(np.float32)


__all__ = ["reflect", "midline", "mirror_difference", "SEARCH_FRACTION"]
