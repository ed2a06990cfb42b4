"""Monte-Carlo SURE: a denoiser's mean squared error estimated without the clean image.

Stein's unbiased risk estimate (Stein 1981) for ``y = x + n``, ``n ~ N(0, diag(s_i^2))`` with known
``s_i`` and a weakly differentiable denoiser ``D``: since ``E[n_i f(y)] = s_i^2 E[d f / d y_i]``,

    E ||D(y) - x||^2 = E [ ||D(y) - y||^2 - sum_i s_i^2 + 2 sum_i s_i^2 dD_i/dy_i ],

so the bracket, divided by the voxel count ``N``, is an unbiased estimate of the MSE against the
unknown ``x``. The divergence of a black-box denoiser (a network) is estimated with one random
probe ``b ~ N(0, I)`` (Ramani, Blu & Unser 2008): ``E_b[b^T J b] = tr(J)``, and
``J (eps s b) ~= D(y + eps s b) - D(y)``, hence

    sum_i s_i^2 dD_i/dy_i ~= (s b) . (D(y + eps s b) - D(y)) / eps,

the probe scaled by the local noise std ``s`` (``E[(s b)^T J (s b)] = sum_i s_i^2 J_ii``, the
weighted trace, and the perturbation is the same fraction ``eps`` of the noise everywhere).
``eps`` must be small enough for the finite difference to be linear (``D`` is smooth at the
noise scale) and large enough that float32 rounding does not dominate: ``0.01`` of the noise std
(:data:`DEFAULT_EPS`). ``D`` must be *the same function* in both passes: a sampler's random noise
must be fixed (same seed), otherwise the difference measures the sampler, not the Jacobian.

Per voxel, ``sure_i = (D_i - y_i)^2 - s_i^2 + 2 s_i b_i (D_i(y + eps s b) - D_i(y)) / eps``, and the
mean over any region ``R`` fixed in advance estimates the MSE on ``R`` (the probe's cross terms
vanish in expectation because ``E[b_i b_j] = 0``). The noisy input's own MSE is ``mean_R s_i^2``, so

    estimated gain (dB) = 10 log10( mean_R s_i^2 / mean_R sure_i ),

the PSNR gain a user would measure if they had the clean image (any ``data_range`` cancels).

Assumptions (each one a reason the estimate can be off):

* the noise is Gaussian with the ``s_i`` given. Where the noise std is *estimated* from the same
  scan, an overestimate biases SURE down (too optimistic), an underestimate up; a
  ``mean sure <= 0`` (impossible for an MSE) is therefore reported as inconsistent, not as a gain.
  Poisson-Gaussian noise is approximated by Gaussian noise of its affine variance
  ``gain * x + read^2`` (good where a voxel holds more than ~10 photons; PURE is the exact
  Poisson analogue); Rician magnitudes by Gaussian noise of std ``sigma`` where the signal is
  well above ``sigma`` (the caller leaves the darker voxels out of ``R``);
* ``D`` (with the noise level it was given) does not depend on ``y`` otherwise: a global noise
  estimate or normaliser fitted on ``y`` changes by ``O(1/N)`` per voxel, which SURE ignores;
* one probe: the divergence estimate has a relative standard error of about
  ``sqrt(2 / N) * ||S J S||_F / tr(S J S)``, negligible for images of thousands of voxels.

Numpy in, floats out, float64 inside. :func:`monte_carlo_sure` takes a plain callable; tasks whose
denoiser is a generator compute the two passes themselves and call :func:`sure_from_passes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_EPS", "SureEstimate", "probe", "perturbed", "sure_map", "sure_from_passes", "monte_carlo_sure"]

DEFAULT_EPS = 0.01  # the probe's size as a fraction of the noise std
_MAX_GAIN_DB = 40.0  # a SURE below 1e-4 of the noise variance is reported as this gain


@dataclass(frozen=True)
class SureEstimate:
    """A SURE estimate over a region.

    ``mse``: the estimated MSE of the denoised image (scan units squared). ``noise_var``: the
    noisy input's MSE, ``mean s_i^2``. ``gain_db``: ``10 log10(noise_var / mse)`` (capped at
    +40 dB; ``-inf`` never occurs because a positive ``mse`` is required). ``consistent``: False
    when ``mse <= 0`` (impossible for a true MSE: the given noise level is too high, or the region
    too small), then ``gain_db`` is the cap and means nothing. ``stderr_db``: a rough standard
    error of ``gain_db`` from the spread of the per-voxel terms (treated as independent, so it is
    a lower bound where the denoiser correlates neighbours). ``voxels``: the region's size.
    """

    mse: float
    noise_var: float
    gain_db: float
    consistent: bool
    stderr_db: float
    voxels: int


def probe(shape: tuple[int, ...], seed: int | tuple[int, ...] = 0) -> np.ndarray:
    """The random probe ``b ~ N(0, I)`` (float64), the same for the same ``seed`` (an int or a tuple of ints)."""
    return np.random.default_rng(seed).standard_normal(shape)


def perturbed(y: np.ndarray, s: np.ndarray | float, b: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """``y + eps * s * b``: the input of the second denoiser pass (float64)."""
    _check_eps(eps)
    return np.asarray(y, dtype=np.float64) + eps * np.asarray(s, dtype=np.float64) * b


def sure_map(y: np.ndarray, d: np.ndarray, d_probe: np.ndarray, s: np.ndarray | float, b: np.ndarray,
             eps: float = DEFAULT_EPS) -> np.ndarray:
    """Per-voxel SURE terms ``(d - y)^2 - s^2 + 2 s b (d_probe - d) / eps`` (float64, ``y``'s shape).

    ``d = D(y)``, ``d_probe = D(y + eps s b)``, ``s``: the noise std per voxel (or one value).
    Their mean over a region estimates the denoiser's MSE there.
    """
    _check_eps(eps)
    y64, d64, p64 = (np.asarray(a, dtype=np.float64) for a in (y, d, d_probe))
    if not (y64.shape == d64.shape == p64.shape == np.shape(b)):
        raise ValueError(f"y, D(y), D(y + eps s b) and b must have one shape; got {y64.shape}, {d64.shape}, "
                         f"{p64.shape}, {np.shape(b)}")
    s64 = np.broadcast_to(np.asarray(s, dtype=np.float64), y64.shape)
    return (d64 - y64) ** 2 - s64 ** 2 + 2.0 * s64 * b * (p64 - d64) / eps


def sure_from_passes(y: np.ndarray, d: np.ndarray, d_probe: np.ndarray, s: np.ndarray | float, b: np.ndarray,
                     eps: float = DEFAULT_EPS, region: np.ndarray | None = None) -> SureEstimate:
    """The :class:`SureEstimate` over ``region`` (a boolean mask; default every voxel) from the two passes."""
    terms = sure_map(y, d, d_probe, s, b, eps)
    var = np.broadcast_to(np.asarray(s, dtype=np.float64) ** 2, terms.shape)
    if region is not None:
        mask = np.asarray(region, dtype=bool)
        if mask.shape != terms.shape:
            raise ValueError(f"region shape {mask.shape} differs from the image's {terms.shape}")
        terms, var = terms[mask], var[mask]
    n = int(terms.size)
    if n == 0:
        raise ValueError("the SURE region holds no voxel")
    noise_var = float(np.mean(var))
    if noise_var <= 0:
        raise ValueError("the noise variance is 0 over the region: there is no noise to measure a gain against")
    mse = float(np.mean(terms))
    consistent = mse > 0
    floor = noise_var * 10.0 ** (-_MAX_GAIN_DB / 10.0)
    gain = float(10.0 * np.log10(noise_var / max(mse, floor)))
    # d gain / d mse = -10 / (ln 10 mse): the standard error of the mean, in dB
    se = float(np.std(terms) / np.sqrt(n)) if n > 1 else float("inf")
    stderr = float(10.0 / np.log(10.0) * se / max(mse, floor))
    return SureEstimate(mse, noise_var, gain, consistent, stderr, n)


def monte_carlo_sure(denoiser: Callable[[np.ndarray], np.ndarray], y: np.ndarray, s: np.ndarray | float, *,
                     eps: float = DEFAULT_EPS, seed: int = 0, region: np.ndarray | None = None,
                     d: np.ndarray | None = None) -> SureEstimate:
    """SURE of ``denoiser`` at ``y`` with noise std ``s`` (per voxel or one value), one probe.

    ``d``: ``denoiser(y)`` when already computed (then only one more call is made).
    ``seed`` fixes the probe: the same arguments give the same estimate.
    """
    y64 = np.asarray(y, dtype=np.float64)
    b = probe(y64.shape, seed)
    d = denoiser(y64) if d is None else d
    d_probe = denoiser(perturbed(y64, s, b, eps))
    return sure_from_passes(y64, d, d_probe, s, b, eps, region)


def _check_eps(eps: float) -> None:
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
