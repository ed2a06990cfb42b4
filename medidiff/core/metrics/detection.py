"""Detection metrics: voxel-wise anomaly scores against a binary mask.

:func:`auroc` (Mann-Whitney U with mid-ranks), :func:`auprc` (average precision, ties as one
step), :func:`dice` and :func:`best_dice` (the best Dice over thresholds of the scores).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["auroc", "auprc", "dice", "best_dice"]


def _scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels have different sizes: {s.size} vs {y.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or Inf")
    return s, y.astype(bool)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (``nan`` when labels hold only one class).

    Computed as the Mann-Whitney U statistic with mid-ranks, so tied scores count one half:
    identical to the trapezoidal area of sklearn's ``roc_auc_score``.
    """
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _tie_groups(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with cumulative true and false positives at each."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]  # end of each tie group
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    return s_sorted[last], tp.astype(np.float64), fp.astype(np.float64)


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision, ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds.

    The step-wise (non-interpolated) area of sklearn's ``average_precision_score``: tied scores
    form one threshold, so their order does not matter. ``nan`` when there are no positives.
    """
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    _, tp, fp = _tie_groups(s, y)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Dice overlap ``2|A and B| / (|A| + |B|)`` of two masks (nonzero = inside); 1.0 when both are empty."""
    a = np.asarray(pred_mask).astype(bool)
    b = np.asarray(true_mask).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(a, b).sum() / total)


def best_dice(scores: np.ndarray, labels: np.ndarray, n_thresholds: int | None = 100) -> tuple[float, float]:
    """Best Dice of ``scores >= t`` against ``labels`` over thresholds ``t``: ``(dice, t)``.

    The optimum is always at a threshold equal to the score of some positive voxel (raising ``t``
    to the next positive score drops only false positives), so candidates are the distinct scores
    of positive voxels: all of them (the exact optimum) when there are at most ``n_thresholds`` or
    ``n_thresholds`` is ``None``, otherwise ``n_thresholds`` of them at evenly spaced quantiles.
    Ties are never split: every voxel with a score ``>= t`` is predicted positive. With no positive
    voxel the best is predicting nothing: ``(1.0, inf)``.
    """
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return 1.0, float("inf")
    candidates = np.unique(s[y])
    if n_thresholds is not None and candidates.size > n_thresholds:
        if n_thresholds < 1:
            raise ValueError(f"n_thresholds must be >= 1 or None, got {n_thresholds}")
        candidates = np.unique(np.quantile(candidates, np.linspace(0.0, 1.0, n_thresholds), method="inverted_cdf"))
    all_sorted = np.sort(s)
    pos_sorted = np.sort(s[y])
    predicted = s.size - np.searchsorted(all_sorted, candidates, side="left")
    tp = n_pos - np.searchsorted(pos_sorted, candidates, side="left")
    scores_d = 2.0 * tp / (predicted + n_pos)
    best = int(np.argmax(scores_d))
    return float(scores_d[best]), float(candidates[best])
