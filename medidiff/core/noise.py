"""Noise models for denoising: estimate, simulate and stabilise scan noise.

Three models cover the scans medidiff reads:

``"gaussian"``
    Additive white Gaussian noise of std ``sigma`` (CT, reconstructed data, "other").
``"rician"``
    Magnitude MR images: ``m = |A + n1 + i n2|`` with ``n1, n2 ~ N(0, sigma^2)``. Biased
    upwards where the signal ``A`` is low (background is Rayleigh distributed).
``"poisson-gaussian"``
    Photon-counting detectors (fluorescence microscopy, cameras):
    ``x = gain * Poisson(y / gain) + N(mu, sigma^2)`` so ``Var[x] = gain * (E[x] - mu) + sigma^2``.
    The generalised Anscombe transform maps it to unit-variance Gaussian noise.

All functions take numpy arrays: 2D images ``(y, x)`` or 3D volumes ``(z, y, x)``; volumes are
treated as stacks of 2D slices (noise is estimated in-plane, so anisotropic slice spacing or
slice-wise noise levels do not bias it). Arrays are never modified in place; results are float32
for integer or float32 input and float64 for float64 input.

Gaussian noise estimation (:func:`estimate_sigma`) is Donoho's wavelet MAD estimator (the finest
diagonal Daubechies-2 subband, the same estimator as ``skimage.restoration.estimate_sigma``)
restricted to *weak-texture* regions: a coefficient is used only where the energy of the two
other finest subbands (horizontal and vertical details) in a 5x5 neighbourhood is consistent,
at the 99% level of the chi-square law, with pure noise of the current estimate; the estimate is
iterated to a fixed point. The noise-only coefficients of the three subbands are independent, so
the selection does not bias the estimate, while edges and texture (which inflate the plain MAD
estimator by ~25% at 2% noise on ``skimage.data.camera``) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from scipy import ndimage as ndi
from scipy import special, stats

from medidiff.choices import NoiseModel as NoiseModelChoice

NoiseModel = Literal["gaussian", "rician", "poisson-gaussian"]
NOISE_MODELS: tuple[str, ...] = NoiseModelChoice.values()
assert NOISE_MODELS == get_args(NoiseModel)  # the Literal type and the torch-free choices agree

__all__ = [
    "NoiseModel",
    "NOISE_MODELS",
    "NoiseEstimate",
    "estimate_sigma",
    "add_gaussian",
    "add_rician",
    "estimate_sigma_rician",
    "rician_mean",
    "rician_bias_correct",
    "add_poisson_gaussian",
    "estimate_poisson_gaussian",
    "anscombe",
    "inverse_anscombe",
    "choose_noise_model",
    "add_noise",
    "estimate_noise",
]

# Daubechies-2 analysis filters (orthonormal: unit L2 norm, so white noise keeps its std)
_DB2_LO = np.array([-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025])
_DB2_HI = np.array([-0.48296291314469025, 0.836516303737469, -0.22414386804185735, -0.12940952255092145])
_MAD_TO_STD = 1.0 / stats.norm.ppf(0.75)  # 1.4826
_WINDOW = 5  # neighbourhood (in coefficients) for the weak-texture test
_MIN_SIDE = 8  # smallest slice side the wavelet estimators accept
_MIN_COEFFS = 64  # fewest selected coefficients an estimate is made from


# --------------------------------------------------------------------------------------------
# helpers


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _out_dtype(image: np.ndarray) -> np.dtype:
    return np.dtype(np.float64) if image.dtype == np.float64 else np.dtype(np.float32)


def _as_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{what} must be 2D (y, x) or 3D (z, y, x); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{what} must hold real numbers; got dtype {arr.dtype}")
    if arr.shape[-1] < _MIN_SIDE or arr.shape[-2] < _MIN_SIDE:
        raise ValueError(f"{what} slices must be at least {_MIN_SIDE}x{_MIN_SIDE} pixels; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or Inf values")
    return arr


def _slices(arr: np.ndarray) -> list[np.ndarray]:
    return [arr] if arr.ndim == 2 else [arr[i] for i in range(arr.shape[0])]


def _filter_down(x: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """Correlate with ``taps`` along ``axis`` and keep every second sample away from the border."""
    y = ndi.correlate1d(x, taps, axis=axis, mode="reflect")
    index = [slice(None)] * y.ndim
    index[axis] = slice(2, y.shape[axis] - 1, 2)
    return y[tuple(index)]


def _db2_bands(slice2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Finest-level 2D db2 subbands (LL, LH, HL, HH) without boundary coefficients."""
    x = np.asarray(slice2d, dtype=np.float64)
    low = _filter_down(x, _DB2_LO, 0)
    high = _filter_down(x, _DB2_HI, 0)
    return (
        _filter_down(low, _DB2_LO, 1),
        _filter_down(low, _DB2_HI, 1),
        _filter_down(high, _DB2_LO, 1),
        _filter_down(high, _DB2_HI, 1),
    )


def _nonzero(coeffs: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Coefficients that are not zero up to filtering round-off (constant regions give ~1e-16)."""
    return np.abs(coeffs) > 1e-10 * max(float(np.max(np.abs(source))), 1e-300)


def _to_coeff_grid(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A pixel mask sampled at the positions of the finest wavelet coefficients (``shape``)."""
    sub = mask[2::2, 2::2]
    return sub[: shape[0], : shape[1]]


def _mad_sigma(coeffs: np.ndarray) -> float:
    return float(np.median(np.abs(coeffs)) * _MAD_TO_STD)


# E[x^2 | |x| <= 4 sigma] / sigma^2 for Gaussian x
_TRUNC4 = float(1.0 - 8.0 * stats.norm.pdf(4.0) / (2.0 * stats.norm.cdf(4.0) - 1.0))


def _robust_variance(coeffs: np.ndarray) -> float:
    """Variance of zero-mean noise coefficients: mean square within 4 MAD-sigmas (outliers out).

    Unlike the squared MAD it stays unbiased for the skewed, discrete laws of low photon counts.
    """
    scale = _mad_sigma(coeffs)
    kept = coeffs[np.abs(coeffs) <= 4.0 * scale] if scale > 0 else coeffs
    return float(np.mean(kept * kept) / _TRUNC4) if kept.size else 0.0


def _energy_threshold(window: int = _WINDOW, quantile: float = 0.99) -> float:
    dof = 2 * window * window  # two subbands, window x window coefficients each
    return float(stats.chi2.ppf(quantile, dof) / dof)


def _sigma_slice(slice2d: np.ndarray, mask: np.ndarray | None = None, max_iter: int = 20) -> float:
    """Weak-texture wavelet MAD estimate of one slice (``nan`` when it has too few usable coefficients).

    ``mask`` (pixel grid) restricts the coefficients used; exactly-zero diagonal coefficients
    (constant, clipped or zero-filled regions) are always left out, as in scikit-image.
    """
    _, lh, hl, hh = _db2_bands(slice2d)
    valid = _nonzero(hh, slice2d)
    if mask is not None:
        valid &= _to_coeff_grid(np.asarray(mask, dtype=bool), hh.shape)
    if valid.sum() < _MIN_COEFFS:
        return float("nan")
    sigma = _mad_sigma(hh[valid])
    if sigma == 0:
        return 0.0
    energy = ndi.uniform_filter((lh * lh + hl * hl) / 2.0, _WINDOW, mode="reflect")
    threshold = _energy_threshold()
    for _ in range(max_iter):
        chosen = valid & (energy < threshold * sigma * sigma)
        if chosen.sum() < _MIN_COEFFS:
            break
        new = _mad_sigma(hh[chosen])
        converged = abs(new - sigma) <= 1e-4 * sigma
        sigma = new
        if converged or sigma == 0:
            break
    return float(sigma)


# --------------------------------------------------------------------------------------------
# Gaussian


def estimate_sigma(image: np.ndarray, per_slice: bool = False) -> float | np.ndarray:
    """Std of additive Gaussian noise, robust to image content (weak-texture wavelet MAD).

    2D images give a float. 3D volumes ``(z, y, x)`` are estimated slice by slice; the median
    over slices is returned unless ``per_slice`` is true, in which case an array of ``z`` values
    comes back (``nan`` for slices without usable content, e.g. constant ones).
    A noise-free constant image gives 0.
    """
    arr = _as_image(image)
    values = np.array([_sigma_slice(s) for s in _slices(arr)], dtype=np.float64)
    if arr.ndim == 3 and per_slice:
        return values
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else 0.0


def add_gaussian(image: np.ndarray, sigma: float, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """``image + N(0, sigma^2)`` (float copy; ``rng`` is a Generator or a seed)."""
    arr = np.asarray(image)
    noisy = arr.astype(np.float64) + _rng(rng).normal(0.0, float(sigma), arr.shape)
    return noisy.astype(_out_dtype(arr))


# --------------------------------------------------------------------------------------------
# Rician


def add_rician(image: np.ndarray, sigma: float, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Magnitude of ``image`` plus complex Gaussian noise of std ``sigma`` per channel.

    ``image`` is the noise-free magnitude ``A >= 0`` (negative values act as their absolute
    value); the result is Rician distributed with ``E[m^2] = A^2 + 2 sigma^2``.
    """
    arr = np.asarray(image)
    gen = _rng(rng)
    real = arr.astype(np.float64) + gen.normal(0.0, float(sigma), arr.shape)
    imag = gen.normal(0.0, float(sigma), arr.shape)
    return np.hypot(real, imag).astype(_out_dtype(arr))


def _rician_background(arr: np.ndarray, sigma_guess: float) -> tuple[float, float, int]:
    """Rayleigh fit on the dark background: (sigma, mean^2/meansq check ratio, voxels used)."""
    stack = arr.astype(np.float64) if arr.ndim == 3 else arr.astype(np.float64)[None]
    size = (1, _WINDOW, _WINDOW)
    local_mean = ndi.uniform_filter(stack, size=size, mode="reflect")
    nonzero = ndi.minimum_filter(np.abs(stack), size=size, mode="reflect") > 0  # no zero-filled voxels
    # a 5x5 mean of Rayleigh(sigma) voxels is sigma*sqrt(pi/2) with std 0.655*sigma/5
    cut = np.sqrt(np.pi / 2.0) + 3.0 * np.sqrt(2.0 - np.pi / 2.0) / _WINDOW
    sigma = sigma_guess
    chosen = np.zeros(stack.shape, dtype=bool)
    for _ in range(30):
        chosen = nonzero & (local_mean < cut * sigma)
        if chosen.sum() < 100:
            return float("nan"), float("nan"), int(chosen.sum())
        values = stack[chosen]
        new = float(np.sqrt(np.mean(values * values) / 2.0))
        converged = abs(new - sigma) <= 1e-4 * sigma
        sigma = new
        if converged:
            break
    values = stack[chosen]
    ratio = float(np.mean(values) ** 2 / np.mean(values * values))
    return sigma, ratio, int(chosen.sum())


def _rician_signal(arr: np.ndarray, sigma_guess: float, snr: float = 5.0) -> float:
    """Gaussian (weak-texture MAD) estimate on voxels whose local mean exceeds ``snr * sigma``.

    Above SNR 5 the Rician law is Gaussian to within 1% in std, so no correction is applied.
    """
    sigma = sigma_guess
    for _ in range(10):
        values = []
        for s in _slices(arr):
            local = ndi.uniform_filter(s.astype(np.float64), _WINDOW, mode="reflect")
            values.append(_sigma_slice(s, mask=local > snr * sigma))
        finite = np.array(values)[np.isfinite(values)]
        if finite.size == 0:
            return sigma
        new = float(np.median(finite))
        converged = abs(new - sigma) <= 1e-3 * sigma
        sigma = new
        if converged or sigma == 0:
            break
    return sigma


def _estimate_sigma_rician(arr: np.ndarray, method: str) -> tuple[float, str]:
    if method not in ("auto", "background", "signal"):
        raise ValueError(f"unknown Rician estimation method {method!r}; choose 'auto', 'background' or 'signal'")
    guess = float(estimate_sigma(arr))
    if guess == 0:
        return 0.0, "noise-free image"
    if method in ("auto", "background"):
        sigma, ratio, count = _rician_background(arr, guess)
        # Rayleigh: mean^2 / E[m^2] = pi/4 = 0.785; tissue at SNR >= 3 gives > 0.94
        rayleigh = np.isfinite(sigma) and 0.70 <= ratio <= 0.87 and count >= max(100, 0.01 * arr.size)
        if rayleigh or (method == "background" and np.isfinite(sigma)):
            return sigma, f"Rayleigh fit on {count} background voxels"
        if method == "background":
            raise ValueError("no noise-only background found; use method='signal'")
    return _rician_signal(arr, guess), "wavelet MAD on high-SNR (>5) voxels"


def estimate_sigma_rician(image: np.ndarray, method: str = "auto") -> float:
    """Per-channel noise std ``sigma`` of a magnitude MR image or volume.

    ``"background"``: voxels whose 5x5 in-plane mean is below the Rayleigh level are taken as
    noise-only background and fitted by Rayleigh maximum likelihood, ``sigma^2 = mean(m^2) / 2``
    (iterated; exactly-zero, i.e. masked, voxels are ignored). ``"signal"``: the Gaussian
    weak-texture estimator restricted to voxels with local SNR above 5, where Rician noise is
    Gaussian. ``"auto"`` (default) uses the background when one is found (at least 1% of voxels
    and a Rayleigh-like mean/second-moment ratio) and the signal method otherwise.
    """
    arr = _as_image(image)
    return _estimate_sigma_rician(arr, method)[0]


def rician_mean(signal: np.ndarray | float, sigma: float) -> np.ndarray:
    """``E[m]`` of Rician magnitude with noise-free amplitude ``signal`` and noise std ``sigma``.

    ``sigma * sqrt(pi/2) * L_{1/2}(-A^2 / 2 sigma^2)``, written with exponentially scaled Bessel
    functions so it is stable at any SNR.
    """
    a = np.abs(np.asarray(signal, dtype=np.float64))
    if sigma <= 0:
        return a
    t = a * a / (2.0 * sigma * sigma)
    return sigma * np.sqrt(np.pi / 2.0) * ((1.0 + t) * special.i0e(t / 2.0) + t * special.i1e(t / 2.0))


# table for inverting the Rician mean: amplitude/sigma -> mean/sigma (monotone)
_SNR_GRID = np.concatenate([np.linspace(0.0, 10.0, 2001), np.linspace(10.0, 60.0, 501)[1:]])
_MEAN_GRID = rician_mean(_SNR_GRID, 1.0)


def rician_bias_correct(image: np.ndarray, sigma: float, method: str = "mean") -> np.ndarray:
    """Remove the Rician bias from a magnitude image given the per-channel noise std ``sigma``.

    ``"mean"`` (default; for images that estimate ``E[m]``, such as a denoised or locally averaged
    magnitude, which is what the denoise task produces): inverts the exact Rician mean
    ``E[m] = rician_mean(A, sigma)`` for ``A`` (tabulated to SNR 60, ``sqrt(m^2 - sigma^2)``
    above; ``A = 0`` below the Rayleigh mean ``sigma * sqrt(pi/2)``).
    ``"moment"`` (for raw noisy magnitudes): the second-moment estimator
    ``sqrt(max(m^2 - 2 sigma^2, 0))`` of Gudbjartsson & Patz (1995), since
    ``E[m^2] = A^2 + 2 sigma^2``. It is unbiased for ``A^2`` but, pixel by pixel, over-corrects
    ``A`` at low SNR (about -16% at SNR 2), so average first where possible.
    """
    arr = np.asarray(image)
    m = np.abs(arr.astype(np.float64))
    sigma = float(sigma)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return m.astype(_out_dtype(arr))
    if method == "moment":
        out = np.sqrt(np.maximum(m * m - 2.0 * sigma * sigma, 0.0))
    elif method == "mean":
        ratio = m / sigma
        out = np.interp(ratio, _MEAN_GRID, _SNR_GRID) * sigma
        high = ratio > _MEAN_GRID[-1]
        out[high] = np.sqrt(m[high] ** 2 - sigma * sigma)
    else:
        raise ValueError(f"unknown Rician correction {method!r}; choose 'moment' or 'mean'")
    return out.astype(_out_dtype(arr))


# --------------------------------------------------------------------------------------------
# Poisson-Gaussian


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
    gen = _rng(rng)
    signal = np.maximum(arr.astype(np.float64), 0.0)
    noisy = gain * gen.poisson(signal / gain) if gain > 0 else signal.copy()
    noisy = noisy + gen.normal(0.0, sigma, arr.shape)
    return noisy.astype(_out_dtype(arr))


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
    arr = _as_image(image)
    slices = _slices(arr)
    if len(slices) > max_slices:
        slices = [slices[i] for i in np.linspace(0, len(slices) - 1, max_slices).round().astype(int)]
    lo, hi = float(arr.min()), float(arr.max())
    clip_lo = np.mean(arr == lo) > 1e-3
    clip_hi = np.mean(arr == hi) > 1e-3
    mus, lhs, hls, hhs = [], [], [], []
    for s in slices:
        s = s.astype(np.float64)
        ll, lh, hl, hh = _db2_bands(s)
        ok = _nonzero(hh, s)
        bad = np.zeros(s.shape, dtype=bool)
        if clip_lo:
            bad |= s == lo
        if clip_hi:
            bad |= s == hi
        if bad.any():
            ok &= ~_to_coeff_grid(ndi.binary_dilation(bad, iterations=2), hh.shape)
        mus.append(ll / 2.0)
        lhs.append(lh)
        hls.append(hl)
        hhs.append(np.where(ok, hh, np.nan))
    # local energy of the horizontal/vertical details and the local mean, per slice
    energies = [ndi.uniform_filter((lh * lh + hl * hl) / 2.0, _WINDOW, mode="reflect") for lh, hl in zip(lhs, hls)]
    local_mus = [ndi.uniform_filter(mu, _WINDOW, mode="reflect") for mu in mus]
    hh_all = np.concatenate([h.ravel() for h in hhs])
    energy_all = np.concatenate([e.ravel() for e in energies])
    local_all = np.concatenate([m.ravel() for m in local_mus])
    valid = np.isfinite(hh_all)
    if valid.sum() < 10 * _MIN_COEFFS:
        raise ValueError("image has too few non-constant pixels to estimate Poisson-Gaussian noise")
    threshold = _energy_threshold()

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
            variances.append(_robust_variance(hh[sel]))
            counts.append(sel.sum())
        return np.array(means), np.array(variances), np.array(counts, dtype=np.float64)

    chosen = valid
    a, b = _fit_affine_variance(*level_sets(chosen))
    for _ in range(10):
        predicted = np.maximum(a * local_all + b, 0.0)
        new_chosen = valid & (energy_all < threshold * predicted)
        if new_chosen.sum() < 10 * _MIN_COEFFS:
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
    return (2.0 / gain * np.sqrt(np.maximum(inside, 0.0))).astype(_out_dtype(arr))


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
    return (gain * inv + mu).astype(_out_dtype(arr))


# --------------------------------------------------------------------------------------------
# choosing and applying a model

_MICROSCOPY = {"SM", "GM", "XC", "MICROSCOPY", "FLUORESCENCE", "CONFOCAL", "WIDEFIELD", "LIGHTSHEET", "EM"}
_TIFF = {"tif", "tiff", "ome-tiff", "ome.tif", "ome.tiff"}


def choose_noise_model(modality: str, source_format: str | None = None) -> tuple[str, str]:
    """``(model, reason)`` for ``model="auto"`` from a DICOM-style modality code.

    MR -> ``"rician"`` (magnitude images); microscopy (``SM``, ``GM``, ``XC``, or words such as
    ``"microscopy"``/``"fluorescence"``), or ``"OT"`` read from a TIFF (``source_format``
    ``"tiff"``) -> ``"poisson-gaussian"``; CT and everything else -> ``"gaussian"``.
    """
    code = (modality or "OT").strip().upper()
    fmt = (source_format or "").strip().lower().lstrip(".")
    if code in ("MR", "MRI"):
        return "rician", "MR magnitude images have Rician noise"
    if code in _MICROSCOPY:
        return "poisson-gaussian", f"{code} (microscopy): photon counting gives Poisson-Gaussian noise"
    if code == "OT" and fmt in _TIFF:
        return "poisson-gaussian", "TIFF without a modality is treated as microscopy (Poisson-Gaussian noise)"
    if code == "CT":
        return "gaussian", "CT reconstructions have approximately Gaussian noise"
    return "gaussian", f"modality {code}: no specific model, Gaussian noise assumed"


def add_noise(
    image: np.ndarray, model: str, level: float, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Add noise of ``model`` at ``level`` relative to the image range (for tests and benchmarks).

    ``level`` is a fraction of ``R = max - min`` of ``image``. Gaussian/Rician: ``sigma = level * R``.
    Poisson-Gaussian: the signal ``image - min`` gets photon noise with ``gain = 0.8 level^2 R`` and
    read noise ``sigma = sqrt(0.2) level R``, so the total std at the brightest value is
    ``level * R`` (80% of the variance photon noise, 20% read noise); ``min`` is added back.
    """
    arr = np.asarray(image)
    if model not in NOISE_MODELS:
        raise ValueError(f"unknown noise model {model!r}; choose one of {NOISE_MODELS}")
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    values = arr.astype(np.float64)
    low = float(values.min())
    span = float(values.max()) - low
    if span == 0:
        span = 1.0
    if model == "gaussian":
        return add_gaussian(arr, level * span, rng)
    if model == "rician":
        return add_rician(arr, level * span, rng)
    if level == 0:
        return values.astype(_out_dtype(arr))
    gain = 0.8 * level * level * span
    noisy = add_poisson_gaussian(values - low, gain, np.sqrt(0.2) * level * span, rng) + low
    return noisy.astype(_out_dtype(arr))


@dataclass(frozen=True)
class NoiseEstimate:
    """What :func:`estimate_noise` found: the model, its parameters and why that model."""

    model: str
    sigma: float | np.ndarray
    gain: float | None
    reason: str


def estimate_noise(
    image: np.ndarray, model: str = "auto", modality: str = "OT", per_slice: bool = False,
    source_format: str | None = None,
) -> NoiseEstimate:
    """Pick (for ``model="auto"``, from ``modality``) and estimate a noise model's parameters.

    Gaussian: ``sigma`` (per slice when asked). Rician: the per-channel ``sigma``. Poisson-Gaussian:
    ``gain`` and read-noise ``sigma`` pooled over the volume (``per_slice`` does not apply).
    """
    if model == "auto":
        model, reason = choose_noise_model(modality, source_format)
    elif model in NOISE_MODELS:
        reason = f"noise model {model!r} chosen by the caller"
    else:
        raise ValueError(f"unknown noise model {model!r}; choose 'auto' or one of {NOISE_MODELS}")
    arr = _as_image(image)
    if model == "gaussian":
        return NoiseEstimate(model, estimate_sigma(arr, per_slice=per_slice), None, reason)
    if model == "rician":
        if per_slice and arr.ndim == 3:
            sigma = np.array([_estimate_sigma_rician(s, "auto")[0] for s in arr])
            return NoiseEstimate(model, sigma, None, reason + "; estimated per slice")
        sigma, how = _estimate_sigma_rician(arr, "auto")
        return NoiseEstimate(model, sigma, None, f"{reason}; {how}")
    gain, sigma = estimate_poisson_gaussian(arr)
    return NoiseEstimate(model, sigma, gain, reason + "; gain and read noise fitted on local mean/variance")

