"""Test helper: is a lesion scored above healthy tissue of the same intensity?"""

from __future__ import annotations

import numpy as np


def matched_means(score, image, lesion, healthy, bins: int = 8) -> tuple[float, float]:
    """Mean score of lesion voxels, and of healthy voxels re-weighted to the lesion's intensity histogram."""
    edges = np.quantile(image[lesion], np.linspace(0, 1, bins + 1))
    inside = healthy & (image >= edges[0]) & (image <= edges[-1])
    lb = np.clip(np.searchsorted(edges, image[lesion], side="right") - 1, 0, bins - 1)
    hb = np.clip(np.searchsorted(edges, image[inside], side="right") - 1, 0, bins - 1)
    used = [b for b in range(bins) if (hb == b).any()]
    weights = np.array([np.mean(lb == b) for b in used])
    healthy_mean = np.array([score[inside][hb == b].mean() for b in used])
    return float(score[lesion].mean()), float(weights @ healthy_mean / weights.sum())
