"""Left-right mirror comparison of an anomaly map: what the brain's other half says is normal.

A reconstruction-based map is high wherever the model reconstructs healthy anatomy poorly, lesion
or not: ventricle edges, sulci, the slice's hardest structures. Those healthy hot spots vary from
slice to slice more than a small iso-intense lesion raises the map (benchmarks/README.md, "Anomaly
map settings"), and they are mostly **symmetric**: the same structure sits in both hemispheres. A
lesion usually sits in one. So the map is compared with its own mirror image about the tissue's
mid-line,

    m'(x) = m(x) - w * m(R x),

with ``R`` the reflection that swaps left and right (about a line that runs along the rows,
front to back, in the plane of the last two array axes: image columns run left-right in axial
slices) and ``w`` in ``[0, 1]`` (``mirror``). A hot spot present on both
sides is damped by ``w``; one present on one side only (a lesion) keeps its height, and its mirror
image becomes a dip. ``w < 1`` keeps part of a lesion that crosses the mid-line (which its own
mirror image would cancel at ``w = 1``).

The mid-line is a line through the tissue mask's centroid, tilted by the in-plane angle (within
+-20 degrees: heads are rarely scanned perfectly straight) whose reflection best overlaps the mask
with itself (Dice of ``fg`` and ``R fg``); for a volume, of its axial projection, one line for all
slices. It is estimated from the mask, not the intensities, so a bright lesion does not pull it
towards mirroring itself (an intensity-correlation estimate did, on benchmarks/anomaly.py). The
mirrored map is sampled with linear interpolation; voxels mirrored outside the tissue count as 0.
The line lives in voxel coordinates: a tilted line is an exact mirror for square pixels only
(for non-square pixels only the untilted line is).

The map stays a function of the map alone, so everything downstream (the calibrated threshold,
the FDR tables, the scan score) is measured on the same mirrored maps, and scaling the scan by a
positive factor changes nothing (the map is already unit-free).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

MAX_TILT = 20.0  # degrees: the in-plane head rotations searched for the mid-line
TILT_STEP = 1.0


@dataclass(frozen=True)
class Midline:
    """The tissue's mirror line in the (row, column) plane: through ``centre``, ``tilt`` degrees off the rows' direction."""

    centre: tuple[float, float]  # (row, column), voxels
    tilt: float  # degrees; 0: a vertical line (constant column), positive: turned from rows towards columns

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """``(A, b)`` of the reflection ``q -> A q + b`` in (row, column) coordinates."""
        t = np.deg2rad(self.tilt)
        d = np.array([np.cos(t), np.sin(t)])
        a = 2.0 * np.outer(d, d) - np.eye(2)
        c = np.asarray(self.centre, dtype=np.float64)
        return a, c - a @ c


def reflect(a: np.ndarray, line: Midline, order: int = 1) -> np.ndarray:
    """``a`` (2D, or 3D with the line applied to every slice of axis 0) mirrored about ``line``; outside: 0."""
    m, b = line.matrix()
    if a.ndim == 3:
        m3 = np.eye(3)
        m3[1:, 1:] = m
        m, b = m3, np.concatenate([[0.0], b])
    src = a.astype(np.float64) if a.dtype == bool else a
    out = ndi.affine_transform(src, m, offset=b, order=order, mode="constant", cval=0.0)
    return out > 0.5 if a.dtype == bool else out.astype(a.dtype)


def midline(fg: np.ndarray) -> Midline:
    """The mirror line of the tissue mask ``fg`` (a volume: of its axial projection), by best self-overlap.

    The line passes through the mask's centroid (a symmetric shape's centroid lies on its axis);
    its tilt is the one of -:data:`MAX_TILT`..+:data:`MAX_TILT` degrees whose reflection overlaps
    the mask best (Dice), ties going to the smallest tilt.
    """
    plane = fg.any(axis=0) if fg.ndim == 3 else fg
    if not plane.any():
        return Midline(((plane.shape[0] - 1) / 2, (plane.shape[1] - 1) / 2), 0.0)
    rows, cols = np.nonzero(plane)
    centre = (float(rows.mean()), float(cols.mean()))
    total = float(plane.sum())
    best, best_tilt = -1.0, 0.0
    for tilt in sorted(np.arange(-MAX_TILT, MAX_TILT + TILT_STEP / 2, TILT_STEP), key=abs):
        mirrored = reflect(plane, Midline(centre, float(tilt)), order=0)
        score = 2.0 * float((plane & mirrored).sum()) / (total + float(mirrored.sum()))
        if score > best + 1e-9:
            best, best_tilt = score, float(tilt)
    return Midline(centre, best_tilt)


def mirror_difference(m: np.ndarray, fg: np.ndarray, weight: float) -> np.ndarray:
    """``m - weight * m(mirrored)`` inside ``fg`` (0 outside), about the mid-line of ``fg``."""
    if weight <= 0 or not fg.any():
        return m
    mirrored = reflect(np.where(fg, m, 0.0).astype(np.float32), midline(fg))
    return np.where(fg, m - weight * mirrored, 0.0).astype(np.float32)


__all__ = ["Midline", "reflect", "midline", "mirror_difference", "MAX_TILT", "TILT_STEP"]
