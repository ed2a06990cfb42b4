"""Metrics for denoising, generation, anomaly detection and evaluation (numpy in, floats out).

Image quality
    :func:`psnr`, :func:`ssim` (2D or 3D), :func:`ms_ssim` (2D, multi-scale).
Anomaly detection (voxel-wise scores against a binary mask)
    :func:`auroc`, :func:`auprc` (average precision), :func:`dice`, :func:`best_dice`.
Generation (sets of 2D images)
    diversity :func:`mean_pairwise_ms_ssim`; distribution distances :func:`kid`, :func:`mmd_rbf` on
    :func:`image_features` (a fixed hand-made feature space, no learned weights, no download),
    :func:`histogram_distance`; nearest images :func:`nearest_neighbours`; memorisation (is a
    sample a copy of a training image?) in :mod:`.memorisation` (rule ``structure-ncc``).

Every function takes numpy arrays (torch tensors go through ``np.asarray``; move them to the CPU
first) and works in float64 internally.

The functions live in :mod:`.image_quality`, :mod:`.detection`, :mod:`.features` and :mod:`.distributions`; all
are importable from here (``from medidiff.core.metrics import psnr, auroc``).
"""

from __future__ import annotations

from .detection import auprc, auroc, best_dice, dice
from .distributions import (
    FEATURE_SIZE,
    histogram_distance,
    image_features,
    kid,
    mean_pairwise_ms_ssim,
    mmd_rbf,
    nearest_neighbours,
)
from .image_quality import MS_SSIM_WEIGHTS, ms_ssim, psnr, ssim

__all__ = [
    "psnr",
    "ssim",
    "ms_ssim",
    "MS_SSIM_WEIGHTS",
    "auroc",
    "auprc",
    "dice",
    "best_dice",
    "mean_pairwise_ms_ssim",
    "kid",
    "mmd_rbf",
    "image_features",
    "histogram_distance",
    "nearest_neighbours",
]
