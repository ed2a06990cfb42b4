"""Distributions of image sets: diversity, distribution distances and memorisation.

Diversity :func:`mean_pairwise_ms_ssim`; distances :func:`kid`, :func:`kid_bootstrap`,
:func:`kid_floor`, :func:`mmd_rbf` on :func:`image_features` (a fixed hand-made feature space,
no learned weights, no download), :func:`histogram_distance`; memorisation
:func:`nearest_neighbours`.

How sure a KID is
    KID is the unbiased MMD^2 of a cubic polynomial kernel between two feature sets. :func:`kid`
    reports the spread over random *subsets* drawn without replacement; with fewer images than
    the subset size every subset is the whole set and that spread is 0, however few images there
    are. :func:`kid_bootstrap` resamples *both* sets with replacement (each resample the size of
    its set) and reports the spread and a percentile interval of the resampled values, which
    grows as the sets shrink. Pairs of copies of one image are left out of the within-set means
    (they would be ``k(x, x)`` terms, which bias MMD^2 upwards). :func:`kid_floor` is the same
    estimate between two random halves of the real set: what KID reads when both sides come
    from one distribution, at about this many images; a generated set is only distinguishable
    from real when its KID is clearly above that floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .features import FEATURE_SIZE, _as_stack, image_features
from .image_quality import _data_range, _ms_ssim_stack, ssim

__all__ = ["mean_pairwise_ms_ssim", "kid", "kid_bootstrap", "kid_floor", "KIDEstimate", "mmd_rbf", "image_features", "histogram_distance", "nearest_neighbours",
           "FEATURE_SIZE"]


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


@dataclass(frozen=True)
class KIDEstimate:
    """A KID value with its bootstrap spread: ``value`` on the full sets, ``std`` and the
    ``low``..``high`` percentile interval (``level``, e.g. 0.95) over ``resamples`` bootstrap sets."""

    value: float
    std: float
    low: float
    high: float
    n_x: int
    n_y: int
    resamples: int
    level: float = 0.95

    def text(self, scale: float = 1.0) -> str:
        """``value +- std [low, high]`` (times ``scale``)."""
        return (f"{self.value * scale:.4f} +- {self.std * scale:.4f} "
                f"[{self.low * scale:.4f}, {self.high * scale:.4f}]")


def _poly(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    return (a @ b.T / d + 1.0) ** 3


def _mmd2_indexed(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> float:
    """Unbiased MMD^2 of the index sets ``ix``, ``iy`` (with repeats), leaving out pairs of copies."""
    def within(k: np.ndarray, idx: np.ndarray) -> float:
        sub = k[np.ix_(idx, idx)]
        keep = idx[:, None] != idx[None, :]
        return float(sub[keep].mean()) if keep.any() else 0.0

    return within(kxx, ix) + within(kyy, iy) - 2.0 * float(kxy[np.ix_(ix, iy)].mean())


def kid_bootstrap(
    x_feats: np.ndarray, y_feats: np.ndarray, resamples: int = 200, seed: int = 0, level: float = 0.95,
    max_n: int = 2000,
) -> KIDEstimate:
    """KID with a bootstrap spread that resamples both sets (see the module docstring).

    ``value`` is the unbiased MMD^2 of the full sets (the same polynomial kernel as :func:`kid`);
    ``std`` and the ``level`` percentile interval come from ``resamples`` bootstrap pairs, each set
    resampled with replacement at its own size (redrawn if it holds one image only). Sets larger than ``max_n`` are first subsampled
    (seeded) to bound the kernel matrices. Same ``seed``, same result.
    """
    x, y = _feats(x_feats, "x_feats"), _feats(y_feats, "y_feats")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    if resamples < 2 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 2 and 0 < level < 1, got {resamples}, {level}")
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_n:
        x = x[np.sort(rng.choice(x.shape[0], max_n, replace=False))]
    if y.shape[0] > max_n:
        y = y[np.sort(rng.choice(y.shape[0], max_n, replace=False))]
    d = x.shape[1]
    kxx, kyy, kxy = _poly(x, x, d), _poly(y, y, d), _poly(x, y, d)
    value = _unbiased_mmd2(kxx, kyy, kxy)
    nx, ny = x.shape[0], y.shape[0]
    def draw(n: int) -> np.ndarray:  # a resample with at least 2 distinct images (else no within-set pair)
        while True:
            idx = rng.integers(0, n, n)
            if np.any(idx != idx[0]):
                return idx

    values = np.array([_mmd2_indexed(kxx, kyy, kxy, draw(nx), draw(ny)) for _ in range(int(resamples))])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return KIDEstimate(float(value), float(values.std()), float(low), float(high), nx, ny, int(resamples), float(level))


def kid_floor(real_feats: np.ndarray, resamples: int = 200, seed: int = 0, level: float = 0.95) -> KIDEstimate:
    """The real-vs-real KID: :func:`kid_bootstrap` between two random halves (seeded) of ``real_feats``."""
    r = _feats(real_feats, "real_feats")
    if r.shape[0] < 4:
        raise ValueError("a real-vs-real KID floor needs at least 4 real images (2 per half)")
    order = np.random.default_rng(seed).permutation(r.shape[0])
    half = r.shape[0] // 2
    return kid_bootstrap(r[order[:half]], r[order[half:]], resamples=resamples, seed=seed + 1, level=level)


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
    their shape (resize first). A score near 1 means a close match; the memorisation check of
    generated sets does not use it (whole-image NCC is dominated by outlines: neighbouring slices
    and blurred look-alikes reach 0.95-0.99) but :mod:`medidiff.core.metrics.memorisation`.
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
