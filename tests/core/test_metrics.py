"""Metrics: hand-computed values on tiny arrays (ties included) and behaviour on real images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from skimage import data
from skimage.metrics import structural_similarity

from medidiff.core import metrics

CAMERA = data.camera().astype(np.float64)
MOON = data.moon().astype(np.float64)
CELL = data.cell().astype(np.float64)


def _crops(image: np.ndarray, n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, image.shape[0] - size, n)
    xs = rng.integers(0, image.shape[1] - size, n)
    return np.stack([image[y : y + size, x : x + size] for y, x in zip(ys, xs)])


# --------------------------------------------------------------------------------------------
# PSNR / SSIM / MS-SSIM


def test_psnr_hand_values() -> None:
    ref = np.array([[0.0, 1.0], [2.0, 3.0]])
    test = np.array([[0.0, 1.0], [2.0, 4.0]])
    assert metrics.psnr(ref, test) == pytest.approx(10 * np.log10(9 / 0.25))  # range 3, MSE 1/4
    assert metrics.psnr(ref, test, data_range=1.0) == pytest.approx(10 * np.log10(1 / 0.25))
    assert metrics.psnr(ref, ref) == float("inf")
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(ref, ref[0])
    with pytest.raises(ValueError, match="constant"):
        metrics.psnr(np.ones((3, 3)), np.zeros((3, 3)))


def test_ssim_2d_3d_and_noise_order() -> None:
    rng = np.random.default_rng(0)
    assert metrics.ssim(CAMERA, CAMERA) == pytest.approx(1.0)
    values = [metrics.ssim(CAMERA, CAMERA + rng.normal(0, s, CAMERA.shape)) for s in (5, 20, 50)]
    assert values[0] > values[1] > values[2] > 0
    noisy = CAMERA + rng.normal(0, 20, CAMERA.shape)
    expected = structural_similarity(
        CAMERA, noisy, data_range=255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert metrics.ssim(CAMERA, noisy) == pytest.approx(expected)
    vol = np.stack([CAMERA[i * 16 : i * 16 + 128, :128] for i in range(12)])
    noisy_vol = vol + rng.normal(0, 20, vol.shape)
    assert 0 < metrics.ssim(vol, noisy_vol) < 1
    thin, thin_noisy = vol[:4], noisy_vol[:4]  # too thin for an 11-wide 3D window: mean over slices
    dr = float(np.ptp(thin))
    assert metrics.ssim(thin, thin_noisy) == pytest.approx(
        np.mean([metrics.ssim(a, b, data_range=dr) for a, b in zip(thin, thin_noisy)])
    )


def test_ms_ssim_identity_noise_and_small_images() -> None:
    rng = np.random.default_rng(1)
    assert metrics.ms_ssim(CAMERA, CAMERA) == pytest.approx(1.0)
    values = [metrics.ms_ssim(CAMERA, CAMERA + rng.normal(0, s, CAMERA.shape)) for s in (2, 10, 30, 60)]
    assert all(0 < v < 1 for v in values)
    assert values == sorted(values, reverse=True)
    a, b = CAMERA[200:264, 200:264], MOON[200:264, 200:264]  # 3 scales fit at 64 pixels
    assert metrics.ms_ssim(a, a) == pytest.approx(1.0)
    assert metrics.ms_ssim(a, b) == pytest.approx(metrics.ms_ssim(b, a))
    assert metrics.ms_ssim(a, b) < metrics.ms_ssim(a, a + rng.normal(0, 10, a.shape))
    assert metrics.ms_ssim(a[:8, :8], a[:8, :8]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2D"):
        metrics.ms_ssim(np.zeros((2, 32, 32)), np.zeros((2, 32, 32)))


def test_ms_ssim_single_scale_equals_ssim_definition() -> None:
    # a 20-pixel image allows one scale, where MS-SSIM is the mean SSIM with the 11-pixel window
    rng = np.random.default_rng(2)
    a = CAMERA[100:120, 100:120]
    b = a + rng.normal(0, 10, a.shape)
    dr = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    expected = structural_similarity(a, b, data_range=dr, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, full=True)[1][5:-5, 5:-5].mean()
    assert metrics.ms_ssim(a, b) == pytest.approx(expected, rel=1e-6)


def test_mean_pairwise_ms_ssim_measures_diversity() -> None:
    rng = np.random.default_rng(3)
    base = CAMERA[200:264, 200:264]
    copies = np.stack([base + rng.normal(0, 3, base.shape) for _ in range(6)])
    varied = _crops(CAMERA, 6, 64, seed=4)
    assert metrics.mean_pairwise_ms_ssim(np.stack([base] * 4)) == pytest.approx(1.0)
    assert metrics.mean_pairwise_ms_ssim(copies) > 0.9
    assert metrics.mean_pairwise_ms_ssim(varied) < metrics.mean_pairwise_ms_ssim(copies) - 0.2
    # subsampling pairs is deterministic for a seed
    many = _crops(CAMERA, 20, 48, seed=5)
    assert metrics.mean_pairwise_ms_ssim(many, max_pairs=30, seed=1) == metrics.mean_pairwise_ms_ssim(
        many, max_pairs=30, seed=1
    )
    with pytest.raises(ValueError):
        metrics.mean_pairwise_ms_ssim(base[None])


# --------------------------------------------------------------------------------------------
# anomaly metrics


def test_auroc_hand_values_with_ties() -> None:
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # positives {2, 3}, negatives {1, 2}: pairs score 1, 0.5 (tie), 1, 1 -> 3.5 / 4
    assert metrics.auroc([1, 2, 2, 3], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert metrics.auroc([0.5] * 4, [0, 1, 0, 1]) == pytest.approx(0.5)
    assert metrics.auroc([3, 2, 1], [1, 0, 0]) == pytest.approx(1.0)
    assert metrics.auroc([3, 2, 1], [0, 1, 1]) == pytest.approx(0.0)
    assert np.isnan(metrics.auroc([1, 2], [1, 1]))
    masks = np.zeros((2, 3, 3))
    masks[0, 1, 1] = 1  # any shape: flattened
    assert metrics.auroc(masks * 5 + 1, masks) == pytest.approx(1.0)


def test_auprc_hand_values_with_ties() -> None:
    # thresholds 0.8: P=1 R=.5; 0.4: P=.5 R=.5; 0.35: P=2/3 R=1 -> AP = .5*1 + .5*2/3
    assert metrics.auprc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.5 + 1 / 3)
    # the tie at 2 is one threshold (P = 2/3 at R = 1), whatever the order of the tied items
    for scores, labels in ([3, 2, 2, 1], [1, 0, 1, 0]), ([3, 2, 2, 1], [1, 1, 0, 0]):
        assert metrics.auprc(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert metrics.auprc([0.5] * 4, [0, 1, 0, 1]) == pytest.approx(0.5)
    assert metrics.auprc([3, 2, 1], [1, 0, 0]) == pytest.approx(1.0)
    assert metrics.auprc([3, 2, 1], [0, 0, 1]) == pytest.approx(1 / 3)
    assert np.isnan(metrics.auprc([1, 2], [0, 0]))


def _brute_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = np.sum(pred & labels)
        recall = tp / labels.sum()
        ap += (recall - prev_recall) * tp / pred.sum()
        prev_recall = recall
    return ap


def _brute_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_auprc_match_brute_force_with_many_ties() -> None:
    rng = np.random.default_rng(6)
    for _ in range(5):
        labels = rng.random(60) < 0.3
        scores = rng.integers(0, 6, 60) + labels * rng.integers(0, 3, 60)  # integers: many ties
        assert metrics.auroc(scores, labels) == pytest.approx(_brute_auc(scores, labels))
        assert metrics.auprc(scores, labels) == pytest.approx(_brute_ap(scores, labels))


def test_dice_hand_values() -> None:
    assert metrics.dice([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert metrics.dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert metrics.dice([0, 0], [0, 1]) == 0.0
    assert metrics.dice([2.0, 0.5, 0], [1, 1, 0]) == 1.0  # nonzero counts as inside
    with pytest.raises(ValueError):
        metrics.dice([1, 0], [1, 0, 0])


def test_best_dice_hand_values_and_ties() -> None:
    # t=0.9: 2*1/(1+2)=0.667; t=0.7 predicts both tied voxels: 2*2/(3+2)=0.8 (a split tie would give 1)
    value, threshold = metrics.best_dice([0.9, 0.7, 0.7, 0.2], [1, 1, 0, 0])
    assert value == pytest.approx(0.8) and threshold == pytest.approx(0.7)
    value, threshold = metrics.best_dice([0.9, 0.8, 0.8, 0.3, 0.1], [1, 1, 0, 0, 1])
    assert value == pytest.approx(0.75) and threshold == pytest.approx(0.1)  # 2*3/(5+3)
    assert metrics.best_dice([0.1, 0.2], [0, 0]) == (1.0, float("inf"))


def test_best_dice_matches_dense_sweep() -> None:
    rng = np.random.default_rng(7)
    labels = np.zeros((32, 32), dtype=bool)
    labels[10:16, 12:20] = True
    scores = np.round(rng.random((32, 32)) + 0.8 * labels, 1)  # coarse values: many ties
    brute = max(
        (metrics.dice(scores >= t, labels), t) for t in np.unique(scores)
    )
    value, threshold = metrics.best_dice(scores, labels, n_thresholds=None)
    assert value == pytest.approx(brute[0])
    assert metrics.dice(scores >= threshold, labels) == pytest.approx(value)
    capped, t_capped = metrics.best_dice(rng.random(2000), rng.random(2000) < 0.2, n_thresholds=10)
    assert 0 < capped <= 1 and np.isfinite(t_capped)


# --------------------------------------------------------------------------------------------
# generation: features, KID/MMD, histograms, memorisation


def test_image_features_fixed_and_deterministic() -> None:
    crops = _crops(CAMERA, 4, 96, seed=8)
    f1 = metrics.image_features(crops)
    f2 = metrics.image_features(list(crops))
    assert f1.shape == (4, 488) and np.all(np.isfinite(f1))
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(metrics.image_features(crops[0]), f1[:1])
    # different images give different features; a brightness/contrast change does not (per-image range)
    assert np.linalg.norm(f1[0] - f1[1]) > 1.0
    np.testing.assert_allclose(metrics.image_features(crops * 2 + 10), f1, atol=1e-9)
    # with a fixed value range, absolute intensity counts
    fixed = metrics.image_features(crops, value_range=(0, 255))
    darker = metrics.image_features(crops * 0.5, value_range=(0, 255))
    assert np.linalg.norm(fixed - darker) > 1.0


def test_kid_hand_value_and_distributions() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 2.0]])

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / 2 + 1) ** 3

    kxx = np.mean([k(x[i], x[j]) for i in range(3) for j in range(3) if i != j])
    kyy = np.mean([k(y[i], y[j]) for i in range(3) for j in range(3) if i != j])
    kxy = np.mean([k(x[i], y[j]) for i in range(3) for j in range(3)])
    mean, std = metrics.kid(x, y, subsets=3, subset_size=3)
    assert mean == pytest.approx(kxx + kyy - 2 * kxy) and std == pytest.approx(0.0)

    crops = _crops(CAMERA, 120, 64, seed=9)
    camera = metrics.image_features(crops)
    moon = metrics.image_features(_crops(MOON, 60, 64, seed=10))
    noisy = metrics.image_features(crops[:60] + np.random.default_rng(0).normal(0, 15, (60, 64, 64)))
    same, same_std = metrics.kid(camera[:60], camera[60:], subsets=50, subset_size=50)
    assert abs(same) < 3 * same_std  # ~0 within its subset spread
    for other in (moon, noisy):
        diff, diff_std = metrics.kid(camera[60:], other, subsets=50, subset_size=50)
        assert diff > 5 * abs(same) and diff > 5 * diff_std
    assert metrics.mmd_rbf(camera[60:], moon) > 5 * abs(metrics.mmd_rbf(camera[:60], camera[60:]))


def test_histogram_distance() -> None:
    a = _crops(CAMERA, 5, 64, seed=11)
    assert metrics.histogram_distance(a, a) == pytest.approx(0.0)
    assert metrics.histogram_distance(list(a), list(a + 10.0), method="wasserstein") == pytest.approx(10.0)
    assert metrics.histogram_distance(np.zeros((8, 8)), np.ones((8, 8)), bins=4) == pytest.approx(1.0)
    js_close = metrics.histogram_distance(CAMERA, CAMERA + np.random.default_rng(0).normal(0, 2, CAMERA.shape))
    js_far = metrics.histogram_distance(CAMERA, MOON)
    assert 0 < js_close < js_far <= 1
    with pytest.raises(ValueError):
        metrics.histogram_distance(a, a, method="kl")


@pytest.mark.parametrize("metric", ["ncc", "ssim"])
def test_nearest_neighbours_finds_planted_copy(metric: str) -> None:
    references = _crops(CAMERA, 30, 64, seed=12)
    rng = np.random.default_rng(13)
    planted = references[7] * 1.1 + 5 + rng.normal(0, 1.0, (64, 64))  # a copy, rescaled and noisy
    samples = np.stack([planted, MOON[100:164, 100:164], CELL[200:264, 200:264]])
    index, score = metrics.nearest_neighbours(samples, references, metric=metric)
    assert index.shape == score.shape == (3,)
    assert index[0] == 7 and score[0] > 0.95
    assert np.all(score[1:] < 0.8)
    # single image in, constant image scores 0 with NCC
    i1, s1 = metrics.nearest_neighbours(references[3], references)
    assert i1[0] == 3 and s1[0] == pytest.approx(1.0)
    assert metrics.nearest_neighbours(np.ones((64, 64)), references)[1][0] == 0.0
    with pytest.raises(ValueError, match="resize"):
        metrics.nearest_neighbours(np.zeros((32, 32)), references)


def test_masked_ncc_map_equals_the_ncc_over_kept_pixels_at_every_shift() -> None:
    from medidiff.core.metrics.memorisation import Reference, masked_ncc_map

    rng = np.random.default_rng(3)
    ref_img = CAMERA[100:140, 200:250]
    mask = rng.random(ref_img.shape) > 0.3
    tmpl = CAMERA[110:126, 210:230] + rng.normal(0, 5, (16, 20))
    weight = np.zeros(tmpl.shape)
    weight[2:-2, 3:-3] = 1
    r = masked_ncc_map(tmpl, weight, Reference(ref_img * mask, mask.astype(float), (0, 0)), min_pixels=50)
    assert r.shape == (40 - 16 + 1, 50 - 20 + 1)
    for y, x in [(0, 0), (10, 10), (24, 30), (5, 17)]:
        keep = (mask[y : y + 16, x : x + 20] & (weight > 0)).ravel()
        a, b = tmpl.ravel()[keep], ref_img[y : y + 16, x : x + 20].ravel()[keep]
        assert r[y, x] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-9)
    assert np.unravel_index(np.argmax(r), r.shape) == (10, 10)  # where the template came from


def test_kid_bootstrap_spread_reflects_few_samples_and_floor_is_near_zero() -> None:
    from medidiff.core.metrics.distributions import kid_bootstrap, kid_floor

    camera = metrics.image_features(_crops(CAMERA, 96, 64, seed=21))
    moon = metrics.image_features(_crops(MOON, 48, 64, seed=22))
    # with fewer images than the subset size, subset KID reports no spread at all; the bootstrap
    # (both sets resampled) does, and it shrinks as the sets grow
    few_old = metrics.kid(camera[:6], camera[48:54])
    few = kid_bootstrap(camera[:6], camera[48:54], seed=0)
    many = kid_bootstrap(camera[:48], camera[48:], seed=0)
    assert few_old[1] < 1e-12 and few.std > 0
    assert few.std > 2 * many.std and (few.high - few.low) > 2 * (many.high - many.low)
    assert few.value == pytest.approx(few_old[0])  # the same estimate on the full sets
    assert few.low <= few.value <= few.high and few.n_x == 6 and few.resamples == 200
    # same seed, same numbers
    assert kid_bootstrap(camera[:6], camera[48:54], seed=0) == few
    # the real-vs-real floor of one distribution holds 0 in its interval; other distributions'
    # KIDs lie above it (heavily noisy copies: the whole interval; crops of another image, the
    # moon, do not: at 48 images the floor's interval is wider than their KID with these features)
    floor = kid_floor(camera, seed=0)
    assert floor.low < 0 < floor.high and floor.n_x == 48
    noisy = metrics.image_features(_crops(CAMERA, 48, 64, seed=21) + np.random.default_rng(0).normal(0, 40, (48, 64, 64)))
    assert kid_bootstrap(noisy, camera, seed=0).low > floor.high
    assert kid_bootstrap(moon, camera, seed=0).value > floor.value
    with pytest.raises(ValueError):
        kid_floor(camera[:3])
