"""Synthetic lesions planted into real healthy scans, for tests and benchmarks of anomaly detection.

A lesion is a soft-edged region (an ellipse/ellipsoid, or an irregular "blob": an ellipse whose
border is pushed in and out by smooth noise) whose intensity is changed by ``contrast`` times
the median foreground intensity (positive: brighter, negative: darker), optionally with a
texture (smooth multiplicative noise). The ground-truth mask is where the lesion weight is above
one half. Everything is drawn from ``seed``: the same seed gives the same lesion.

This is a stand-in for real pathology with known masks; it cannot tell how a method does on
real lesions (see data_cards/benchmark-anomaly.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

KINDS = ("ellipse", "blob")


@dataclass(frozen=True)
class Lesion:
    """A scan array with a planted lesion, its ground-truth mask and the parameters used."""

    image: np.ndarray
    mask: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


def foreground(image: np.ndarray) -> np.ndarray:
    """Foreground (tissue) voxels by Otsu's threshold, holes filled slice by slice."""
    from skimage.filters import threshold_otsu

    img = np.asarray(image, dtype=np.float32)
    if img.size == 0 or float(img.max()) == float(img.min()):
        return np.zeros(img.shape, dtype=bool)
    fg = img > threshold_otsu(img)
    if fg.ndim == 2:
        return ndi.binary_fill_holes(fg)
    return np.stack([ndi.binary_fill_holes(s) for s in fg])


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma=max(sigma, 0.5), mode="wrap")
    s = n.std()
    return n / (s if s > 0 else 1.0)


def _prepare(image: np.ndarray, seed: int | np.random.Generator, kind: str, tissue: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    if kind not in KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; choose one of {KINDS}")
    img = np.asarray(image, dtype=np.float32)
    if img.ndim not in (2, 3):
        raise ValueError(f"lesions are planted into 2D or 3D arrays; got shape {img.shape}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))
    tissue = foreground(img) if tissue is None else np.asarray(tissue, dtype=bool)
    if not tissue.any():
        raise ValueError("the image has no foreground to plant a lesion into")
    return img, tissue, rng


def _region(shape: tuple[int, ...], tissue: np.ndarray, rng: np.random.Generator, kind: str,
            radius: float | Sequence[float], irregularity: float, centre: Sequence[float] | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft lesion weight in [0, 1] (0 outside ``tissue``), its semi-axes and its centre."""
    ndim = len(shape)
    if np.ndim(radius) == 0:
        r0 = float(radius)
        radii = np.array([r0 * rng.uniform(0.6, 1.0) for _ in range(ndim)])
        radii[rng.integers(ndim)] = r0  # keep the stated size along one axis
    else:
        radii = np.asarray(radius, dtype=np.float64)
        if radii.size != ndim:
            raise ValueError(f"radius needs {ndim} values for a {ndim}D image, got {radii.size}")
    if centre is None:
        # a voxel at least about one radius inside the tissue, so most of the lesion is in tissue
        inner = ndi.binary_erosion(tissue, iterations=max(1, int(np.min(radii) * 0.8)))
        candidates = np.argwhere(inner if inner.any() else tissue)
        centre = candidates[rng.integers(len(candidates))].astype(np.float64)
    centre = np.asarray(centre, dtype=np.float64)

    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    offsets = [g - c for g, c in zip(grids, centre)]
    if ndim == 2:  # a random in-plane rotation
        a = rng.uniform(0, np.pi)
        offsets = [np.cos(a) * offsets[0] + np.sin(a) * offsets[1], -np.sin(a) * offsets[0] + np.cos(a) * offsets[1]]
    dist = np.sqrt(sum((o / r) ** 2 for o, r in zip(offsets, radii)))
    if kind == "blob":
        dist = dist + irregularity * _smooth_noise(shape, rng, float(np.mean(radii)) / 2.0)
    # soft edge about one voxel wide (in units of the normalised distance)
    edge = 1.0 / max(float(np.mean(radii)), 1.0)
    weight = 1.0 / (1.0 + np.exp(-(1.0 - dist) / (0.5 * edge)))
    weight = np.where(tissue, weight, 0.0)
    return weight, radii, centre


def plant_lesion(
    image: np.ndarray,
    seed: int | np.random.Generator = 0,
    *,
    kind: str = "ellipse",
    radius: float | Sequence[float] = 6.0,
    contrast: float = 0.5,
    texture: float = 0.0,
    irregularity: float = 0.35,
    centre: Sequence[float] | None = None,
    tissue: np.ndarray | None = None,
) -> Lesion:
    """Plant one lesion into ``image`` (2D (y, x) or 3D (z, y, x), scan units).

    kind:         ``"ellipse"`` (ellipsoid in 3D) or ``"blob"`` (border deformed by smooth noise);
    radius:       semi-axes in voxels (one number: a random aspect ratio 0.6-1 is drawn);
    contrast:     intensity change as a fraction of the median tissue intensity (+ bright, - dark);
    texture:      std of smooth multiplicative noise inside the lesion (0 = uniform);
    irregularity: how far the blob border moves, as a fraction of the radius;
    centre:       voxel position (default: a random tissue voxel far enough from the edge);
    tissue:       where lesions may be (default :func:`foreground` of the image); the lesion is
                  clipped to it, as real lesions stay inside the organ.
    """
    img, tissue, rng = _prepare(image, seed, kind, tissue)
    weight, radii, centre = _region(img.shape, tissue, rng, kind, radius, irregularity, centre)
    level = float(np.median(img[tissue]))
    mod = 1.0 + texture * _smooth_noise(img.shape, rng, 1.5) if texture > 0 else 1.0
    out = img + (contrast * level * weight * mod).astype(np.float32)
    mask = weight > 0.5
    params = {
        "kind": kind, "radius": [float(r) for r in radii], "contrast": float(contrast), "texture": float(texture),
        "centre": [float(c) for c in centre], "voxels": int(mask.sum()),
    }
    return Lesion(out.astype(np.float32), mask, params)


def random_lesion(
    image: np.ndarray,
    seed: int = 0,
    *,
    radius_range: tuple[float, float] = (3.0, 10.0),
    contrast_range: tuple[float, float] = (0.3, 0.8),
    dark_fraction: float = 0.3,
    texture_range: tuple[float, float] = (0.0, 0.3),
    tissue: np.ndarray | None = None,
) -> Lesion:
    """A lesion of random kind, size, contrast sign and magnitude, and texture, all drawn from ``seed``.

    A fraction ``dark_fraction`` of lesions are darker than tissue (negative contrast).
    """
    rng = np.random.default_rng(int(seed))
    kind = KINDS[int(rng.integers(len(KINDS)))]
    radius = float(rng.uniform(*radius_range))
    contrast = float(rng.uniform(*contrast_range)) * (-1.0 if rng.random() < dark_fraction else 1.0)
    texture = float(rng.uniform(*texture_range))
    return plant_lesion(image, rng, kind=kind, radius=radius, contrast=contrast, texture=texture, tissue=tissue)


def tissue_classes(image: np.ndarray, tissue: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two healthy tissue classes of a scan: (darker, brighter) tissue by Otsu's threshold inside the foreground."""
    from skimage.filters import threshold_otsu

    img = np.asarray(image, dtype=np.float32)
    tissue = foreground(img) if tissue is None else np.asarray(tissue, dtype=bool)
    vals = img[tissue]
    if vals.size < 2 or float(vals.max()) == float(vals.min()):
        raise ValueError("the foreground has no contrast to tell two tissues apart")
    split = threshold_otsu(vals)
    return tissue & (img <= split), tissue & (img > split)


def iso_intense_lesion(
    image: np.ndarray,
    seed: int | np.random.Generator = 0,
    *,
    kind: str = "blob",
    radius: float | Sequence[float] = 7.0,
    towards: str = "darker",
    texture: float = 0.05,
    irregularity: float = 0.35,
    centre: Sequence[float] | None = None,
    tissue: np.ndarray | None = None,
) -> Lesion:
    """A lesion *inside the normal intensity range*: one tissue given the level of another.

    The scan's tissue is split into a darker and a brighter class (:func:`tissue_classes`).
    With ``towards="darker"`` a soft-edged region of the brighter class is moved to the darker
    class's median (as an MS lesion on T1 takes white matter to grey-matter level); with
    ``"brighter"`` the reverse. Inside the lesion (weight ``w``) the voxel becomes
    ``level_to * (1 + texture * n) + (x - G_2 * x)``: the target level, smooth variation ``n``
    of std ``texture``, and the scan's own fine grain (``x`` minus its Gaussian blur, sigma 2
    voxels), blended with the original by ``w`` (the soft edge). Every lesion voxel then has an intensity that healthy tissue of the other
    class also has: an intensity-outlier detector cannot find it; only a model of anatomy can.
    The mask is where the lesion weight is above one half (inside the source class).
    """
    if towards not in ("darker", "brighter"):
        raise ValueError(f"towards must be 'darker' or 'brighter', got {towards!r}")
    img, tissue, rng = _prepare(image, seed, kind, tissue)
    dark, bright = tissue_classes(img, tissue)
    source, target = (bright, dark) if towards == "darker" else (dark, bright)
    if not source.any() or not target.any():
        raise ValueError("the image lacks one of the two tissue classes")
    weight, radii, centre = _region(img.shape, source, rng, kind, radius, irregularity, centre)
    level_from, level_to = float(np.median(img[source])), float(np.median(img[target]))
    mod = 1.0 + texture * _smooth_noise(img.shape, rng, 1.5) if texture > 0 else 1.0
    grain = img - ndi.gaussian_filter(img, 2.0)  # the scan's own fine texture and noise
    replaced = level_to * mod + grain
    out = img + (weight * (replaced - img)).astype(np.float32)
    mask = weight > 0.5
    params = {
        "kind": kind, "iso_intense": True, "towards": towards, "radius": [float(r) for r in radii],
        "from_level": level_from, "to_level": level_to, "texture": float(texture),
        "centre": [float(c) for c in centre], "voxels": int(mask.sum()),
    }
    return Lesion(out.astype(np.float32), mask, params)
