"""Scores made from a reconstruction: the raw residual, a healthy z-score, and a structural residual.

The raw map is the residual ``r(v) = mean_k |x(v) - x0_k(v)|`` over the noise levels and draws
``k`` (:mod:`.maps`). Some healthy tissue is simply harder to reconstruct than other tissue
(bright cortex next to dark CSF, edges, vessels), so a raw residual flags it on every scan. Two
scores correct for that with statistics of the healthy calibration scans (``score=`` of
:class:`~.options.AnomalyOptions`):

* ``zscore``  ``z(v) = (r(v) - mu(b(v))) / sd(b(v))``, where ``b(v)`` is the bin of the mean
              reconstruction ``xbar(v) = mean_k x0_k(v)`` (network units: what the model thinks
              the healthy tissue there is) and ``mu``, ``sd`` the mean and spread of healthy
              calibration residuals in that bin (:data:`N_BINS` quantile bins). Tissue that is
              normally hard to reconstruct gets a large ``sd`` and is not flagged.
* ``ssim``    ``z(v) + z_s(v)``: the same z-score plus a structural residual
              ``s(v) = 1 - SSIM(x, xbar)(v)`` (local SSIM, Gaussian window sigma 1.5 voxels,
              Wang et al. 2004) standardised the same way. SSIM compares local contrast and
              structure, not only intensity, so a lesion that keeps the mean but breaks the
              texture or the edges of its tissue scores too.

Every statistic is taken in network units of the scan's own (tissue-anchored) normalisation, so
the scores are unit-free: the map of ``a * x`` equals the map of ``x`` for ``a > 0``. The profile
(bin edges, ``mu``, ``sd`` per bin) is fitted on the calibration scans and stored with the
calibration (``config.anomaly["score_profile"]``). This module is numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

N_BINS = 16
MIN_SD = 1e-6
SSIM_SIGMA = 1.5
SSIM_RANGE = 2.0  # network units span [-1, 1]


def local_ssim(a: np.ndarray, b: np.ndarray, sigma: float = SSIM_SIGMA, L: float = SSIM_RANGE) -> np.ndarray:
    """The local SSIM map of two images or volumes (Gaussian window ``sigma``; dynamic range ``L``)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2

    def g(v: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(v, sigma, mode="nearest")

    ma, mb = g(a), g(b)
    va, vb, cov = g(a * a) - ma * ma, g(b * b) - mb * mb, g(a * b) - ma * mb
    return ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))


def structural_residual(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """``1 - SSIM(x, recon)`` of one network item (a 2D slice or a 3D volume)."""
    return (1.0 - local_ssim(x, recon)).astype(np.float32)


def fit_profile(recon: np.ndarray, parts: dict[str, np.ndarray], n_bins: int = N_BINS) -> dict[str, Any]:
    """Healthy statistics per bin of reconstructed intensity: quantile edges, and ``mu``, ``sd`` of each part.

    ``recon`` and every array of ``parts`` are the pooled foreground voxels of healthy scans.
    """
    recon = np.asarray(recon, dtype=np.float64).ravel()
    edges = np.unique(np.quantile(recon, np.linspace(0, 1, n_bins + 1)))
    if edges.size < 2:
        edges = np.array([recon.min() - 1.0, recon.max() + 1.0])
    idx = _bins(recon, edges)
    out: dict[str, Any] = {"bins_of": "mean reconstruction (network units)", "edges": [float(e) for e in edges]}
    for name, values in parts.items():
        v = np.asarray(values, dtype=np.float64).ravel()
        g_mu, g_sd = float(v.mean()), max(float(v.std()), MIN_SD)
        mu, sd = [], []
        for b in range(edges.size - 1):
            sel = v[idx == b]
            mu.append(float(sel.mean()) if sel.size >= 10 else g_mu)
            sd.append(max(float(sel.std()), MIN_SD) if sel.size >= 10 else g_sd)
        out[name] = {"mu": mu, "sd": sd}
    return out


def _bins(recon: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, recon, side="right") - 1, 0, edges.size - 2)


def zscore(values: np.ndarray, recon: np.ndarray, profile: dict[str, Any], part: str) -> np.ndarray:
    """``(values - mu(bin(recon))) / sd(bin(recon))`` with the profile's statistics of ``part``."""
    edges = np.asarray(profile["edges"], dtype=np.float64)
    mu = np.asarray(profile[part]["mu"], dtype=np.float64)
    sd = np.asarray(profile[part]["sd"], dtype=np.float64)
    b = _bins(np.asarray(recon, dtype=np.float64), edges)
    return ((np.asarray(values, dtype=np.float64) - mu[b]) / sd[b]).astype(np.float32)


def parts_of(score: str) -> tuple[str, ...]:
    """The raw maps a score standardises (``residual`` needs none)."""
    return {"residual": (), "zscore": ("residual",), "ssim": ("residual", "ssim")}[score]


def combine(score: str, residual: np.ndarray, recon: np.ndarray, ssim: np.ndarray | None,
            profile: dict[str, Any] | None) -> np.ndarray:
    """The score map before smoothing: the residual itself, or the sum of its parts' healthy z-scores."""
    if score == "residual":
        return residual
    if profile is None:
        raise ValueError(f"score {score!r} needs a calibration profile")
    out = zscore(residual, recon, profile, "residual")
    if score == "ssim":
        out = out + zscore(ssim, recon, profile, "ssim")
    return out


__all__ = ["N_BINS", "local_ssim", "structural_residual", "fit_profile", "zscore", "parts_of", "combine"]
