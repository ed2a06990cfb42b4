"""``NoiseDomain``: where a scan's noise is additive white Gaussian, and the way there and back.

A Gaussian denoiser (the diffusion prior) removes noise of one known std. Each noise model
gives a map ``to_gaussian`` from scan units to a domain where the noise is (close to) additive
Gaussian of std ``sigma``, and ``from_gaussian``, the map from a *denoised* image in that domain
back to scan units (the identity for Gaussian noise; for Rician noise the variance-stabilising
transform and its posterior-mean inverse, or the Rician mean inversion, :mod:`.rician`; the
exact unbiased inverse Anscombe transform for Poisson-Gaussian noise). The domain
works on a stack of items ``(N, ...)`` (slices of a volume, or one image); ``sigma`` has one
value per item, and ``from_gaussian`` takes the item's index because the Rician correction
uses that item's own ``sigma``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["NoiseDomain", "identity"]


def identity(x: np.ndarray, index: int = 0) -> np.ndarray:
    """The identity map (Gaussian noise needs no transform)."""
    return x


@dataclass(frozen=True)
class NoiseDomain:
    """A per-item map to a domain with Gaussian noise of std ``sigma`` and back.

    ``model``: the noise model name. ``sigma``: one std per item, in the domain's units (scan
    units for Gaussian and Rician noise; for Poisson-Gaussian noise the Anscombe domain affinely
    rescaled to scan units). ``gain`` and ``sigma_read``: the Poisson-Gaussian parameters.
    ``note``: one phrase saying what the maps do (for reports). ``signal_of_mean``: a local mean
    of the noisy scan (scan units) -> the noise-free signal (the Rician bias correction; the
    identity where the noise has zero mean), used to fit per-scan intensity normalisers.
    """

    model: str
    sigma: np.ndarray
    forward: Callable[[np.ndarray], np.ndarray] = field(default=identity, repr=False)
    inverse: Callable[[np.ndarray, int], np.ndarray] = field(default=identity, repr=False)
    gain: float | None = None
    sigma_read: float | None = None
    note: str = ""
    signal_of_mean: Callable[[np.ndarray], np.ndarray] = field(default=identity, repr=False)

    def std_at(self, level: float | np.ndarray) -> np.ndarray:
        """The noise std in scan units at signal ``level`` (for noise-aware intensity normalisers).

        Gaussian noise: the median ``sigma`` at every level. Rician noise: the same where the
        signal is above ``2 sigma`` (there it is close to Gaussian of that std), 0 below, where
        ``signal_of_mean`` has already mapped the noisy background onto its noise-free level.
        Poisson-Gaussian noise: ``sqrt(gain * level + sigma_read^2)``, the affine variance the
        estimator fitted.
        """
        lv = np.asarray(level, dtype=np.float64)
        if self.model == "poisson-gaussian" and self.gain is not None:
            read = float(self.sigma_read or 0.0)
            return np.sqrt(np.maximum(self.gain * lv + read * read, 0.0))
        sigma = float(np.median(self.sigma)) if np.size(self.sigma) else 0.0
        if self.model == "rician":
            return np.where(lv > 2.0 * sigma, sigma, 0.0)
        return np.full(lv.shape, sigma)

    def to_gaussian(self, items: np.ndarray) -> np.ndarray:
        """Scan units -> the Gaussian-noise domain (the whole stack of items)."""
        return self.forward(items)

    def from_gaussian(self, item: np.ndarray, index: int = 0) -> np.ndarray:
        """A denoised item (number ``index`` of the stack) back to scan units."""
        return self.inverse(item, index)

    def from_gaussian_stack(self, items: np.ndarray, indices: list[int] | range | None = None) -> np.ndarray:
        """:meth:`from_gaussian` for each item of ``items`` (item ``k`` is number ``indices[k]``)."""
        idx = range(len(items)) if indices is None else indices
        return np.stack([self.inverse(a, j) for a, j in zip(items, idx)])
