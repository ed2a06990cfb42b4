"""Image quality: PSNR, SSIM (2D or 3D) and MS-SSIM (2D, multi-scale) of a test image against a reference.

PSNR is ``10 log10(range^2 / MSE)``; SSIM is scikit-image's (Wang et al. 2004: Gaussian window,
sigma 1.5); MS-SSIM (Wang, Simoncelli & Bovik 2003) multiplies the contrast-structure terms of
five dyadic scales and the luminance term of the coarsest, with the published weights.
Numpy in, float out, float64 inside.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["psnr", "ssim", "ms_ssim", "MS_SSIM_WEIGHTS"]


def _pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    tst = np.asarray(test, dtype=np.float64)
    if ref.shape != tst.shape:
        raise ValueError(f"reference and test shapes differ: {ref.shape} vs {tst.shape}")
    if ref.size == 0:
        raise ValueError("cannot compare empty arrays")
    return ref, tst


def _data_range(reference: np.ndarray, data_range: float | None) -> float:
    if data_range is None:
        data_range = float(reference.max() - reference.min())
        if data_range == 0:
            raise ValueError("reference is constant, so its range is 0; pass data_range explicitly")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    return float(data_range)




def psnr(reference: np.ndarray, test: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)`` (``inf`` when identical).

    ``data_range`` defaults to ``reference.max() - reference.min()``
    (as ``skimage.metrics.peak_signal_noise_ratio``).
    """
    ref, tst = _pair(reference, test)
    dr = _data_range(ref, data_range)
    mse = float(np.mean((ref - tst) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(dr * dr / mse))


_SSIM_WIN = 11  # the Gaussian window (sigma 1.5) of Wang et al. 2004


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float | None = None) -> float:
    """Mean structural similarity of a 2D image or 3D volume (``skimage.metrics.structural_similarity``).

    Uses the settings of Wang et al. 2004: Gaussian window sigma 1.5 (11 wide), population
    covariances, K1 = 0.01, K2 = 0.03. ``data_range`` defaults to the reference's max - min.
    A volume with an axis shorter than 11 is scored as the mean of its 2D slices along its
    shortest axis; a 2D image smaller than 11 pixels uses a uniform window of its largest odd side.
    """
    from skimage.metrics import structural_similarity

    ref, tst = _pair(reference, test)
    if ref.ndim not in (2, 3):
        raise ValueError(f"ssim takes 2D or 3D arrays; got shape {ref.shape}")
    dr = _data_range(ref, data_range)
    if min(ref.shape) >= _SSIM_WIN:
        return float(
            structural_similarity(
                ref, tst, data_range=dr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
        )
    if ref.ndim == 3:
        axis = int(np.argmin(ref.shape))
        r2, t2 = np.moveaxis(ref, axis, 0), np.moveaxis(tst, axis, 0)
        return float(np.mean([ssim(r, t, data_range=dr) for r, t in zip(r2, t2)]))
    side = min(ref.shape)
    win = side if side % 2 else side - 1
    if win < 3:
        raise ValueError(f"image of shape {ref.shape} is too small for SSIM (needs 3 pixels a side)")
    return float(structural_similarity(ref, tst, data_range=dr, win_size=win))


MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gauss_taps(size: int, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _valid_blur(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering over the last two axes of a (B, H, W) stack."""
    h = len(taps) // 2
    for axis in (-2, -1):
        x = ndi.correlate1d(x, taps, axis=axis, mode="constant")
        index = [slice(None)] * x.ndim
        index[axis] = slice(h, x.shape[axis] - h)
        x = x[tuple(index)]
    return x


def _ssim_terms(a: np.ndarray, b: np.ndarray, dr: float, taps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean SSIM and mean contrast-structure term of (B, H, W) stacks."""
    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    mu_a, mu_b = _valid_blur(a, taps), _valid_blur(b, taps)
    var_a = _valid_blur(a * a, taps) - mu_a**2
    var_b = _valid_blur(b * b, taps) - mu_b**2
    cov = _valid_blur(a * b, taps) - mu_a * mu_b
    cs = (2.0 * cov + c2) / (var_a + var_b + c2)
    lum = (2.0 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (lum * cs).mean(axis=(-2, -1)), cs.mean(axis=(-2, -1))


def _ms_ssim_stack(a: np.ndarray, b: np.ndarray, dr: float) -> np.ndarray:
    side = min(a.shape[-2:])
    win = min(_SSIM_WIN, side if side % 2 else side - 1)
    if win < 1:
        raise ValueError("images are empty")
    # scales such that the coarsest image is still at least as large as the window
    n_scales = 1
    while n_scales < len(MS_SSIM_WEIGHTS) and side // 2**n_scales >= win:
        n_scales += 1
    weights = np.array(MS_SSIM_WEIGHTS[:n_scales])
    weights = weights / weights.sum()
    taps = _gauss_taps(win)
    result = np.ones(a.shape[0])
    for j in range(n_scales):
        full, cs = _ssim_terms(a, b, dr, taps)
        if j == n_scales - 1:
            result *= np.maximum(full, 0.0) ** weights[j]
        else:
            result *= np.maximum(cs, 0.0) ** weights[j]
            h, w = (a.shape[-2] // 2) * 2, (a.shape[-1] // 2) * 2
            a = a[..., :h, :w].reshape(a.shape[0], h // 2, 2, w // 2, 2).mean(axis=(2, 4))
            b = b[..., :h, :w].reshape(b.shape[0], h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return result


def ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """Multi-scale SSIM of two 2D images (Wang, Simoncelli & Bovik 2003).

    Five scales with weights ``MS_SSIM_WEIGHTS`` (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), an 11-pixel
    Gaussian window (sigma 1.5, 'valid' filtering), 2x2 average pooling between scales; contrast-
    structure terms at scales 1..M-1 and the full SSIM at the coarsest scale, negative terms clipped
    to 0. Images too small for five scales (the coarsest must be at least 11 pixels, i.e. a side of
    176 for five) use as many scales as fit, with the first weights renormalised to sum to 1; images
    under 11 pixels shrink the window to their largest odd side. ``data_range`` defaults to the
    range of both images together (the metric is symmetric).
    """
    x, y = _pair(a, b)
    if x.ndim != 2:
        raise ValueError(f"ms_ssim takes 2D images; got shape {x.shape}")
    dr = _data_range(np.stack([x, y]), data_range)
    return float(_ms_ssim_stack(x[None], y[None], dr)[0])
