"""The ``zscore`` and ``ssim`` anomaly scores: healthy statistics given the reconstruction (issue 13 section 2)."""

from __future__ import annotations

import numpy as np
import pytest
from lesion_stats import matched_means
from scipy import ndimage as ndi

from medidiff.core.lesions import iso_intense_lesion
from medidiff.core.model import DiffusionModel
from medidiff.errors import MedidiffError, ModelError
from medidiff.io import Scan
from medidiff.tasks.anomaly import AnomalyOptionError, AnomalyOptions, calibrate_threshold, detect_anomalies
from medidiff.tasks.anomaly.scores import fit_profile, local_ssim, zscore

CALIBRATION = (3, 4)  # held-out healthy slices the scores are calibrated on; the others are tested


def _scan(arr: np.ndarray) -> Scan:
    return Scan(arr.astype(np.float32), (3.0, 3.0), np.diag([3.0, 3.0, 3.0, 1.0]), "MR", {})


@pytest.fixture(scope="module")
def scored(tiny_mr_model, mr_heldout_slices):
    """Copies of the tiny model calibrated in memory for each new score on held-out healthy slices 3, 4."""
    out = {}
    for score in ("zscore", "ssim"):
        model = DiffusionModel.load(tiny_mr_model.path)
        calibrate_threshold(model, [_scan(mr_heldout_slices[k]) for k in CALIBRATION], 99.0, save=False,
                            device="cpu", score=score)
        out[score] = model
    return out


def test_zscore_maths_by_hand():
    """Residual spread that grows with the reconstructed intensity is standardised away, bin by bin."""
    rng = np.random.default_rng(0)
    recon = rng.uniform(-1, 1, 20000)
    res = np.abs(rng.normal(0, 0.05 + 0.2 * (recon + 1), recon.size))  # bright tissue is harder to reconstruct
    prof = fit_profile(recon, {"residual": res}, n_bins=8)
    z = zscore(res, recon, prof, "residual")
    lo, hi = recon < -0.75, recon > 0.75
    assert abs(z[lo].mean()) < 0.05 and abs(z[hi].mean()) < 0.05
    assert z[lo].std() == pytest.approx(1.0, abs=0.1) and z[hi].std() == pytest.approx(1.0, abs=0.1)
    assert res[hi].mean() > 4 * res[lo].mean()  # while the raw residual differs 4x between them
    # out-of-range reconstructions use the end bins
    assert np.isfinite(zscore(np.array([0.1]), np.array([5.0]), prof, "residual")).all()
    img = rng.normal(size=(32, 32))
    assert np.allclose(local_ssim(img, img), 1.0) and abs(local_ssim(img, rng.normal(size=img.shape)).mean()) < 0.1


@pytest.mark.parametrize("score", ["zscore", "ssim"])
def test_iso_intense_lesions_score_higher_than_healthy_tissue_of_the_same_intensity(scored, mr_heldout_slices, score):
    """Pooled over 8 lesions on the 4 held-out slices not calibrated on, in units of the healthy spread."""
    model = scored[score]
    gaps, base = [], []
    for k, img in enumerate(mr_heldout_slices):
        if k in CALIBRATION:
            continue
        for seed in (0, 1):
            les = iso_intense_lesion(img, seed=seed, radius=7)
            res = detect_anomalies(model, _scan(les.image), threshold=1e9, device="cpu")
            fg = res.foreground.array > 0
            healthy = fg & ~ndi.binary_dilation(les.mask, iterations=3)
            m = res.map.array
            inside, matched = matched_means(m, les.image, les.mask, healthy)
            gaps.append((inside - matched) / m[healthy].std())
            b = np.abs(les.image - les.image[fg].mean())
            inside, matched = matched_means(b, les.image, les.mask, healthy)
            base.append((inside - matched) / b[healthy].std())
    assert np.mean(base) < 0.1  # the lesions really are iso-intense: intensity alone hardly sees them
    assert np.mean(gaps) > 0.3 and sum(g > 0 for g in gaps) >= 6, gaps


@pytest.mark.parametrize("score", ["zscore", "ssim"])
def test_score_map_does_not_change_when_the_scan_is_rescaled(scored, mr_heldout_slices, score):
    model = scored[score]
    les = iso_intense_lesion(mr_heldout_slices[1], seed=0, radius=7)
    a = detect_anomalies(model, _scan(les.image), device="cpu")
    assert a.options["score"] == score and a.threshold == model.config.anomaly["threshold"]
    for factor in (0.01, 7.5):
        b = detect_anomalies(model, _scan(les.image * factor), device="cpu")
        np.testing.assert_allclose(b.map.array, a.map.array, rtol=1e-3, atol=1e-3 * float(np.abs(a.map.array).max()))
        np.testing.assert_array_equal(b.mask.array, a.mask.array)


def test_profile_is_stored_with_the_calibration_and_checked(scored, tiny_mr_model, mr_heldout_slices, tmp_path):
    import shutil

    prof = scored["ssim"].config.anomaly["score_profile"]
    assert len(prof["edges"]) >= 5 and {"residual", "ssim"} <= set(prof)
    assert scored["ssim"].config.anomaly["options"]["score"] == "ssim"
    folder = tmp_path / "model"
    shutil.copytree(tiny_mr_model.path, folder)
    model = DiffusionModel.load(folder)
    calibrate_threshold(model, [_scan(mr_heldout_slices[k]) for k in CALIBRATION], 99.0, device="cpu", score="zscore")
    again = DiffusionModel.load(folder)  # written to config.json and read back
    assert again.config.anomaly["score_profile"] == model.config.anomaly["score_profile"]
    assert "zscore" in (folder / "MODEL_CARD.md").read_text()
    scan = _scan(mr_heldout_slices[0])
    with pytest.raises(ModelError, match="other options"):  # a zscore calibration is no ssim calibration
        detect_anomalies(again, scan, score="ssim", device="cpu")
    with pytest.raises(ModelError, match="calibrat"):  # no calibration: no healthy statistics, one line
        detect_anomalies(DiffusionModel.load(tiny_mr_model.path), scan, score="zscore", threshold=1.0, device="cpu")
    with pytest.raises(AnomalyOptionError, match="--score") as err:
        detect_anomalies(again, scan, score="zz", device="cpu")
    assert isinstance(err.value, MedidiffError) and "\n" not in str(err.value)
    for bad in (-1, 50, "nan"):
        with pytest.raises(AnomalyOptionError, match="--smooth-sigma"):
            AnomalyOptions(smooth_sigma=bad)


def test_gaussian_smoothing_stays_inside_the_tissue(scored, mr_heldout_slices):
    """``smooth_sigma``: smoother inside the tissue, zero outside, and the dark background does not pull edges down."""
    model = scored["zscore"]
    scan = _scan(mr_heldout_slices[0])
    plain = detect_anomalies(model, scan, threshold=1e9, device="cpu", score="residual", median_size=0)
    smooth = detect_anomalies(model, scan, threshold=1e9, device="cpu", score="residual", median_size=0, smooth_sigma=2)
    fg = plain.foreground.array > 0
    a, b = plain.map.array, smooth.map.array
    assert (b[~fg] == 0).all() and smooth.options["smooth_sigma"] == 2.0
    assert np.abs(np.diff(b, axis=1))[fg[:, 1:] & fg[:, :-1]].mean() < 0.5 * np.abs(np.diff(a, axis=1))[fg[:, 1:] & fg[:, :-1]].mean()
    assert b[fg].mean() == pytest.approx(a[fg].mean(), rel=0.15)  # normalised: no loss of level at the tissue edge
