"""A fixed feature space for 2D images: what KID and MMD compare (no learned weights, no download).

Each image is resized to ``FEATURE_SIZE`` squared and described by four blocks of equal weight:
its intensity histogram, histograms of oriented gradients at two scales, a radial power spectrum
and an 8x8 thumbnail (details in :func:`image_features`). These see brightness, edges, texture
scale and coarse layout; they do not see anatomy (which structure is where): two sets can match
here and still differ to a reader.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["FEATURE_SIZE", "image_features"]


FEATURE_SIZE = 64
_HIST_BINS = 32
_N_BLOCKS = 4


def _as_stack(images: np.ndarray | Sequence[np.ndarray], name: str = "images") -> np.ndarray:
    if isinstance(images, np.ndarray):
        stack = images.astype(np.float64, copy=False)
    else:
        stack = np.stack([np.asarray(im, dtype=np.float64) for im in images])
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"{name} must be one 2D image or a (N, H, W) stack; got shape {stack.shape}")
    if stack.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return stack


def _radial_profile(power: np.ndarray) -> np.ndarray:
    size = power.shape[-1]
    fy = np.fft.fftfreq(size) * size
    radius = np.sqrt(fy[:, None] ** 2 + fy[None, :] ** 2).round().astype(int).ravel()
    n_r = size // 2
    keep = (radius >= 1) & (radius <= n_r)
    counts = np.bincount(radius[keep] - 1, minlength=n_r)
    flat = power.reshape(power.shape[0], -1)[:, keep]
    sums = np.stack([np.bincount(radius[keep] - 1, weights=row, minlength=n_r) for row in flat])
    return sums / counts


def image_features(
    images: np.ndarray | Sequence[np.ndarray], value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """A fixed, deterministic, download-free feature vector per 2D image: ``(N, 488)`` float64.

    Each image is resized to 64x64 (bilinear, anti-aliased; aspect ratio not kept) and mapped to
    [0, 1]: by ``value_range`` (e.g. the model normaliser's ``(low, high)``, so absolute intensity
    counts) or, by default, by the image's own 1st-99th percentiles. Four blocks follow:

    1. intensity histogram, 32 bins on [0, 1] (values outside clipped), square-rooted (L2 norm 1);
    2. histograms of oriented gradients (``skimage.feature.hog``, 9 orientations, L2-Hys) with 16-
       and 32-pixel cells (2x2-cell blocks): 324 + 36 values, each scale scaled to norm <= 1;
    3. radially averaged power spectrum (Hann-windowed, mean removed), radii 1..32, as
       ``(log10(share of power) + 8) / 8`` clipped to [0, 1], scaled to norm <= 1;
    4. an 8x8 thumbnail (block means), scaled to norm <= 1.

    The vector is multiplied by ``sqrt(488 / 4)`` so entries are of order 1, as the KID kernel
    ``(x.y / d + 1)^3`` expects. No learned weights: it sees intensity, edges, texture scale and
    layout, not semantics, so compare scores only between runs that use it.
    """
    from skimage.feature import hog
    from skimage.transform import resize

    stack = _as_stack(images)
    size = FEATURE_SIZE
    small = np.stack(
        [resize(im, (size, size), order=1, anti_aliasing=True, preserve_range=True) for im in stack]
    ) if stack.shape[1:] != (size, size) else stack.copy()
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"value_range must be increasing, got {value_range}")
        lo_arr, hi_arr = np.full(len(small), lo), np.full(len(small), hi)
    else:
        lo_arr, hi_arr = np.percentile(small.reshape(len(small), -1), [1.0, 99.0], axis=1)
    span = np.where(hi_arr > lo_arr, hi_arr - lo_arr, 1.0)
    unit = np.clip((small - lo_arr[:, None, None]) / span[:, None, None], 0.0, 1.0)

    # 1. intensity histogram
    bins = np.minimum((unit * _HIST_BINS).astype(int), _HIST_BINS - 1).reshape(len(unit), -1)
    hist = np.stack([np.bincount(b, minlength=_HIST_BINS) for b in bins]) / bins.shape[1]
    block_hist = np.sqrt(hist)

    # 2. HOG at two cell sizes
    hogs = []
    for im in unit:
        parts = []
        for cell in (16, 32):
            h = hog(im, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2),
                    block_norm="L2-Hys", feature_vector=True)
            n_blocks = (size // cell - 1) ** 2
            parts.append(h / np.sqrt(n_blocks))
        hogs.append(np.concatenate(parts) / np.sqrt(2.0))
    block_hog = np.stack(hogs)

    # 3. radially averaged power spectrum
    window = np.outer(np.hanning(size), np.hanning(size))
    centred = (unit - unit.mean(axis=(1, 2), keepdims=True)) * window
    power = np.abs(np.fft.fft2(centred)) ** 2
    profile = _radial_profile(power)
    share = profile / np.maximum(profile.sum(axis=1, keepdims=True), 1e-30)
    block_spec = np.clip((np.log10(share + 1e-8) + 8.0) / 8.0, 0.0, 1.0) / np.sqrt(profile.shape[1])

    # 4. 8x8 thumbnail
    thumb = unit.reshape(len(unit), 8, size // 8, 8, size // 8).mean(axis=(2, 4)).reshape(len(unit), -1) / 8.0

    feats = np.concatenate([block_hist, block_hog, block_spec, thumb], axis=1)
    return feats * np.sqrt(feats.shape[1] / _N_BLOCKS)
