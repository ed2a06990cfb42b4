"""Poisson-Gaussian noise of photon-counting detectors (fluorescence microscopy, cameras).

``x = gain * Poisson(y / gain) + N(mu, sigma^2)``, so ``Var[x] = gain * (E[x] - mu) + sigma^2``.

simulate:       :func:`add_poisson_gaussian`.
estimate:       :func:`estimate_poisson_gaussian` (Foi et al. 2008 style level-set fit of the
                local variance against the local mean).
to_gaussian:    the generalised Anscombe transform :func:`anscombe`, which maps the noise to
                unit-variance Gaussian noise.
from_gaussian:  :func:`inverse_anscombe`, the closed-form approximation of the exact unbiased
                inverse (Makitalo & Foi).

:func:`domain` builds the denoising domain: the Anscombe transform followed by an affine map
``(z - b) / a`` back to scan units, with ``a, b`` the least-squares fit of the transform over
this image's own values. The network thus sees an image as close as possible (in mean square) to
the scan's units, with *signal-independent* Gaussian noise of std ``1 / a`` -- exactly what a
diffusion prior can remove. The denoised image goes back through ``a x + b`` and the unbiased
inverse. Denoising in scan units with one sigma would over-smooth dark regions and under-smooth
bright ones; the network takes a single time per image, so a per-pixel sigma is not an option.
The whole chain is equivariant to a positive scaling ``c`` of the scan: ``gain`` and ``sigma``
scale with ``c``, the Anscombe values do not change, and ``a`` scales with ``1 / c``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from medidiff.core.noise._common import MIN_COEFFS, WINDOW, as_image, as_rng, out_dtype, slices_of
from medidiff.core.noise.domain import NoiseDomain
from medidiff.core.noise.wavelet import (db2_bands, energy_threshold, nonzero_coeffs, robust_variance,
                                         to_coeff_grid)

__all__ = ["add_poisson_gaussian", "estimate_poisson_gaussian", "anscombe", "inverse_anscombe", "simulate",
           "estimate", "to_gaussian", "from_gaussian", "domain"]


def add_poisson_gaussian(
    image: np.ndarray, gain: float, sigma: float, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """``gain * Poisson(image / gain) + N(0, sigma^2)``: photon noise plus read noise.

    ``image`` is the noise-free signal in output units (negative values count as zero photons);
    ``gain`` is output units per photon (``gain = 0`` adds Gaussian noise only), so
    ``Var[x] = gain * image + sigma^2``.
    """
    arr = np.asarray(image)
    gain, sigma = float(gain), float(sigma)
    if gain < 0 or sigma < 0:
        raise ValueError(f"gain and sigma must be >= 0, got gain={gain}, sigma={sigma}")
    gen = as_rng(rng)
    signal = np.maximum(arr.astype(np.float64), 0.0)
    noisy = gain * gen.poisson(signal / gain) if gain > 0 else signal.copy()
    noisy = noisy + gen.normal(0.0, sigma, arr.shape)
    return noisy.astype(out_dtype(arr))


def _fit_affine_variance(means: np.ndarray, variances: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """Weighted least squares ``var = a * mean + b`` with ``a >= 0`` (weights ~ n / var^2)."""
    a, b = 0.0, float(np.average(variances, weights=counts))
    for _ in range(10):
        predicted = np.maximum(a * means + b, 1e-12 * max(1.0, float(variances.max())))
        w = counts / predicted**2
        design = np.stack([means, np.ones_like(means)], axis=1)
        lhs = design.T @ (design * w[:, None])
        rhs = design.T @ (w * variances)
        try:
            a_new, b_new = np.linalg.solve(lhs, rhs)
        except np.linalg.LinAlgError:
            break
        if a_new < 0:
            a_new, b_new = 0.0, float(np.average(variances, weights=w))
        if abs(a_new - a) <= 1e-6 * (abs(a) + 1e-12) and abs(b_new - b) <= 1e-6 * (abs(b) + 1e-12):
            a, b = float(a_new), float(b_new)
            break
        a, b = float(a_new), float(b_new)
    return a, b


def estimate_poisson_gaussian(image: np.ndarray, max_slices: int = 64) -> tuple[float, float]:
    """Estimate ``(gain, sigma)`` of ``x = gain * Poisson(y / gain) + N(0, sigma^2)`` from one image.

    Foi et al. (2008) style: finest db2 wavelet coefficients give the local mean (LL / 2) and noise
    (diagonal detail); coefficients in weak-texture neighbourhoods (horizontal/vertical detail
    energy consistent with the current noise-variance prediction ``gain * mean + sigma^2`` at the
    99% level) are grouped into equal-count level sets by local mean, the noise variance of each
    is estimated robustly (MAD), and ``var = gain * mean + b`` is fitted by weighted least squares;
    selection and fit are iterated. Voxels touching clipped values (the image min/max when they
    cover >0.1% of voxels) are left out. ``sigma = sqrt(max(b, 0))``: a camera pedestal
    ``mu`` makes ``b = sigma^2 - gain * mu``, which is what the generalised Anscombe transform
    needs. Volumes are pooled over at most ``max_slices`` evenly spaced slices.
    """
    arr = as_image(image)
    slices = slices_of(arr)
    if len(slices) > max_slices:
        slices = [slices[i] for i in np.linspace(0, len(slices) - 1, max_slices).round().astype(int)]
    lo, hi = float(arr.min()), float(arr.max())
    clip_lo = np.mean(arr == lo) > 1e-3
    clip_hi = np.mean(arr == hi) > 1e-3
    mus, lhs, hls, hhs = [], [], [], []
    for s in slices:
        s = s.astype(np.float64)
        ll, lh, hl, hh = db2_bands(s)
        ok = nonzero_coeffs(hh, s)
        bad = np.zeros(s.shape, dtype=bool)
        if clip_lo:
            bad |= s == lo
        if clip_hi:
            bad |= s == hi
        if bad.any():
            ok &= ~to_coeff_grid(ndi.binary_dilation(bad, iterations=2), hh.shape)
        mus.append(ll / 2.0)
        lhs.append(lh)
        hls.append(hl)
        hhs.append(np.where(ok, hh, np.nan))
    # local energy of the horizontal/vertical details and the local mean, per slice
    energies = [ndi.uniform_filter((lh * lh + hl * hl) / 2.0, WINDOW, mode="reflect") for lh, hl in zip(lhs, hls)]
    local_mus = [ndi.uniform_filter(mu, WINDOW, mode="reflect") for mu in mus]
    hh_all = np.concatenate([h.ravel() for h in hhs])
    energy_all = np.concatenate([e.ravel() for e in energies])
    local_all = np.concatenate([m.ravel() for m in local_mus])
    valid = np.isfinite(hh_all)
    if valid.sum() < 10 * MIN_COEFFS:
        raise ValueError("image has too few non-constant pixels to estimate Poisson-Gaussian noise")
    threshold = energy_threshold()

    def level_sets(chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mu, hh = local_all[chosen], hh_all[chosen]
        n_bins = int(np.clip(mu.size // 400, 2, 40))
        edges = np.quantile(mu, np.linspace(0.0, 1.0, n_bins + 1))
        which = np.clip(np.searchsorted(edges, mu, side="right") - 1, 0, n_bins - 1)
        means, variances, counts = [], [], []
        for k in range(n_bins):
            sel = which == k
            if sel.sum() < 50:
                continue
            means.append(mu[sel].mean())
            variances.append(robust_variance(hh[sel]))
            counts.append(sel.sum())
        return np.array(means), np.array(variances), np.array(counts, dtype=np.float64)

    chosen = valid
    a, b = _fit_affine_variance(*level_sets(chosen))
    for _ in range(10):
        predicted = np.maximum(a * local_all + b, 0.0)
        new_chosen = valid & (energy_all < threshold * predicted)
        if new_chosen.sum() < 10 * MIN_COEFFS:
            break
        a_new, b_new = _fit_affine_variance(*level_sets(new_chosen))
        change = abs(a_new - a) / (abs(a) + 1e-12) + abs(b_new - b) / (abs(b) + 1e-12)
        a, b, chosen = a_new, b_new, new_chosen
        if change < 1e-3:
            break
    return float(a), float(np.sqrt(max(b, 0.0)))


def anscombe(x: np.ndarray, gain: float = 1.0, sigma: float = 0.0, mu: float = 0.0) -> np.ndarray:
    """Generalised Anscombe transform: Poisson-Gaussian noise -> approximately N(0, 1).

    ``2 / gain * sqrt(max(gain * x + 3/8 gain^2 + sigma^2 - gain * mu, 0))`` for
    ``x = gain * Poisson + N(mu, sigma^2)`` (Murtagh, Starck & Bijaoui 1995). With ``gain = 1,
    sigma = mu = 0`` it is the classical Anscombe transform ``2 sqrt(x + 3/8)``.
    """
    if gain <= 0:
        raise ValueError(f"gain must be > 0 for the Anscombe transform, got {gain}")
    arr = np.asarray(x)
    z = np.asarray(arr, dtype=np.float64)
    inside = gain * z + 0.375 * gain * gain + sigma * sigma - gain * mu
    return (2.0 / gain * np.sqrt(np.maximum(inside, 0.0))).astype(out_dtype(arr))


_ANSCOMBE_D_MIN = 0.838  # minimum of the closed-form inverse (value -0.241 - s^2 < 0)


def inverse_anscombe(y: np.ndarray, gain: float = 1.0, sigma: float = 0.0, mu: float = 0.0) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of :func:`anscombe`.

    Makitalo & Foi (IEEE TIP 2011, 2013): for a denoised value ``D`` (an estimate of
    ``E[anscombe(x)]``) with ``s = sigma / gain``,
    ``I(D) = D^2/4 + sqrt(3/2)/4 D^-1 - 11/8 D^-2 + 5/8 sqrt(3/2) D^-3 - 1/8 - s^2``,
    clipped at 0, and ``x = gain * I(D) + mu``. Unlike the algebraic inverse ``D^2/4 - 3/8 - s^2``
    it removes the bias of the square root at low counts. It is an approximation of the exact
    unbiased inverse (which has no closed form): accurate to well under 1% of the signal for
    means above ~1 photon, less so below. ``D`` below 0.838 (where the expansion turns back up)
    maps to ``mu``.
    """
    if gain <= 0:
        raise ValueError(f"gain must be > 0 for the Anscombe transform, got {gain}")
    arr = np.asarray(y)
    d = np.maximum(np.asarray(arr, dtype=np.float64), 1e-3)
    s = sigma / gain
    r = np.sqrt(1.5)
    inv = 0.25 * d * d + 0.25 * r / d - 1.375 / d**2 + 0.625 * r / d**3 - 0.125 - s * s
    # the expansion has its minimum (negative, so clipped to 0) at D = 0.838 and turns back up
    # below it, where the signal is 0 too
    inv = np.where(d < _ANSCOMBE_D_MIN, 0.0, np.maximum(inv, 0.0))
    return (gain * inv + mu).astype(out_dtype(arr))


simulate = add_poisson_gaussian
estimate = estimate_poisson_gaussian
to_gaussian = anscombe
from_gaussian = inverse_anscombe

_FIT_VOXELS = 1_000_000  # the affine fit needs no more; a fixed stride keeps it deterministic


def domain(items: np.ndarray, gain: float, read: float) -> NoiseDomain:
    """The rescaled Anscombe domain of ``items`` (``gain > 0``; ``read`` is the read-noise std)."""
    x = np.asarray(items, dtype=np.float64).ravel()
    z = np.asarray(anscombe(x, gain, read), dtype=np.float64)
    if x.size > _FIT_VOXELS:
        step = x.size // _FIT_VOXELS + 1
        x, z = x[::step], z[::step]
    a, b = np.polyfit(x, z, 1) if np.ptp(x) > 0 else (0.0, 0.0)
    if not np.isfinite(a) or a <= 0:
        raise ValueError("the Anscombe transform of this image is not increasing in its values")

    def forward(arr: np.ndarray) -> np.ndarray:
        return ((anscombe(np.asarray(arr, dtype=np.float64), gain, read) - b) / a).astype(np.float32)

    def inverse(arr: np.ndarray, i: int = 0) -> np.ndarray:
        return inverse_anscombe(a * np.asarray(arr, dtype=np.float64) + b, gain, read).astype(np.float32)

    note = (f"Anscombe domain rescaled by 1/{a:.4g} (unit-variance noise -> std {1 / a:.4g} scan units), "
            "exact unbiased inverse")
    n = int(np.shape(items)[0])
    return NoiseDomain("poisson-gaussian", np.full(n, 1.0 / a), forward, inverse, gain=gain, sigma_read=read, note=note)
