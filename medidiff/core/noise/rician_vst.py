"""A variance-stabilising transform for Rician magnitudes, with its exact unbiased inverse.

Everything here is in units of the per-channel noise std (``sigma = 1``); the domain in
:mod:`.rician` rescales by ``sigma``.

Rician magnitude ``m`` of amplitude ``A`` has mean ``mu(A)`` (:func:`.rician.rician_mean`) and
std ``s(A) = sqrt(A^2 + 2 - mu(A)^2)``: ``0.655`` in the Rayleigh background (``A = 0``), ``1``
at high SNR. Written as a function of the mean, ``s(u)`` (``u = mu(A)``; held at ``s(mu(0))``
below the Rayleigh mean), the classical stabiliser (Foi 2011's starting point) is

    F(x) = integral_0^x du / s(u) + c,

so ``std F(m) ~= 1`` at every ``A`` (exactly to first order). ``c`` puts the background at 0:
``c = -E[F(m) | A = 0]``, so a noise-only region looks like what the prior was trained on --
zero-mean noise of std 1 -- instead of a Rayleigh bump of std 0.655 at ``1.25``. At high SNR
``F(m) ~= m + K`` with a small constant ``K`` (tabulated, :func:`offset`).

Inverse. A Gaussian denoiser in this domain estimates ``E[F(m) | A] = g(A)``, not ``F(E[m])``,
so the algebraic inverse ``F^-1`` would be biased (as the plain inverse Anscombe is for
Poisson noise). The exact unbiased inverse inverts ``g`` (tabulated by quadrature over the
Rice density on a fine grid of ``m``): ``A = g^-1(D)``, ``A = 0`` where ``D <= g(0) = 0``.
Like every mean-based inverse, ``g`` is flat at ``A = 0`` (the Rice law depends on ``A^2``
to first order), so ripple of the denoised background is still folded up; the gain is that
the denoiser's estimate of the background level is no longer biased (measured on ``mr2d``,
``benchmarks/README.md`` "Rician: variance-stabilised denoising").
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import special

__all__ = ["forward", "expected", "inverse", "offset", "residual_std", "posterior_inverse"]

# numpy >= 2 names it trapezoid; 1.x (allowed by our numpy>=1.24) only has trapz
_trapezoid = getattr(np, "trapezoid", None) or np.trapz

_A = np.concatenate([np.linspace(0.0, 10.0, 1001), np.linspace(10.0, 60.0, 251)[1:]])
_TOP = float(_A[-1])


def _mean(a: np.ndarray) -> np.ndarray:
    t = a * a / 2.0
    return np.sqrt(np.pi / 2.0) * ((1.0 + t) * special.i0e(t / 2.0) + t * special.i1e(t / 2.0))


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(u, F(u))`` on a grid of magnitudes and ``(A, g(A))`` on ``_A`` (sigma = 1)."""
    mu = _mean(_A)
    s = np.sqrt(np.maximum(_A * _A + 2.0 - mu * mu, 1e-12))
    u = np.concatenate([[0.0], mu])
    su = np.concatenate([[s[0]], s])
    inv = 1.0 / su
    f = np.concatenate([[0.0], np.cumsum(0.5 * (inv[1:] + inv[:-1]) * np.diff(u))])
    # g(A) = E[F(m) | A]: quadrature over the Rice density on a fine grid of m
    g = np.empty_like(_A)
    for k, a in enumerate(_A):
        m = np.linspace(max(a - 9.0, 0.0), a + 9.0, 3601)
        pdf = m * np.exp(-0.5 * (m - a) ** 2) * special.i0e(m * a)
        fm = _f_table(m, u, f)
        g[k] = _trapezoid(pdf * fm, m) / _trapezoid(pdf, m)
    c = -g[0]
    return u, f + c, _A.copy(), g + c


def _f_table(x: np.ndarray, u: np.ndarray, f: np.ndarray) -> np.ndarray:
    """``F`` from its table; linear beyond it (``s = 1`` there to within 1e-4)."""
    return np.where(x <= u[-1], np.interp(x, u, f), f[-1] + (x - u[-1]))


def offset() -> float:
    """``K`` in ``F(m) ~= m + K`` at high SNR (sigma = 1)."""
    u, f, _, _ = _tables()
    return float(f[-1] - u[-1])


def forward(m: np.ndarray) -> np.ndarray:
    """The stabilising map ``F`` of magnitudes ``m`` (in units of sigma)."""
    u, f, _, _ = _tables()
    return _f_table(np.abs(np.asarray(m, dtype=np.float64)), u, f)


def expected(amplitude: np.ndarray) -> np.ndarray:
    """``g(A) = E[F(m) | A]`` (units of sigma): what a perfect denoiser returns in this domain."""
    _, _, a, g = _tables()
    x = np.abs(np.asarray(amplitude, dtype=np.float64))
    return np.where(x <= a[-1], np.interp(x, a, g), g[-1] + (x - a[-1]))


def inverse(d: np.ndarray) -> np.ndarray:
    """The exact unbiased inverse: a denoised ``D ~= E[F(m)]`` -> the amplitude ``A`` (units of sigma)."""
    _, _, a, g = _tables()
    x = np.asarray(d, dtype=np.float64)
    out = np.interp(x, g, a)  # A = 0 below g(0) = 0
    high = x > g[-1]
    out[high] = a[-1] + (x[high] - g[-1])
    return out


_CUT = 10.0  # amplitudes (units of sigma) above which the posterior mean is the plain inverse


def residual_std(d: np.ndarray, min_count: int = 50) -> float:
    """The std ``tau`` of a denoised background's ripple, from its values below 0 = g(0).

    Where ``A = 0`` the denoised value is ``D = e`` with ``e ~ N(0, tau^2)``; only such voxels can
    fall below 0 (``g(A) >= 0``), and ``E[e^2 | e < 0] = tau^2``. 0 when fewer than ``min_count``
    voxels are below 0 (no background to measure: the plain inverse is used).
    """
    x = np.asarray(d, dtype=np.float64).ravel()
    neg = x[x < 0]
    return float(np.sqrt(np.mean(neg * neg))) if neg.size >= min_count else 0.0


def posterior_inverse(d: np.ndarray, tau: float, iterations: int = 100) -> np.ndarray:
    """The posterior mean ``E[A | D]`` for ``D = g(A) + e``, ``e ~ N(0, tau^2)`` (units of sigma).

    Prior: a spike at ``A = 0`` of weight ``p0`` plus a flat slab on ``[0, A_max]`` (``A_max`` the
    largest plain-inverse amplitude), ``p0`` fitted by EM on the image itself (marginal maximum
    likelihood). Then ``E[A | D] = (1 - r(D)) int A N(D; g(A), tau^2) dA / int N(D; g(A), tau^2) dA``,
    ``r(D)`` the posterior weight of the spike. Near the floor the plain inverse maps the positive
    half of the ripple onto ``~sqrt(tau)``-sized amplitudes; the posterior mean weighs them against
    the background they most likely are. Above ``g(10)`` (and for ``tau = 0``) it is the plain
    inverse: there the slab's posterior mean equals it to ``O(tau^2 / A^3)``.
    """
    x = np.asarray(d, dtype=np.float64)
    plain = inverse(x)
    tau = float(min(max(tau, 0.0), 1.0))
    if tau <= 0 or x.size == 0:
        return plain
    _, _, a, g = _tables()
    grid = np.linspace(0.0, _CUT + 2.0, 601)
    g_grid = np.interp(grid, a, g)
    cut = float(np.interp(_CUT, a, g))
    flat = x.ravel()
    low = flat < cut
    if not low.any():
        return plain
    xl = flat[low]
    a_max = max(float(plain.max()), _CUT + 2.0)
    # the slab's likelihood and posterior mean are smooth in D: tabulate them at spacing tau / 4
    lo = float(xl.min())
    xs = np.linspace(lo, cut, int(np.clip((cut - lo) / (tau / 4.0), 64, 8192)) + 1)
    lik = np.exp(-0.5 * ((xs[:, None] - g_grid[None, :]) / tau) ** 2)
    slab = np.maximum(_trapezoid(lik, grid, axis=1) / a_max, 1e-300)
    slab_mean = _trapezoid(lik * grid[None, :], grid, axis=1) / a_max / slab
    # log(slab / spike) per voxel (the spike's likelihood is exp(-D^2 / 2 tau^2), g(0) = 0)
    log_ratio = np.interp(xl, xs, np.log(slab)) + 0.5 * (xl / tau) ** 2
    odds = np.exp(np.minimum(log_ratio, 700.0))
    p0 = 0.5
    for _ in range(iterations):  # EM for the spike weight (voxels above the cut have r = 0)
        r = p0 / (p0 + (1.0 - p0) * odds)
        p0 = float(np.clip(r.sum() / x.size, 1e-6, 1.0 - 1e-6))
    r = p0 / (p0 + (1.0 - p0) * odds)
    out = plain.ravel().copy()
    out[low] = (1.0 - r) * np.interp(xl, xs, slab_mean)
    return out.reshape(x.shape)
