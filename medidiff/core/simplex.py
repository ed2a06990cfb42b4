"""Simplex noise (Perlin 2001, as explained by Gustavson 2005), vectorised with numpy.

AnoDDPM (Wyatt et al. 2022) replaces the white Gaussian noise of a DDPM with multi-octave
simplex noise: smooth, low-frequency noise hides a whole lesion, so the model must rebuild it
from the surrounding healthy anatomy. :func:`fractal_noise` gives that noise for 2D images and
3D volumes, normalised to zero mean and unit variance so it can stand in for ``eps``.

Written here rather than pulled from a package: it is ~100 lines, needs only numpy, and works
on whole arrays at once (the pure-Python packages loop per pixel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# the 12 edge midpoints of a cube: gradient directions for 3D (their first two coordinates for 2D)
_GRAD3 = np.array(
    [[1, 1, 0], [-1, 1, 0], [1, -1, 0], [-1, -1, 0], [1, 0, 1], [-1, 0, 1],
     [1, 0, -1], [-1, 0, -1], [0, 1, 1], [0, -1, 1], [0, 1, -1], [0, -1, -1]],
    dtype=np.float64,
)
# 2D gradients: 8 evenly spread directions (the 2D part of _GRAD3 has zero vectors)
_GRAD2 = np.array([[np.cos(a), np.sin(a)] for a in np.arange(8) * np.pi / 4], dtype=np.float64)


def permutation_table(rng: np.random.Generator) -> np.ndarray:
    """A random permutation of 0..255, doubled so that ``perm[i + perm[j]]`` never overflows."""
    p = rng.permutation(256)
    return np.concatenate([p, p]).astype(np.int64)


def simplex2d(x: np.ndarray, y: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """2D simplex noise at points ``(x, y)`` (any equal shapes), values in about [-1, 1]."""
    f2 = 0.5 * (np.sqrt(3.0) - 1.0)
    g2 = (3.0 - np.sqrt(3.0)) / 6.0
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    s = (x + y) * f2
    i = np.floor(x + s).astype(np.int64)
    j = np.floor(y + s).astype(np.int64)
    t = (i + j) * g2
    x0, y0 = x - (i - t), y - (j - t)
    i1 = (x0 > y0).astype(np.int64)  # which of the two triangles of the skewed cell
    j1 = 1 - i1
    corners = [(x0, y0, 0, 0), (x0 - i1 + g2, y0 - j1 + g2, i1, j1), (x0 - 1 + 2 * g2, y0 - 1 + 2 * g2, 1, 1)]
    ii, jj = i & 255, j & 255
    total = np.zeros_like(x)
    for cx, cy, di, dj in corners:
        g = perm[ii + di + perm[jj + dj]] % 8
        r = np.maximum(0.5 - cx * cx - cy * cy, 0.0)
        total += r**4 * (_GRAD2[g, 0] * cx + _GRAD2[g, 1] * cy)
    return 70.0 * total


def simplex3d(x: np.ndarray, y: np.ndarray, z: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """3D simplex noise at points ``(x, y, z)`` (any equal shapes), values in about [-1, 1]."""
    f3, g3 = 1.0 / 3.0, 1.0 / 6.0
    x, y, z = (np.asarray(a, dtype=np.float64) for a in (x, y, z))
    s = (x + y + z) * f3
    i, j, k = (np.floor(a + s).astype(np.int64) for a in (x, y, z))
    t = (i + j + k) * g3
    x0, y0, z0 = x - (i - t), y - (j - t), z - (k - t)
    # the simplex (one of 6 tetrahedra) holding the point: step first along the largest offset
    i1 = ((x0 >= y0) & (x0 >= z0)).astype(np.int64)
    j1 = ((y0 > x0) & (y0 >= z0)).astype(np.int64)
    k1 = ((z0 > x0) & (z0 > y0)).astype(np.int64)
    i2 = ((x0 >= y0) | (x0 >= z0)).astype(np.int64)
    j2 = ((y0 > x0) | (y0 >= z0)).astype(np.int64)
    k2 = ((z0 > x0) | (z0 > y0)).astype(np.int64)
    corners = [
        (x0, y0, z0, 0, 0, 0),
        (x0 - i1 + g3, y0 - j1 + g3, z0 - k1 + g3, i1, j1, k1),
        (x0 - i2 + 2 * g3, y0 - j2 + 2 * g3, z0 - k2 + 2 * g3, i2, j2, k2),
        (x0 - 1 + 3 * g3, y0 - 1 + 3 * g3, z0 - 1 + 3 * g3, 1, 1, 1),
    ]
    ii, jj, kk = i & 255, j & 255, k & 255
    total = np.zeros_like(x)
    for cx, cy, cz, di, dj, dk in corners:
        g = perm[ii + di + perm[jj + dj + perm[kk + dk]]] % 12
        r = np.maximum(0.6 - cx * cx - cy * cy - cz * cz, 0.0)
        total += r**4 * (_GRAD3[g, 0] * cx + _GRAD3[g, 1] * cy + _GRAD3[g, 2] * cz)
    return 32.0 * total


def fractal_noise(
    shape: Sequence[int],
    seed: int | np.random.Generator = 0,
    *,
    scale: float | None = None,
    octaves: int = 6,
    persistence: float = 0.8,
    normalise: bool = True,
) -> np.ndarray:
    """Multi-octave simplex noise of ``shape`` (2D or 3D), float32.

    scale:       size in voxels of the coarsest features (default: a quarter of the largest side,
                 as AnoDDPM's 64 pixels on 256-pixel images);
    octaves:     number of layers, each at twice the frequency of the one before (layers finer
                 than 2 voxels are skipped: they would only alias);
    persistence: amplitude ratio between successive octaves;
    normalise:   shift and scale to zero mean and unit variance (to replace Gaussian ``eps``).

    The same ``seed`` always gives the same noise.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"simplex noise is 2D or 3D; got shape {shape}")
    if octaves < 1:
        raise ValueError(f"octaves must be >= 1, got {octaves}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))
    scale = float(scale) if scale else max(max(shape) / 4.0, 2.0)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    out = np.zeros(shape, dtype=np.float64)
    amplitude, period = 1.0, scale
    for _ in range(octaves):
        if period < 2.0 and out.any():
            break
        perm = permutation_table(rng)
        offset = rng.uniform(0, 256, size=len(shape))  # decorrelates octaves and samples
        coords = [g / period + o for g, o in zip(grids, offset)]
        out += amplitude * (simplex2d(*coords, perm) if len(shape) == 2 else simplex3d(*coords, perm))
        amplitude *= persistence
        period /= 2.0
    if normalise:
        std = out.std()
        out = (out - out.mean()) / (std if std > 0 else 1.0)
    return out.astype(np.float32)
