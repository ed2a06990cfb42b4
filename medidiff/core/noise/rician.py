"""Rician noise of magnitude MR images: ``m = |A + n1 + i n2|`` with ``n1, n2 ~ N(0, sigma^2)``.

The magnitude is biased upwards where the signal ``A`` is low (the background is Rayleigh
distributed, mean ``sigma sqrt(pi/2)``, std ``0.655 sigma``); ``E[m^2] = A^2 + 2 sigma^2``.

simulate:       :func:`add_rician`.
estimate:       :func:`estimate_sigma_rician` (Rayleigh fit on the background, or the Gaussian
                estimator on high-SNR voxels).
to_gaussian / from_gaussian: :func:`domain`, one of :data:`TRANSFORMS`:

``"vst-mmse"`` (the default) and ``"vst"``: denoise ``sigma F(m / sigma)``, the variance-stabilising
transform of :mod:`.rician_vst` (noise std ~``sigma`` at every SNR, background centred on 0, so a
noise-only region looks like the zero-mean Gaussian noise the prior was trained to remove), then
invert ``g(A) = E[F(m) | A]`` exactly (the exact unbiased inverse). Every inverse of a mean is
flat at ``A = 0`` (the Rice law depends on ``A^2`` to first order): a denoised background
``D = e``, ``e ~ N(0, tau^2)``, comes back as ``A ~ sqrt(tau)`` wherever ``e > 0``. ``"vst-mmse"``
therefore replaces the inverse by the posterior mean ``E[A | D]`` for ``D = g(A) + e``, under a
spike-at-0 plus flat prior whose weight is fitted by EM on the image, with ``tau`` measured on the
denoised background itself (``E[e^2 | e < 0] = tau^2``; :func:`.rician_vst.posterior_inverse`);
above ``A = 10 sigma`` it is the plain inverse, so high-SNR amplitudes come back unchanged.

``"mean"`` (the former default): denoise the magnitude as it is (the output estimates ``E[m]``)
and invert the exact Rician mean (:func:`rician_bias_correct`, ``method="mean"``). Measured on
``mr2d`` (``benchmarks/README.md``, "Rician: variance-stabilised denoising"), the prior's
estimate of the Rayleigh background is then biased upwards (by 10 % at 20 % noise), and the
inversion's infinite slope at the floor turns that into a background of ``0.6 sigma``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy import special

from medidiff.core.noise._common import WINDOW, as_image, as_rng, out_dtype, slices_of
from medidiff.core.noise import rician_vst
from medidiff.core.noise.domain import NoiseDomain, identity
from medidiff.core.noise.gaussian import estimate_sigma
from medidiff.core.noise.wavelet import sigma_slice

__all__ = ["add_rician", "estimate_with_reason", "estimate_sigma_rician", "rician_mean", "rician_bias_correct", "simulate",
           "estimate", "to_gaussian", "from_gaussian", "domain"]


def add_rician(image: np.ndarray, sigma: float, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Magnitude of ``image`` plus complex Gaussian noise of std ``sigma`` per channel.

    ``image`` is the noise-free magnitude ``A >= 0`` (negative values act as their absolute
    value); the result is Rician distributed with ``E[m^2] = A^2 + 2 sigma^2``.
    """
    arr = np.asarray(image)
    gen = as_rng(rng)
    real = arr.astype(np.float64) + gen.normal(0.0, float(sigma), arr.shape)
    imag = gen.normal(0.0, float(sigma), arr.shape)
    return np.hypot(real, imag).astype(out_dtype(arr))


def _rician_background(arr: np.ndarray, sigma_guess: float) -> tuple[float, float, int]:
    """Rayleigh fit on the dark background: (sigma, mean^2/meansq check ratio, voxels used)."""
    stack = arr.astype(np.float64) if arr.ndim == 3 else arr.astype(np.float64)[None]
    size = (1, WINDOW, WINDOW)
    local_mean = ndi.uniform_filter(stack, size=size, mode="reflect")
    nonzero = ndi.minimum_filter(np.abs(stack), size=size, mode="reflect") > 0  # no zero-filled voxels
    # a 5x5 mean of Rayleigh(sigma) voxels is sigma*sqrt(pi/2) with std 0.655*sigma/5
    cut = np.sqrt(np.pi / 2.0) + 3.0 * np.sqrt(2.0 - np.pi / 2.0) / WINDOW
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
        for s in slices_of(arr):
            local = ndi.uniform_filter(s.astype(np.float64), WINDOW, mode="reflect")
            values.append(sigma_slice(s, mask=local > snr * sigma))
        finite = np.array(values)[np.isfinite(values)]
        if finite.size == 0:
            return sigma
        new = float(np.median(finite))
        converged = abs(new - sigma) <= 1e-3 * sigma
        sigma = new
        if converged or sigma == 0:
            break
    return sigma


def estimate_with_reason(arr: np.ndarray, method: str = "auto") -> tuple[float, str]:
    """``(sigma, how it was estimated)`` for :func:`estimate_sigma_rician` (``arr`` already checked)."""
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
    arr = as_image(image)
    return estimate_with_reason(arr, method)[0]


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
    magnitude, as the denoise task produces with ``transform="mean"``): inverts the exact Rician mean
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
        return m.astype(out_dtype(arr))
    if method == "moment":
        out = np.sqrt(np.maximum(m * m - 2.0 * sigma * sigma, 0.0))
    elif method == "mean":
        ratio = m / sigma
        out = np.interp(ratio, _MEAN_GRID, _SNR_GRID) * sigma
        high = ratio > _MEAN_GRID[-1]
        out[high] = np.sqrt(m[high] ** 2 - sigma * sigma)
    else:
        raise ValueError(f"unknown Rician correction {method!r}; choose 'moment' or 'mean'")
    return out.astype(out_dtype(arr))


simulate = add_rician
estimate = estimate_sigma_rician
to_gaussian = identity


def from_gaussian(denoised: np.ndarray, sigma: float) -> np.ndarray:
    """A denoised magnitude (an estimate of ``E[m]``) -> the amplitude ``A`` (Rician bias removed)."""
    return rician_bias_correct(denoised, sigma, method="mean")


#: the Rician domain the denoise task uses (see the module docstring; chosen in benchmarks/rician_inversion.py)
DEFAULT_TRANSFORM = "vst-mmse"
TRANSFORMS = ("vst", "vst-mmse", "mean")


def _vst_signal(values: np.ndarray, sigma: float) -> np.ndarray:
    """Noise-free amplitudes (scan units) -> their level ``sigma * g(A / sigma)`` in the VST domain."""
    if sigma <= 0:
        return values
    return sigma * rician_vst.expected(np.asarray(values, dtype=np.float64) / sigma)


def domain(sigma: np.ndarray, transform: str | None = None) -> NoiseDomain:
    """The Rician domain of items with per-channel noise std ``sigma[i]``.

    ``"vst-mmse"`` (the default, :data:`DEFAULT_TRANSFORM`) and ``"vst"``: denoise
    ``sigma F(m / sigma)`` (:mod:`.rician_vst`), noise std ``sigma``, background at 0; invert near
    the floor by the posterior mean (``"vst-mmse"``) or everywhere by the exact unbiased inverse
    (``"vst"``). ``"mean"``: denoise the magnitude as it is and invert the Rician mean.
    """
    transform = DEFAULT_TRANSFORM if transform is None else transform
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown Rician transform {transform!r}; choose one of {TRANSFORMS}")
    values = np.asarray(sigma, dtype=np.float64)
    pooled = float(np.median(values)) if values.size else 0.0

    def mean_signal(x: np.ndarray) -> np.ndarray:
        return rician_bias_correct(x, pooled, method="mean")

    if transform == "mean":
        def inverse(x: np.ndarray, i: int = 0) -> np.ndarray:
            return from_gaussian(x, float(values[i]))

        return NoiseDomain("rician", values, identity, inverse, note="Rician bias removed after denoising",
                           signal_of_mean=mean_signal)

    def forward(items: np.ndarray) -> np.ndarray:
        arr = np.asarray(items, dtype=np.float64)
        out = np.empty(arr.shape, dtype=np.float32)
        for i, item in enumerate(arr):
            s = float(values[i])
            out[i] = item if s <= 0 else s * rician_vst.forward(item / s)
        return out

    def vst_inverse(x: np.ndarray, i: int = 0) -> np.ndarray:
        s = float(values[i])
        arr = np.asarray(x, dtype=np.float64)
        if s <= 0:
            return arr.astype(np.float32)
        if transform == "vst-mmse":
            return (s * rician_vst.posterior_inverse(arr / s, rician_vst.residual_std(arr / s))).astype(np.float32)
        return (s * rician_vst.inverse(arr / s)).astype(np.float32)

    def vst_signal(x: np.ndarray) -> np.ndarray:
        return _vst_signal(mean_signal(x), pooled)

    return NoiseDomain("rician", values, forward, vst_inverse, signal_of_mean=vst_signal,
                       note="Rician variance-stabilising transform, " + (
                           "posterior-mean inverse at the noise floor" if transform == "vst-mmse" else "exact unbiased inverse"))
