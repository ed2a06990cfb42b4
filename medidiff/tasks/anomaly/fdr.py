"""Anomaly masks with a stated false-discovery rate: conformal p-values and Benjamini-Hochberg.

A threshold at the 99th percentile of healthy voxels says how often a *healthy voxel* is
flagged, not how many *flagged voxels* are false. This module makes a mask whose expected
share of false voxels (the false-discovery rate, FDR) is at most ``q``.

Calibration (:func:`healthy_sample`) keeps a random sample ``h_1 <= ... <= h_m`` of the anomaly
scores of foreground voxels of healthy scans (made with the same map settings). For a voxel
with score ``s`` of a new scan, the conformal p-value is

    p(s) = (1 + #{j : h_j >= s}) / (m + 1).

Assumption (exchangeability): a healthy voxel of the new scan has a score exchangeable with
the calibration voxels' scores, i.e. the healthy scans are like the new scan's healthy tissue
(same scanner, contrast, model and map settings). Then ``P(p(s) <= u) <= u`` for every ``u``:
the p-value of a healthy voxel is super-uniform (the rank of ``s`` among ``m + 1``
exchangeable values is uniform). A random sample of an exchangeable pool is itself
exchangeable with the new voxel, so storing a sample instead of every calibration voxel keeps
this property; it only coarsens the p-values (the smallest is ``1 / (m + 1)``).

Benjamini-Hochberg over the ``N`` foreground voxels of the scan: sort the p-values
``p_(1) <= ... <= p_(N)``, find the largest ``k`` with ``p_(k) <= q k / N``, flag the ``k``
voxels with the smallest p-values. If the p-values of the healthy voxels are super-uniform and
positively dependent (PRDS), the expected share of false voxels among the flagged is at most
``q N_0 / N <= q`` (Benjamini & Hochberg 1995; Benjamini & Yekutieli 2001). Conformal p-values
that share one calibration set are PRDS (Bates, Candes, Lei, Romano & Sesia 2023, "Testing for
outliers with conformal p-values"); the spatial correlation of a smooth map is a further
positive dependence between voxels of the new scan that the guarantee assumes, but does not
prove. When no voxel is anomalous (a healthy scan) the FDR is the probability of flagging
anything at all, so BH flags nothing on most healthy scans.

Because ``p`` falls as ``s`` rises, the BH mask is ``map > t`` for a scan-specific ``t`` (the
largest score not flagged); :func:`bh_mask` returns that threshold too, so the sidecar and
``medidiff evaluate anomaly`` treat an FDR mask like any thresholded one.
"""

from __future__ import annotations

import numpy as np

# healthy voxel scores kept in a calibration: the smallest p-value is 1/(m+1), so a lesion can be
# found at rate q only where it covers at least about 1/((m+1) q) of the foreground
HEALTHY_SAMPLE_SIZE = 8192
METHOD = "conformal p-values (healthy calibration voxels) + Benjamini-Hochberg over foreground voxels"


def healthy_sample(values: np.ndarray, size: int = HEALTHY_SAMPLE_SIZE, seed: int = 0) -> np.ndarray:
    """A sorted random sample (without replacement) of at most ``size`` healthy voxel scores."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size > size:
        values = np.random.default_rng(seed).choice(values, size=size, replace=False)
    return np.sort(values)


def encode_scores(sorted_scores: np.ndarray) -> str:
    """The sample as one line of space-separated numbers (6 significant digits) for config.json.

    One string keeps config.json readable (a JSON list would take a line per number); rounding
    is monotone, so the order of the sample, and so every p-value up to ties, is kept.
    """
    return " ".join(f"{v:.6g}" for v in np.asarray(sorted_scores, dtype=np.float64))


def decode_scores(stored: str | list[float]) -> np.ndarray:
    """The sorted sample back from :func:`encode_scores` (a plain list of numbers is read too)."""
    values = np.array(stored.split() if isinstance(stored, str) else stored, dtype=np.float64)
    return np.sort(values)


def conformal_pvalues(scores: np.ndarray, healthy_sorted: np.ndarray) -> np.ndarray:
    """``(1 + #{healthy >= s}) / (m + 1)`` for each score ``s`` (``healthy_sorted`` ascending)."""
    h = np.asarray(healthy_sorted, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    at_least = h.size - np.searchsorted(h, s, side="left")  # number of h_j >= s
    return (1.0 + at_least) / (h.size + 1.0)


def benjamini_hochberg(pvalues: np.ndarray, q: float) -> np.ndarray:
    """Boolean mask of the hypotheses BH rejects at level ``q`` (same shape as ``pvalues``)."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    n = p.size
    reject = np.zeros(n, dtype=bool)
    if n == 0:
        return reject.reshape(np.shape(pvalues))
    order = np.argsort(p, kind="stable")
    below = p[order] <= q * np.arange(1, n + 1) / n
    if below.any():
        k = int(np.nonzero(below)[0].max()) + 1
        reject[order[:k]] = True
    return reject.reshape(np.shape(pvalues))


def bh_mask(amap: np.ndarray, fg: np.ndarray, healthy_sorted: np.ndarray, q: float) -> tuple[np.ndarray, float]:
    """The FDR-``q`` mask of ``amap`` over the foreground ``fg``, and its equivalent threshold.

    The mask equals ``(amap > threshold) & fg``: ``threshold`` is the largest foreground score
    not flagged (the largest score overall when nothing is flagged).
    """
    mask = np.zeros(amap.shape, dtype=bool)
    values = amap[fg]
    if values.size == 0:
        return mask, float("inf")
    rejected = benjamini_hochberg(conformal_pvalues(values, healthy_sorted), q)
    mask[fg] = rejected
    kept = values[~rejected]
    threshold = float(kept.max()) if kept.size else float(np.nextafter(values.min(), -np.inf))
    return mask, threshold
