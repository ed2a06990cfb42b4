"""Metrics for denoising, generation, anomaly detection and evaluation (numpy in, floats out).

Image quality
    :func:`psnr`, :func:`ssim` (2D or 3D), :func:`ms_ssim` (2D, multi-scale).
Anomaly detection (voxel-wise scores against a binary mask)
    :func:`auroc`, :func:`auprc` (average precision), :func:`dice`, :func:`best_dice`.
Generation (sets of 2D images)
    diversity :func:`mean_pairwise_ms_ssim`; distribution distances :func:`kid`, :func:`mmd_rbf` on
    :func:`image_features` (a fixed hand-made feature space, no learned weights, no download),
    :func:`histogram_distance`; memorisation :func:`nearest_neighbours`.

Every function takes numpy arrays (torch tensors go through ``np.asarray``; move them to the CPU
first) and works in float64 internally.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy import stats

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


# --------------------------------------------------------------------------------------------
# image quality


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


def mean_pairwise_ms_ssim(
    images: np.ndarray | Sequence[np.ndarray], max_pairs: int = 500, seed: int = 0, data_range: float | None = None
) -> float:
    """Mean MS-SSIM over pairs of distinct images of a set: a diversity score (lower = more diverse).

    ``images`` is ``(N, H, W)``. All ``N(N-1)/2`` pairs are used when there are at most ``max_pairs``,
    otherwise ``max_pairs`` distinct pairs drawn with ``seed``. ``data_range`` defaults to the range
    of the whole set, so every pair is scored on the same scale.
    """
    stack = np.asarray(images, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[0] < 2:
        raise ValueError(f"need a (N, H, W) stack of at least 2 images; got shape {stack.shape}")
    dr = _data_range(stack, data_range)
    n = stack.shape[0]
    first, second = np.triu_indices(n, k=1)
    if first.size > max_pairs:
        pick = np.random.default_rng(seed).choice(first.size, size=max_pairs, replace=False)
        first, second = first[pick], second[pick]
    scores = []
    for start in range(0, first.size, 64):
        i, j = first[start : start + 64], second[start : start + 64]
        scores.append(_ms_ssim_stack(stack[i], stack[j], dr))
    return float(np.mean(np.concatenate(scores)))


# --------------------------------------------------------------------------------------------
# anomaly detection


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


# --------------------------------------------------------------------------------------------
# distribution distances


def _feats(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (n_samples, n_features); got shape {arr.shape}")
    return arr


def _unbiased_mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = kxx.shape[0], kyy.shape[0]
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def kid(
    x_feats: np.ndarray, y_feats: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance on any features: ``(mean, std)`` of unbiased MMD^2 over subsets.

    Polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` (Binkowski et al. 2018), ``subsets`` random
    subsets of ``min(subset_size, n_x, n_y)`` rows from each set (drawn with ``seed``). About 0 for
    two samples of one distribution (it can be slightly negative), larger for different ones.
    """
    x, y = _feats(x_feats, "x_feats"), _feats(y_feats, "y_feats")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        xs = x[rng.choice(x.shape[0], m, replace=False)]
        ys = y[rng.choice(y.shape[0], m, replace=False)]
        values.append(
            _unbiased_mmd2((xs @ xs.T / d + 1.0) ** 3, (ys @ ys.T / d + 1.0) ** 3, (xs @ ys.T / d + 1.0) ** 3)
        )
    return float(np.mean(values)), float(np.std(values))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def mmd_rbf(x_feats: np.ndarray, y_feats: np.ndarray, sigma: float | None = None) -> float:
    """Unbiased MMD^2 with the Gaussian kernel ``exp(-|x - y|^2 / (2 sigma^2))``.

    ``sigma`` defaults to the median pairwise distance of the pooled samples (the median heuristic,
    computed on at most 1000 of them, seed 0).
    """
    x, y = _feats(x_feats, "x_feats"), _feats(y_feats, "y_feats")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("MMD needs at least 2 samples in each set")
    if sigma is None:
        pooled = np.concatenate([x, y])
        if pooled.shape[0] > 1000:
            pooled = pooled[np.random.default_rng(0).choice(pooled.shape[0], 1000, replace=False)]
        dists = np.sqrt(_sq_dists(pooled, pooled)[np.triu_indices(pooled.shape[0], k=1)])
        sigma = float(np.median(dists)) or 1.0
    gamma = 1.0 / (2.0 * sigma * sigma)
    return _unbiased_mmd2(
        np.exp(-gamma * _sq_dists(x, x)), np.exp(-gamma * _sq_dists(y, y)), np.exp(-gamma * _sq_dists(x, y))
    )


# --------------------------------------------------------------------------------------------
# a fixed feature space for 2D images

FEATURE_SIZE = 64
_HIST_BINS = 32
_N_BLOCKS = 4


def _as_stack(images: np.ndarray | Sequence[np.ndarray], name: str = "images") -> np.ndarray:
    if isinstance(images, np.ndarray):
        stack = images.astype(np.float64, copy=False)
    else:
        stack = np.stack([np.asarray(im, dtype=np.float64) for im in images])
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"{name} must be one 2D image or a (N, H, W) stack; got shape {stack.shape}")
    if stack.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return stack


def _radial_profile(power: np.ndarray) -> np.ndarray:
    size = power.shape[-1]
    fy = np.fft.fftfreq(size) * size
    radius = np.sqrt(fy[:, None] ** 2 + fy[None, :] ** 2).round().astype(int).ravel()
    n_r = size // 2
    keep = (radius >= 1) & (radius <= n_r)
    counts = np.bincount(radius[keep] - 1, minlength=n_r)
    flat = power.reshape(power.shape[0], -1)[:, keep]
    sums = np.stack([np.bincount(radius[keep] - 1, weights=row, minlength=n_r) for row in flat])
    return sums / counts


def image_features(
    images: np.ndarray | Sequence[np.ndarray], value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """A fixed, deterministic, download-free feature vector per 2D image: ``(N, 488)`` float64.

    Each image is resized to 64x64 (bilinear, anti-aliased; aspect ratio not kept) and mapped to
    [0, 1]: by ``value_range`` (e.g. the model normaliser's ``(low, high)``, so absolute intensity
    counts) or, by default, by the image's own 1st-99th percentiles. Four blocks follow:

    1. intensity histogram, 32 bins on [0, 1] (values outside clipped), square-rooted (L2 norm 1);
    2. histograms of oriented gradients (``skimage.feature.hog``, 9 orientations, L2-Hys) with 16-
       and 32-pixel cells (2x2-cell blocks): 324 + 36 values, each scale scaled to norm <= 1;
    3. radially averaged power spectrum (Hann-windowed, mean removed), radii 1..32, as
       ``(log10(share of power) + 8) / 8`` clipped to [0, 1], scaled to norm <= 1;
    4. an 8x8 thumbnail (block means), scaled to norm <= 1.

    The vector is multiplied by ``sqrt(488 / 4)`` so entries are of order 1, as the KID kernel
    ``(x.y / d + 1)^3`` expects. No learned weights: it sees intensity, edges, texture scale and
    layout, not semantics, so compare scores only between runs that use it.
    """
    from skimage.feature import hog
    from skimage.transform import resize

    stack = _as_stack(images)
    size = FEATURE_SIZE
    small = np.stack(
        [resize(im, (size, size), order=1, anti_aliasing=True, preserve_range=True) for im in stack]
    ) if stack.shape[1:] != (size, size) else stack.copy()
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"value_range must be increasing, got {value_range}")
        lo_arr, hi_arr = np.full(len(small), lo), np.full(len(small), hi)
    else:
        lo_arr, hi_arr = np.percentile(small.reshape(len(small), -1), [1.0, 99.0], axis=1)
    span = np.where(hi_arr > lo_arr, hi_arr - lo_arr, 1.0)
    unit = np.clip((small - lo_arr[:, None, None]) / span[:, None, None], 0.0, 1.0)

    # 1. intensity histogram
    bins = np.minimum((unit * _HIST_BINS).astype(int), _HIST_BINS - 1).reshape(len(unit), -1)
    hist = np.stack([np.bincount(b, minlength=_HIST_BINS) for b in bins]) / bins.shape[1]
    block_hist = np.sqrt(hist)

    # 2. HOG at two cell sizes
    hogs = []
    for im in unit:
        parts = []
        for cell in (16, 32):
            h = hog(im, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2),
                    block_norm="L2-Hys", feature_vector=True)
            n_blocks = (size // cell - 1) ** 2
            parts.append(h / np.sqrt(n_blocks))
        hogs.append(np.concatenate(parts) / np.sqrt(2.0))
    block_hog = np.stack(hogs)

    # 3. radially averaged power spectrum
    window = np.outer(np.hanning(size), np.hanning(size))
    centred = (unit - unit.mean(axis=(1, 2), keepdims=True)) * window
    power = np.abs(np.fft.fft2(centred)) ** 2
    profile = _radial_profile(power)
    share = profile / np.maximum(profile.sum(axis=1, keepdims=True), 1e-30)
    block_spec = np.clip((np.log10(share + 1e-8) + 8.0) / 8.0, 0.0, 1.0) / np.sqrt(profile.shape[1])

    # 4. 8x8 thumbnail
    thumb = unit.reshape(len(unit), 8, size // 8, 8, size // 8).mean(axis=(2, 4)).reshape(len(unit), -1) / 8.0

    feats = np.concatenate([block_hist, block_hog, block_spec, thumb], axis=1)
    return feats * np.sqrt(feats.shape[1] / _N_BLOCKS)


def histogram_distance(
    a_images: np.ndarray | Sequence[np.ndarray],
    b_images: np.ndarray | Sequence[np.ndarray],
    bins: int = 64,
    method: str = "js",
    value_range: tuple[float, float] | None = None,
) -> float:
    """Distance between the pooled intensity distributions of two image sets.

    ``"js"`` (default): Jensen-Shannon divergence (base 2, in [0, 1]) of ``bins``-bin histograms on
    ``value_range`` (default: the range of both sets together; values outside are clipped in).
    ``"wasserstein"``: the exact Wasserstein-1 (earth mover's) distance of the intensities, in
    image units (``bins`` unused; at most 10^6 voxels per set, sampled with seed 0).
    """
    a = np.concatenate([np.asarray(im, dtype=np.float64).ravel() for im in _iter_images(a_images)])
    b = np.concatenate([np.asarray(im, dtype=np.float64).ravel() for im in _iter_images(b_images)])
    if a.size == 0 or b.size == 0:
        raise ValueError("image sets must not be empty")
    if method == "wasserstein":
        rng = np.random.default_rng(0)
        if a.size > 1_000_000:
            a = rng.choice(a, 1_000_000, replace=False)
        if b.size > 1_000_000:
            b = rng.choice(b, 1_000_000, replace=False)
        return float(stats.wasserstein_distance(a, b))
    if method != "js":
        raise ValueError(f"unknown method {method!r}; choose 'js' or 'wasserstein'")
    lo, hi = value_range if value_range is not None else (min(a.min(), b.min()), max(a.max(), b.max()))
    if hi <= lo:
        return 0.0
    p = np.histogram(np.clip(a, lo, hi), bins=bins, range=(lo, hi))[0].astype(np.float64)
    q = np.histogram(np.clip(b, lo, hi), bins=bins, range=(lo, hi))[0].astype(np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2.0

    def kl(u: np.ndarray, v: np.ndarray) -> float:
        nz = u > 0
        return float(np.sum(u[nz] * np.log2(u[nz] / v[nz])))

    return float(max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m)))


def _iter_images(images: np.ndarray | Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    if isinstance(images, np.ndarray):
        return [images]
    return list(images)


# --------------------------------------------------------------------------------------------
# memorisation


def _normalised_rows(stack: np.ndarray) -> np.ndarray:
    flat = stack.reshape(stack.shape[0], -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norm, out=np.zeros_like(flat), where=norm > 0)


def nearest_neighbours(
    samples: np.ndarray | Sequence[np.ndarray],
    references: np.ndarray | Sequence[np.ndarray],
    metric: str = "ncc",
    top_k: int = 5,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """For each sample, the most similar reference: ``(index, score)`` arrays of length N.

    ``"ncc"``: global normalised cross-correlation (Pearson correlation of all pixels, no shift
    search; 1 = identical up to brightness/contrast, 0 for a constant image), as one matrix product
    in chunks of ``chunk`` samples. ``"ssim"``: the ``top_k`` references by NCC are re-scored with
    :func:`ssim` (data range of each reference) and the best kept. Samples and references must share
    their shape (resize first). A score near 1 flags a memorised (copied) training image.
    """
    s = _as_stack(samples, "samples")
    r = _as_stack(references, "references")
    if s.shape[1:] != r.shape[1:]:
        raise ValueError(f"samples {s.shape[1:]} and references {r.shape[1:]} differ in shape; resize first")
    if metric not in ("ncc", "ssim"):
        raise ValueError(f"unknown metric {metric!r}; choose 'ncc' or 'ssim'")
    rn = _normalised_rows(r)
    k = max(1, min(top_k, r.shape[0]))
    index = np.empty(s.shape[0], dtype=np.int64)
    score = np.empty(s.shape[0], dtype=np.float64)
    for start in range(0, s.shape[0], chunk):
        block = s[start : start + chunk]
        ncc = _normalised_rows(block) @ rn.T
        if metric == "ncc":
            best = np.argmax(ncc, axis=1)
            index[start : start + len(block)] = best
            score[start : start + len(block)] = ncc[np.arange(len(block)), best]
            continue
        top = np.argsort(-ncc, axis=1, kind="stable")[:, :k]
        for row, (sample, cands) in enumerate(zip(block, top)):
            values = []
            for c in cands:
                ref = r[c]
                dr = float(ref.max() - ref.min()) or 1.0
                values.append(ssim(ref, sample, data_range=dr))
            pick = int(np.argmax(values))
            index[start + row] = cands[pick]
            score[start + row] = values[pick]
    return index, score
