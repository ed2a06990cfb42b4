"""Noise models for denoising: estimate, simulate and stabilise scan noise.

Three models cover the scans medidiff reads, one module each, each offering ``simulate``,
``estimate``, ``to_gaussian`` and ``from_gaussian`` (the variance-stabilising pair) and
``domain`` (a :class:`NoiseDomain` for the denoise task):

``"gaussian"`` (:mod:`.gaussian`)
    Additive white Gaussian noise of std ``sigma`` (CT, reconstructed data, "other").
    Stabilising pair: the identity.
``"rician"`` (:mod:`.rician`)
    Magnitude MR images: ``m = |A + n1 + i n2|`` with ``n1, n2 ~ N(0, sigma^2)``. Biased
    upwards where the signal ``A`` is low (background is Rayleigh distributed).
    Stabilising pair: denoise the magnitude as it is, then invert the Rician mean.
``"poisson-gaussian"`` (:mod:`.poisson_gaussian`)
    Photon-counting detectors (fluorescence microscopy, cameras):
    ``x = gain * Poisson(y / gain) + N(mu, sigma^2)`` so ``Var[x] = gain * (E[x] - mu) + sigma^2``.
    The generalised Anscombe transform maps it to unit-variance Gaussian noise; the exact
    unbiased inverse maps a denoised image back.

The wavelet estimators they share live in :mod:`.wavelet`. All functions take numpy arrays: 2D
images ``(y, x)`` or 3D volumes ``(z, y, x)``; volumes are treated as stacks of 2D slices (noise
is estimated in-plane, so anisotropic slice spacing or slice-wise noise levels do not bias it).
Arrays are never modified in place; results are float32 for integer or float32 input and float64
for float64 input. Bad arrays raise ``ValueError`` (the tasks turn it into a ``MedidiffError``
naming the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from medidiff.choices import NoiseModel as NoiseModelChoice
from medidiff.core.noise import gaussian, poisson_gaussian, rician
from medidiff.core.noise._common import as_image, out_dtype
from medidiff.core.noise.domain import NoiseDomain
from medidiff.core.noise.gaussian import add_gaussian, estimate_sigma
from medidiff.core.noise.poisson_gaussian import (add_poisson_gaussian, anscombe, estimate_poisson_gaussian,
                                                  inverse_anscombe)
from medidiff.core.noise.rician import add_rician, estimate_sigma_rician, rician_bias_correct, rician_mean

NoiseModel = Literal["gaussian", "rician", "poisson-gaussian"]
NOISE_MODELS: tuple[str, ...] = NoiseModelChoice.values()
assert NOISE_MODELS == get_args(NoiseModel)  # the Literal type and the torch-free choices agree

__all__ = [
    "NoiseModel",
    "NOISE_MODELS",
    "NoiseEstimate",
    "NoiseDomain",
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
    "noise_domain",
]

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
        return values.astype(out_dtype(arr))
    gain = 0.8 * level * level * span
    noisy = add_poisson_gaussian(values - low, gain, np.sqrt(0.2) * level * span, rng) + low
    return noisy.astype(out_dtype(arr))


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
    arr = as_image(image)
    if model == "gaussian":
        return NoiseEstimate(model, estimate_sigma(arr, per_slice=per_slice), None, reason)
    if model == "rician":
        if per_slice and arr.ndim == 3:
            sigma = np.array([rician.estimate_with_reason(s, "auto")[0] for s in arr])
            return NoiseEstimate(model, sigma, None, reason + "; estimated per slice")
        sigma, how = rician.estimate_with_reason(arr, "auto")
        return NoiseEstimate(model, sigma, None, f"{reason}; {how}")
    gain, sigma = estimate_poisson_gaussian(arr)
    return NoiseEstimate(model, sigma, gain, reason + "; gain and read noise fitted on local mean/variance")


def _fill_nan(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    fill = float(np.median(finite)) if finite.size else 0.0
    return np.where(np.isfinite(values), values, fill)


def noise_domain(
    items: np.ndarray, stack: np.ndarray, noise: str = "auto", *, sigma: float | None = None,
    modality: str = "OT", source_format: str | None = None, per_item: bool = False,
) -> tuple[NoiseDomain, str]:
    """Pick the noise model, estimate it on ``stack`` (unless ``sigma`` is given), build its domain.

    ``items``: the ``(N, ...)`` stack the network will see (slices, or the whole scan as one item);
    ``stack``: the array to estimate on (``items`` for slices; the volume for a 3D model).
    ``noise``: ``"auto"`` (from ``modality``/``source_format``) or a model name. ``sigma``: the
    Gaussian/Rician std, or for Poisson-Gaussian the read noise (the gain is still estimated).
    ``per_item``: one estimate per item (not for Poisson-Gaussian, which pools). Returns the
    domain and a sentence saying which model and why. Raises ``ValueError`` for unusable arrays.
    """
    n = int(items.shape[0])
    if noise == "auto":
        name, reason = choose_noise_model(modality, source_format)
    elif noise in NOISE_MODELS:
        name, reason = noise, f"noise model {noise!r} chosen by the caller"
    else:
        raise ValueError(f"unknown noise model {noise!r}; choose 'auto' or one of {NOISE_MODELS}")
    if name == "poisson-gaussian":
        gain, read = estimate_poisson_gaussian(stack)
        if sigma is not None:
            read = float(sigma)
        if per_item:
            reason += "; per-slice estimation does not apply (gain and read noise are pooled)"
        reason += f"; gain {gain:.4g}, read noise {read:.4g}"
        if gain <= 0:
            reason += "; no photon noise found, so Gaussian denoising with the read noise"
            return gaussian.domain(np.full(n, read)), reason
        dom = poisson_gaussian.domain(items, gain, read)
        return dom, f"{reason}; {dom.note}"
    if sigma is not None:
        values = np.full(n, float(sigma))
        reason += "; sigma given by the caller"
    else:
        est = estimate_noise(stack, model=name, modality=modality, per_slice=per_item and n > 1,
                             source_format=source_format)
        # estimate_noise was told the model explicitly: keep our reason, add how it estimated
        how = est.reason.split("; ", 1)[1] if "; " in est.reason else "weak-texture wavelet MAD"
        reason += f"; {how}"
        values = np.broadcast_to(np.asarray(est.sigma, dtype=np.float64), (n,)).copy()
        if not np.all(np.isfinite(values)):
            values = _fill_nan(values)
            reason += "; slices without usable content take the median sigma"
    dom = rician.domain(values) if name == "rician" else gaussian.domain(values)
    return dom, f"{reason}; {dom.note}" if dom.note else reason
