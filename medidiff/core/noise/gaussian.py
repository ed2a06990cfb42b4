"""Additive white Gaussian noise: ``y = x + N(0, sigma^2)`` (CT, reconstructed data, "other").

simulate:       :func:`add_gaussian`.
estimate:       :func:`estimate_sigma`, the weak-texture wavelet MAD estimator of
                :mod:`medidiff.core.noise.wavelet`, slice by slice for volumes (noise is
                estimated in-plane, so anisotropic slices or slice-wise levels do not bias it).
to/from_gaussian: the identity; :func:`domain` builds the :class:`NoiseDomain`.

The estimator is equivariant to affine intensity maps: ``estimate_sigma(a*x + b) = |a| *
estimate_sigma(x)`` (wavelet detail coefficients ignore offsets and scale linearly).
"""

from __future__ import annotations

import numpy as np

from medidiff.core.noise._common import as_image, as_rng, out_dtype, slices_of
from medidiff.core.noise.domain import NoiseDomain, identity
from medidiff.core.noise.wavelet import sigma_slice

__all__ = ["estimate_sigma", "add_gaussian", "simulate", "estimate", "to_gaussian", "from_gaussian", "domain"]


def estimate_sigma(image: np.ndarray, per_slice: bool = False) -> float | np.ndarray:
    """Std of additive Gaussian noise, robust to image content (weak-texture wavelet MAD).

    2D images give a float. 3D volumes ``(z, y, x)`` are estimated slice by slice; the median
    over slices is returned unless ``per_slice`` is true, in which case an array of ``z`` values
    comes back (``nan`` for slices without usable content, e.g. constant ones).
    A noise-free constant image gives 0.
    """
    arr = as_image(image)
    values = np.array([sigma_slice(s) for s in slices_of(arr)], dtype=np.float64)
    if arr.ndim == 3 and per_slice:
        return values
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else 0.0


def add_gaussian(image: np.ndarray, sigma: float, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """``image + N(0, sigma^2)`` (float copy; ``rng`` is a Generator or a seed)."""
    arr = np.asarray(image)
    noisy = arr.astype(np.float64) + as_rng(rng).normal(0.0, float(sigma), arr.shape)
    return noisy.astype(out_dtype(arr))


simulate = add_gaussian
estimate = estimate_sigma
to_gaussian = identity
from_gaussian = identity


def domain(sigma: np.ndarray) -> NoiseDomain:
    """The Gaussian domain: the scan itself, noise std ``sigma`` per item."""
    return NoiseDomain("gaussian", np.asarray(sigma, dtype=np.float64))
