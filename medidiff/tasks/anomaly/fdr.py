"""Anomaly masks with a stated false-discovery rate: conformal p-values and Benjamini-Hochberg.

A threshold at the 99th percentile of healthy voxels says how often a *healthy voxel* is
flagged, not how many *flagged voxels* are false. This module makes a mask whose expected
share of false voxels (the false-discovery rate, FDR) is at most ``q``. Two methods
(``fdr_method`` of :class:`~.options.AnomalyOptions`; ``scan-adaptive`` is the default):

**plain.** Calibration (:func:`healthy_sample`) keeps a random sample ``h_1 <= ... <= h_m`` of
the anomaly scores of foreground voxels of healthy scans (made with the same map settings). For
a voxel with score ``s`` of a new scan, the conformal p-value is

    p(s) = (1 + #{j : h_j >= s}) / (m + 1).

Assumption (exchangeability): a healthy voxel of the new scan has a score exchangeable with
the calibration voxels' scores, i.e. the healthy scans are like the new scan's healthy tissue
(same scanner, contrast, model and map settings). Then ``P(p(s) <= u) <= u`` for every ``u``:
the p-value of a healthy voxel is super-uniform (the rank of ``s`` among ``m + 1``
exchangeable values is uniform). A random sample of an exchangeable pool is itself
exchangeable with the new voxel, so storing a sample instead of every calibration voxel keeps
this property; it only coarsens the p-values (the smallest is ``1 / (m + 1)``).

**scan-adaptive.** The plain assumption fails when a scan is reconstructed better or worse than
the calibration scans as a whole (another slab, more noise, a scan a little unlike the training
data): its healthy scores are all shifted or stretched, every p-value is too small or too large,
and a shift up floods the mask with false voxels (on ``benchmarks/anomaly.py`` the smoothed
z-score map of the test slab reached an FDR of 0.32 at q = 0.1). The scan-adaptive method
removes each scan's own level and spread before comparing. For a scan with foreground scores
``s_v`` let

    loc = median_v(s_v),   scale = (Q75(s) - Q25(s)) / 1.349      (the interquartile range),

(if that is 0, as for a one-signed map that is 0 on most voxels: ``(Q90 - loc) / 1.2816``, then
the mean absolute deviation from ``loc``, then 1), and ``u_v = (s_v - loc) / scale``. Each
calibration scan is standardised the same way with its own ``loc``, ``scale``; the pooled ``u``
are sampled as above, and the new scan's ``u_v`` get conformal p-values against that sample.
The assumption it replaces exchangeability with: **the standardised healthy scores** ``u``
**of the new scan are exchangeable with the calibration's**, i.e. scans differ in the location
and scale of their healthy score distribution, not in its shape (a location-scale family
``F((s - a_i) / b_i)``). ``loc`` and ``scale`` are quantiles of the bulk: a lesion of a few
percent of the foreground moves them by a few percent of the healthy spread, and upwards (which
makes p-values larger: conservative). They are estimated from the scan itself, so the guarantee
is approximate (an estimate from thousands of voxels, not a fixed number). What it cannot see:
a lesion covering a large share of the foreground (it becomes part of the "healthy" level, so
the method loses power there), a change in the *shape* of the tails, and (like the plain
method) healthy voxels next to a lesion that the reconstruction or a smoothed map raises: they
count as false discoveries, so a strong lesion under Gaussian smoothing can push the share of
false voxels above ``q`` (0.34 at q = 0.1 for one large planted lesion at contrast 2 on the
tiny test model). A scan is what the
caller passes (a slice, or a whole volume for a 2D model too). Within a scan ``u`` is a
monotone function of ``s``, so the mask is still ``map > t``. The spread was chosen on the
validation split of ``benchmarks/anomaly.py``: the median absolute deviation let the smoothed
z-score map exceed q there (0.125 at q = 0.1), the interquartile range held it at the same power.

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

from medidiff.choices import FdrMethod

# healthy voxel scores kept in a calibration: the smallest p-value is 1/(m+1), so a lesion can be
# found at rate q only where it covers at least about 1/((m+1) q) of the foreground
HEALTHY_SAMPLE_SIZE = 8192
PLAIN = FdrMethod.PLAIN.value
ADAPTIVE = FdrMethod.SCAN_ADAPTIVE.value
DEFAULT_METHOD = ADAPTIVE
DESCRIPTIONS = {
    PLAIN: "conformal p-values (healthy calibration voxels) + Benjamini-Hochberg over foreground voxels",
    ADAPTIVE: "scan-adaptive conformal p-values (each scan's scores standardised by its own foreground median "
              "and interquartile range, against the calibration scans' scores standardised the same way) "
              "+ Benjamini-Hochberg over foreground voxels",
}
ASSUMPTIONS = {
    PLAIN: "healthy voxel scores of this scan are exchangeable with the calibration's",
    ADAPTIVE: "healthy voxel scores of this scan, standardised by its own median and interquartile range, "
              "are exchangeable with the calibration's standardised the same way (scans differ in level "
              "and spread, not shape)",
}
METHOD = DESCRIPTIONS[PLAIN]  # older name of the plain method's description
_IQR = 1.349  # interquartile range -> standard deviation of a normal
_Z90 = 1.2816  # the normal's 90th percentile


def healthy_sample(values: np.ndarray, size: int = HEALTHY_SAMPLE_SIZE, seed: int = 0) -> np.ndarray:
    """A sorted random sample (without replacement) of at most ``size`` healthy voxel scores."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size > size:
        values = np.random.default_rng(seed).choice(values, size=size, replace=False)
    return np.sort(values)


def scan_level(values: np.ndarray) -> tuple[float, float]:
    """A scan's robust healthy level and spread: ``(median, IQR / 1.349)`` of its foreground scores.

    Fallbacks when the interquartile range is 0 (half the scores equal): ``(q90 - median) / 1.2816``,
    then the mean absolute deviation from the median, then 1.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    q25, loc, q75 = (float(x) for x in np.quantile(v, (0.25, 0.5, 0.75)))
    dev = np.abs(v - loc)
    scale = (q75 - q25) / _IQR
    tiny = 1e-12 * max(1.0, abs(loc))
    if scale <= tiny:
        scale = (float(np.quantile(v, 0.9)) - loc) / _Z90
    if scale <= tiny:
        scale = float(dev.mean())
    return loc, (scale if scale > tiny else 1.0)


def standardise(values: np.ndarray, level: tuple[float, float] | None = None) -> np.ndarray:
    """``(values - loc) / scale`` with the scan's own :func:`scan_level` (or the given one)."""
    v = np.asarray(values, dtype=np.float64)
    loc, scale = scan_level(v) if level is None else level
    return (v - loc) / scale


def calibration_tables(per_scan: list[np.ndarray], size: int = HEALTHY_SAMPLE_SIZE,
                       seed: int = 0) -> dict[str, np.ndarray | list]:
    """The healthy samples of both methods from each calibration scan's foreground scores.

    ``plain``: a sample of the pooled scores; ``scan-adaptive``: a sample of the pooled scores
    each standardised by its own scan's :func:`scan_level`; ``levels``: those ``(loc, scale)``.
    """
    levels = [scan_level(v) for v in per_scan]
    pooled = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in per_scan])
    std = np.concatenate([standardise(v, lv).ravel() for v, lv in zip(per_scan, levels)])
    return {PLAIN: healthy_sample(pooled, size, seed), ADAPTIVE: healthy_sample(std, size, seed),
            "levels": [[float(a), float(b)] for a, b in levels]}


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


def bh_mask(amap: np.ndarray, fg: np.ndarray, healthy_sorted: np.ndarray, q: float,
            method: str = PLAIN) -> tuple[np.ndarray, float]:
    """The FDR-``q`` mask of ``amap`` over the foreground ``fg``, and its equivalent threshold.

    ``method`` ``plain`` compares the scores with ``healthy_sorted`` as they are;
    ``scan-adaptive`` first standardises them by the scan's own :func:`scan_level` (then
    ``healthy_sorted`` must be the calibration's standardised sample). The mask equals
    ``(amap > threshold) & fg``: ``threshold`` is the largest foreground score not flagged (just
    below the smallest score when nothing is kept).
    """
    if method not in DESCRIPTIONS:
        raise ValueError(f"unknown FDR method {method!r}; choose one of {', '.join(DESCRIPTIONS)}")
    mask = np.zeros(amap.shape, dtype=bool)
    values = amap[fg]
    if values.size == 0:
        return mask, float("inf")
    tested = standardise(values) if method == ADAPTIVE else values
    rejected = benjamini_hochberg(conformal_pvalues(tested, healthy_sorted), q)
    mask[fg] = rejected
    kept = values[~rejected]
    threshold = float(kept.max()) if kept.size else float(np.nextafter(values.min(), -np.inf))
    return mask, threshold
