"""Slice geometry: order images along the slice normal, build the affine, and its inverse for writing.

Slices are ordered by their ImagePositionPatient projected on the slice normal
``n = row x column`` direction cosines (ImageOrientationPatient), never by file name or
InstanceNumber. The affine maps ``(x=column, y=row, z=slice)`` indices to millimetres:
columns step ``PixelSpacing[1]`` along the row direction, rows step ``PixelSpacing[0]``
along the column direction, slices step from one position to the next; it is built in
DICOM's LPS and converted to nibabel's RAS by negating the first two world axes.
``slice_geometry`` is the inverse: IOP, per-slice IPP and pixel spacing from an affine.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.errors import InvalidScanError
from medidiff.io._util import warn
from medidiff.io.dicom.frames import Image
from medidiff.io.dicom.tags import LPS_RAS
from medidiff.io.scan import Scan


def geometry_groups(images: list[Image], path: Path) -> list[Image]:
    """Keep the largest set of images sharing size and orientation (drop localizers), with a warning."""
    def key(im: Image):
        iop = None if im.orientation is None else tuple(np.round(im.orientation, 3))
        return (im.rows, im.cols, iop)

    counts = Counter(key(im) for im in images)
    if len(counts) == 1:
        return images
    best, n_best = counts.most_common(1)[0]
    kept = [im for im in images if key(im) == best]
    warn(path, f"series mixes image sizes or orientations; kept the {n_best} images of size "
         f"{best[0]}x{best[1]} with orientation {best[2]}, skipped {len(images) - n_best} (localizers?)")
    return kept


def _describe_volumes(path: Path, n_per: int, n_pos: int) -> str:
    return (f"has {n_per} images at each of {n_pos} slice positions (time points, echoes or repeats); "
            f"pick one with volume=N (--volume N on the command line), N from 0 to {n_per - 1}")


def order_images(images: list[Image], path: Path, volume: int | None) -> tuple[list[Image], np.ndarray | None]:
    """Sort by position along the slice normal; returns the chosen images and their positions along it."""
    have_geometry = all(im.position is not None and im.orientation is not None for im in images)
    if not have_geometry:
        ordered = sorted(images, key=lambda im: (im.order_key, str(im.file)))  # no positions: numbering
        if volume not in (None, 0):
            raise InvalidScanError(path, f"volume={volume} does not apply: the images have no slice positions")
        return ordered, None
    iop = images[0].orientation
    normal = np.cross(iop[:3], iop[3:])
    dist = np.array([float(np.dot(im.position, normal)) for im in images])
    order = np.lexsort((np.arange(len(images)), dist))
    images = [images[i] for i in order]
    dist = dist[order]
    # group images that sit at the same position (several time points / echoes)
    tol = 1e-3
    groups: list[list[int]] = [[0]]
    for i in range(1, len(images)):
        if abs(dist[i] - dist[groups[-1][0]]) <= tol:
            groups[-1].append(i)
        else:
            groups.append([i])
    sizes = {len(g) for g in groups}
    if sizes == {1}:
        if volume not in (None, 0):
            raise InvalidScanError(path, f"volume={volume} does not apply: the series has one image per slice position")
        if _numbered_backwards(images):
            images, dist = images[::-1], dist[::-1]
        return images, dist
    if len(sizes) > 1:
        raise InvalidScanError(
            path, f"has repeated slice positions with unequal counts ({len(images)} images at {len(groups)} positions); "
            "the series cannot be stacked into one volume",
        )
    n_per = sizes.pop()
    if volume is None:
        raise InvalidScanError(path, _describe_volumes(path, n_per, len(groups)))
    if not 0 <= volume < n_per:
        raise InvalidScanError(path, f"volume={volume} is out of range; " + _describe_volumes(path, n_per, len(groups)))
    chosen = []
    for g in groups:
        members = sorted(g, key=lambda i: images[i].order_key)
        chosen.append(members[volume])
    picked, picked_dist = [images[i] for i in chosen], dist[[g[0] for g in groups]]
    if _numbered_backwards(picked):
        picked, picked_dist = picked[::-1], picked_dist[::-1]
    return picked, picked_dist


def _numbered_backwards(images: list[Image]) -> bool:
    """True when the images, already sorted by position, are numbered strictly backwards.

    The *order* of slices always comes from their positions; the numbering (InstanceNumber,
    then frame index) only picks which end is slice 0, so a series written from a volume
    whose slice axis runs against the normal reads back in its original direction.
    Shuffled or missing numbers keep the ascending-along-the-normal order.
    """
    if len(images) < 2:
        return False
    keys = [im.order_key[-2:] for im in images]  # (InstanceNumber, frame index)
    if len(set(keys)) != len(keys):
        return False
    return all(a > b for a, b in zip(keys, keys[1:]))


def _describe_gaps(dist: np.ndarray, steps: np.ndarray, step: float, bad: np.ndarray) -> str:
    parts = []
    for i in bad[:6]:
        missing = int(round(steps[i] / step)) - 1 if step != 0 else 0
        extra = f", about {missing} slice(s) missing" if missing >= 1 else ""
        parts.append(f"between slice positions {dist[i]:.3f} and {dist[i + 1]:.3f} mm ({abs(steps[i]):.3f} mm apart{extra})")
    more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
    return "; ".join(parts) + more


def slice_slots(dist: np.ndarray | None, n: int, path: Path, fill_gaps: bool = False) -> tuple[np.ndarray, int]:
    """Where each of ``n`` images goes in a volume with a uniform slice step: ``(slot of each image, slices)``.

    The step is the median distance between neighbouring positions along the normal. A
    series whose positions are all whole multiples of it from the first slice but skip
    some (missing files) is refused, naming the gap, unless ``fill_gaps``: then every image
    keeps its real position and the missing slots are left for blank slices. Positions
    that are not whole multiples of the step cannot be stacked with one affine: refused.
    """
    if dist is None or n < 2:  # no positions (stacked by numbering) or a single image
        return np.arange(n), n
    steps = np.diff(dist)
    step = float(np.median(steps))
    tol = max(0.01 * abs(step), 1e-3)
    bad = np.nonzero(np.abs(steps - step) > tol)[0]
    if not len(bad):
        return np.arange(n), n
    where = _describe_gaps(dist, steps, step, bad)
    k = (dist - dist[0]) / step
    slots = np.rint(k).astype(int)
    on_grid = bool(np.all(np.abs(k - slots) * abs(step) <= tol)) and bool(np.all(np.diff(slots) >= 1))
    if not on_grid:
        raise InvalidScanError(
            path, f"has irregular slice spacing (usual step {abs(step):.3f} mm): {where}; the slices cannot be stacked "
            "into one volume at their real positions; resample the series, or pick the slices that belong together",
        )
    n_out = int(slots[-1]) + 1
    if not fill_gaps:
        raise InvalidScanError(
            path, f"has {n_out - n} missing slice(s) (usual step {abs(step):.3f} mm): gap {where}; the slices after a gap "
            "would sit at wrong positions. Restore the missing files, or fill the gaps with blank slices "
            "(fill_gaps=True, --fill-gaps on the command line)",
        )
    return slots, n_out


def affine_of(
    images: list[Image], dist: np.ndarray | None, path: Path, slots: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[float, ...]]:
    """RAS affine (x=column, y=row, z=slice) and spacing in array order (z, y, x).

    ``slots`` (from ``slice_slots``) gives each image's slice index in the volume; the slice
    step is the vector from the first to the last image divided by their index distance,
    so every image (on either side of a filled gap too) sits at its own position.
    """
    first = images[0]
    ps = first.pixel_spacing
    if ps is None or ps[0] <= 0 or ps[1] <= 0:
        if first.position is not None:
            warn(path, "no PixelSpacing; assuming 1 mm pixels")
        ps = (1.0, 1.0)
    if dist is None:  # no patient geometry (secondary capture, ...)
        z = first.thickness or 1.0
        what = f"{ps[1]:g} x {ps[0]:g} mm pixels from PixelSpacing" if first.pixel_spacing else "1 mm pixels"
        warn(path, f"has no patient geometry (ImagePositionPatient/ImageOrientationPatient); "
             f"using an axis-aligned affine with {what}")
        affine = np.diag([ps[1], ps[0], z, 1.0])
        return affine, (float(z), float(ps[0]), float(ps[1]))
    iop = first.orientation
    row_dir, col_dir = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(row_dir, col_dir)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]  # x index = column: moves along the row direction
    lps[:3, 1] = col_dir * ps[0]  # y index = row: moves along the column direction
    lps[:3, 3] = first.position
    n = len(images)
    if n >= 2:
        slots = np.arange(n) if slots is None else slots
        step_vec = (images[-1].position - images[0].position) / float(slots[-1] - slots[0])
        lps[:3, 2] = step_vec
        z_spacing = abs(float(np.dot(step_vec, normal)))
    else:
        z_spacing = first.thickness or 1.0
        lps[:3, 2] = normal * z_spacing
    return LPS_RAS @ lps, (float(z_spacing), float(ps[0]), float(ps[1]))


def slice_geometry(scan: Scan) -> dict[str, Any]:
    """IOP, per-slice IPP (LPS), PixelSpacing and slice spacing from the scan's RAS affine."""
    lps = LPS_RAS @ scan.affine
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dc, dr = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    if dc == 0 or dr == 0:
        raise InvalidScanError(None, f"affine has a zero in-plane axis, cannot write DICOM geometry:\n{scan.affine}")
    row_dir, col_dir = col_step / dc, row_step / dr
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(slice_step) == 0:
        slice_step = normal * (float(scan.spacing[0]) if scan.ndim == 3 else 1.0)
    n = scan.shape[0] if scan.ndim == 3 else 1
    positions = [lps[:3, 3] + k * slice_step for k in range(n)]
    return {
        "iop": list(row_dir) + list(col_dir),
        "positions": positions,
        "pixel_spacing": (dr, dc),
        "slice_spacing": abs(float(np.dot(slice_step, normal))),
        "orthogonal": abs(float(np.dot(row_dir, col_dir))) < 1e-4,
    }
