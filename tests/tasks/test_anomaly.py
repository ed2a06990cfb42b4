"""Anomaly detection with the tiny MR model on real held-out slices with planted lesions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from lesion_stats import matched_means

from medidiff.errors import ModelError
from medidiff.io import Scan
from medidiff.core.lesions import foreground, plant_lesion, random_lesion
from medidiff.core.metrics import auroc
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import run_to_end
from medidiff.core.simplex import fractal_noise
from medidiff.tasks.anomaly import calibrate_threshold, detect_anomalies, detect_anomalies_steps

SPACING = (2.0, 2.0)


def _affine() -> np.ndarray:
    aff = np.diag([-2.0, 2.0, 2.2, 1.0])
    aff[:3, 3] = (10.0, -20.0, 5.0)
    return aff


def _scan(arr: np.ndarray) -> Scan:
    return Scan(arr, SPACING, _affine(), "MR")


@pytest.fixture(scope="module")
def lesioned(mr_heldout_slices):
    """A clear bright elliptic lesion in a real held-out slice, with its mask."""
    les = plant_lesion(mr_heldout_slices[2], seed=1, kind="ellipse", radius=7, contrast=0.8)
    return _scan(les.image), les.mask


def _fg_auroc(result, mask) -> float:
    fg = result.foreground.array > 0
    return auroc(result.map.array[fg], mask[fg])


# -- lesions and simplex noise -----------------------------------------------------------------------
def test_lesions_are_reproducible_and_inside_tissue(mr_heldout_slices):
    img = mr_heldout_slices[1]
    a, b = random_lesion(img, seed=5), random_lesion(img, seed=5)
    c = random_lesion(img, seed=6)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask)
    assert a.mask.sum() > 10
    assert not (a.mask & ~foreground(img)).any()
    bright = plant_lesion(img, seed=2, contrast=0.5)
    dark = plant_lesion(img, seed=2, contrast=-0.5)
    assert np.array_equal(bright.mask, dark.mask)
    assert bright.image[bright.mask].mean() > img[bright.mask].mean() > dark.image[dark.mask].mean()
    outside = ~foreground(img)
    assert np.array_equal(bright.image[outside], img[outside])  # nothing planted outside tissue


def test_simplex_noise_is_seeded_smooth_and_unit_variance():
    a, b, c = fractal_noise((64, 80), 3), fractal_noise((64, 80), 3), fractal_noise((64, 80), 4)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert abs(float(a.mean())) < 1e-5 and abs(float(a.std()) - 1) < 1e-4
    # smooth: neighbouring values are strongly correlated, unlike white noise
    assert np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1] > 0.7
    v = fractal_noise((8, 24, 24), 1)
    assert v.shape == (8, 24, 24) and abs(float(v.std()) - 1) < 1e-4


# -- detection ---------------------------------------------------------------------------------------------
def test_planted_lesion_scores_higher_inside(tiny_mr_model, lesioned):
    scan, mask = lesioned
    res = detect_anomalies(tiny_mr_model, scan, threshold=1e9, device="cpu")
    assert _fg_auroc(res, mask) > 0.85
    assert res.map.array[mask].mean() > 2 * res.map.array[~mask & (res.foreground.array > 0)].mean()


@pytest.mark.parametrize("method,opts", [("ddpm", {"recon": "ddim", "ddim_steps": 2, "timesteps": (250,)}),
                                         ("patched", {"batch_size": 64})])
def test_each_method_keeps_geometry(tiny_mr_model, lesioned, method, opts):
    scan, mask = lesioned
    res = detect_anomalies(tiny_mr_model, scan, method=method, threshold=30.0, device="cpu", **opts)
    for out in (res.map, res.mask):
        assert out.shape == scan.shape and out.spacing == scan.spacing
        np.testing.assert_array_equal(out.affine, scan.affine)
    amap, fg = res.map.array, res.foreground.array > 0
    assert np.isfinite(amap).all() and (amap >= 0).all() and amap[fg].max() > 0
    assert (amap[~fg] == 0).all()
    np.testing.assert_array_equal(res.mask.array, ((amap > 30.0) & fg).astype(np.float32))
    assert res.volume_mm3 == pytest.approx(res.mask.array.sum() * 4.0)
    assert res.options["method"] == method
    assert _fg_auroc(res, mask) > 0.8


def test_simplex_refused_on_a_white_noise_model_used_on_a_simplex_one(tiny_mr_model, lesioned):
    import copy

    from medidiff.tasks.anomaly import AnomalyOptionError

    scan, _ = lesioned
    assert tiny_mr_model.config.training.get("noise", "white") == "white"  # recorded (or, in older folders, not)
    with pytest.raises(AnomalyOptionError, match="simplex needs a model trained with simplex noise") as err:
        detect_anomalies(tiny_mr_model, scan, method="simplex", threshold=1.0, device="cpu")
    assert len(str(err.value).splitlines()) == 1
    # a model that records simplex training runs it (the weights are the same: this checks the path)
    simplex_model = copy.copy(tiny_mr_model)
    simplex_model.config = copy.deepcopy(tiny_mr_model.config)
    simplex_model.config.training["noise"] = "simplex"
    res = detect_anomalies(simplex_model, scan, method="simplex", threshold=1.0, device="cpu", timesteps=(300,))
    assert res.options["method"] == "simplex" and np.isfinite(res.map.array).all() and res.map.array.max() > 0


def test_direction_keeps_one_sign(tiny_mr_model, mr_heldout_slices):
    les = plant_lesion(mr_heldout_slices[2], seed=1, radius=7, contrast=-0.7)
    scan = _scan(les.image)
    dark = detect_anomalies(tiny_mr_model, scan, direction="dark", threshold=1e9, device="cpu", timesteps=(300,))
    bright = detect_anomalies(tiny_mr_model, scan, direction="bright", threshold=1e9, device="cpu", timesteps=(300,))
    assert dark.map.array[les.mask].mean() > 3 * bright.map.array[les.mask].mean()


def test_healthy_slices_score_lower_than_lesioned(tiny_mr_model, mr_heldout_slices):
    for k, img in enumerate(mr_heldout_slices[1:4]):
        les = plant_lesion(img, seed=10 + k, kind="blob", radius=8, contrast=0.8)
        healthy = detect_anomalies(tiny_mr_model, _scan(img), threshold=1e9, device="cpu")
        sick = detect_anomalies(tiny_mr_model, _scan(les.image), threshold=1e9, device="cpu")
        assert sick.score > healthy.score


def test_repeated_times_are_fresh_draws_that_steady_the_map(tiny_mr_model, lesioned):
    from medidiff.tasks.anomaly import resolve_options

    # a 32 x 32 window: the small-context default (a 64 x 64 one gets 150, 300: options.default_t_fractions)
    assert resolve_options(tiny_mr_model, use_calibrated=False).timesteps == (300.0,) * 3 + (450.0,) * 3
    scan, _ = lesioned

    def spread(ts) -> float:
        # how much the map moves with the noise seed: averaging independent draws must shrink it
        a, b = (detect_anomalies(tiny_mr_model, scan, threshold=1e9, seed=s, device="cpu", timesteps=ts) for s in (1, 2))
        fg = a.foreground.array > 0
        return float(np.abs(a.map.array - b.map.array)[fg].mean())

    one, three = spread((300,)), spread((300, 300, 300))
    assert three < 0.8 * one


def test_volume_slicewise_seeded_and_batch_invariant(tiny_mr_model, mr_heldout_slices):
    vol = Scan(np.stack(mr_heldout_slices[:3]), (2.2, 2.0, 2.0), _affine(), "MR")
    a = detect_anomalies(tiny_mr_model, vol, threshold=1e9, batch_size=3, seed=4, device="cpu", timesteps=(200,))
    b = detect_anomalies(tiny_mr_model, vol, threshold=1e9, batch_size=1, seed=4, device="cpu", timesteps=(200,))
    c = detect_anomalies(tiny_mr_model, vol, threshold=1e9, batch_size=3, seed=5, device="cpu", timesteps=(200,))
    assert a.map.shape == vol.shape and a.map.spacing == vol.spacing
    np.testing.assert_array_equal(a.map.affine, vol.affine)
    np.testing.assert_allclose(a.map.array, b.map.array, atol=1e-3)
    assert not np.allclose(a.map.array, c.map.array, atol=1e-3)


def test_cancel_stops_within_one_step(tiny_mr_model, mr_heldout_slices):
    vol = Scan(np.stack(mr_heldout_slices[:3]), (2.2, 2.0, 2.0), _affine(), "MR")
    calls = [0]
    hook = tiny_mr_model.network.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    try:
        gen = detect_anomalies_steps(tiny_mr_model, vol, threshold=1e9, batch_size=1, device="cpu")
        start = next(gen)  # step 0 comes before any network call (issue 16)
        assert start.step == 0 and calls[0] == 0
        first = next(gen)
        at_first = calls[0]
        gen.close()
        # 3 slices x 6 default draws (2 times x 3) x 3 sliding-window calls (20 windows of a 96x128 slice, 8 a call)
        assert first.step == 1 and first.total == 54
        assert calls[0] == at_first == 1  # stopped within one window batch
        with pytest.raises(StopIteration):
            next(gen)
    finally:
        hook.remove()


@pytest.mark.parametrize("options, calls", [({"recon": "ddim", "ddim_steps": 2}, 2 * 2 * 3),
                                            ({"method": "patched", "patch_size": (48, 48)}, 2 * 8)])
def test_every_network_call_is_one_step(tiny_mr_model, mr_heldout_slices, options, calls):
    # 96x128 slices, 32x32 windows: a slice is 3 calls of 8 windows (x 2 DDIM steps x 2 times); a 48x48
    # patch's context is 4 windows, 15 patches in chunks of 8 and 7 make 4 + 4 calls per time
    counted = []
    hook = tiny_mr_model.network.register_forward_pre_hook(lambda *_: counted.append(1))
    events = []
    try:
        run_to_end(detect_anomalies_steps(tiny_mr_model, _scan(mr_heldout_slices[0]), threshold=1e9, device="cpu",
                                          timesteps=(100, 200), **options), callback=events.append)
    finally:
        hook.remove()
    assert len(counted) == calls
    assert [(e.step, e.total) for e in events] == [(k, calls) for k in range(calls + 1)]
    assert events[-1].preview is not None  # the last call brings the slice's map


# -- calibration -------------------------------------------------------------------------------------------
def test_calibration_percentile_saved_and_used(tiny_mr_model, mr_heldout_slices, tmp_path):
    from medidiff.core.sampling import sample_seed

    folder = tmp_path / "model"
    shutil.copytree(tiny_mr_model.path, folder)
    card_before = (folder / "MODEL_CARD.md").read_text()
    model = DiffusionModel.load(folder)
    healthy = [_scan(s) for s in mr_heldout_slices[3:5]]
    with pytest.raises(ModelError, match="medidiff anomaly calibrate"):
        detect_anomalies(model, healthy[0], device="cpu")

    thr = calibrate_threshold(model, healthy, percentile=97.0, seed=2, device="cpu")
    # the threshold is the 97th percentile of the healthy maps' tissue voxels
    maps = [detect_anomalies(model, s, threshold=1e9, seed=sample_seed(2, k), device="cpu") for k, s in enumerate(healthy)]
    values = np.concatenate([m.map.array[m.foreground.array > 0] for m in maps])
    assert thr == pytest.approx(float(np.percentile(values, 97.0)), rel=1e-5)
    # a different seed makes other maps of the same slices: about 3% of their voxels exceed it too
    again_maps = [detect_anomalies(model, s, seed=sample_seed(9, k), device="cpu") for k, s in enumerate(healthy)]
    fresh = np.concatenate([m.map.array[m.foreground.array > 0] for m in again_maps])
    assert 0.01 <= float((fresh > thr).mean()) <= 0.06

    # stored in the folder, which still loads (hash checked) and keeps its card
    saved = json.loads((folder / "config.json").read_text())["anomaly"]
    assert saved["threshold"] == pytest.approx(thr) and saved["percentile"] == 97.0
    assert saved["method"] == "ddpm" and saved["n_voxels"] == values.size
    again = DiffusionModel.load(folder)
    card = (folder / "MODEL_CARD.md").read_text()
    assert card.startswith(card_before.rstrip("\n")) and "## Anomaly calibration" in card

    res = detect_anomalies(again, healthy[0], device="cpu")  # threshold="auto"
    assert res.threshold == pytest.approx(thr)
    with pytest.raises(ModelError, match="other options"):
        detect_anomalies(again, healthy[0], method="patched", device="cpu")


def test_3d_model_scores_the_whole_volume(mr_volume):
    from medidiff.errors import InvalidScanError
    from medidiff.core.intensity import Normaliser

    # an untrained 3D model: this checks the 3D path (shapes, geometry, one call per time), not quality
    model = DiffusionModel.create(3, (16, 16, 16), preset="tiny", normaliser=Normaliser(0.0, 800.0), seed=0)
    vol = Scan(mr_volume.array[4:12, 30:54, 40:64], mr_volume.spacing, mr_volume.affine, "MR")
    events = []
    res = run_to_end(detect_anomalies_steps(model, vol, threshold=1e9, device="cpu", timesteps=(100, 200)),
                     callback=events.append)
    assert max(e.step for e in events) == 2 == events[-1].total  # one whole-volume call per time
    assert res.map.shape == vol.shape and res.map.spacing == vol.spacing
    np.testing.assert_array_equal(res.map.affine, vol.affine)
    assert np.isfinite(res.map.array).all()
    with pytest.raises(InvalidScanError, match="3D"):
        detect_anomalies(model, _scan(mr_volume.array[10, :32, :32]), threshold=1.0, device="cpu")


def test_builtin_mr2d_is_calibrated_with_the_current_defaults():
    from medidiff.model_store.registry import resolve_model
    from medidiff.tasks.anomaly import resolve_options

    from medidiff.tasks.anomaly.options import calibration_defaults

    mr2d = resolve_model("mr2d")
    # plus the left-right mirror comparison chosen for it on the benchmark's validation split (axial brain slices)
    assert resolve_options(mr2d) == resolve_options(mr2d, use_calibrated=False, mirror=0.75, **calibration_defaults(mr2d))
    # the defaults of a 64 x 64 window (options.WIDE_WINDOW): lower noise levels and sigma 3
    assert resolve_options(mr2d).timesteps == (150.0,) * 3 + (300.0,) * 3 and resolve_options(mr2d).smooth_sigma == 3.0
    assert resolve_options(mr2d).score == "zscore" and mr2d.config.anomaly["score_profile"]
    # FDR masks work out of the box, with both methods
    assert mr2d.config.anomaly["healthy_scores"] and mr2d.config.anomaly["healthy_scores_scan_adaptive"]


# -- lesions inside the normal intensity range ---------------------------------------------------------------
def test_iso_intense_lesion_is_inside_the_normal_range(mr_heldout_slices):
    from medidiff.core.lesions import iso_intense_lesion, tissue_classes

    img = mr_heldout_slices[2]
    les = iso_intense_lesion(img, seed=1, radius=7)
    dark, bright = tissue_classes(img)
    assert les.mask.sum() > 50 and not (les.mask & ~bright).any()  # bright tissue moved ...
    inside = les.image[les.mask]
    step = les.params["from_level"] - les.params["to_level"]
    assert step > 0 and abs(float(np.median(inside)) - les.params["to_level"]) < 0.25 * step  # ... to the dark tissue's level
    lo, hi = np.percentile(img[dark | bright], [1, 99])
    assert np.mean((inside >= lo) & (inside <= hi)) > 0.95  # inside the healthy intensity range
    np.testing.assert_array_equal(les.image[~les.mask & ~bright], img[~les.mask & ~bright])
    again = iso_intense_lesion(img, seed=1, radius=7)
    assert np.array_equal(again.image, les.image)


def test_iso_intense_lesions_score_higher_than_healthy_tissue_of_the_same_intensity(tiny_mr_model, mr_heldout_slices):
    """Pooled over 12 lesions (6 held-out slices x 2 seeds): the anatomy model, not the intensity, finds them.

    Measured with the tiny test model: lesion / intensity-matched healthy score 1.14 on average
    (higher in 11 of the 12 lesions); the intensity baseline |x - tissue mean| gives 1.02 (the
    residue of matching in 8 intensity bins).
    """
    from scipy import ndimage as ndi

    from medidiff.core.lesions import iso_intense_lesion

    diff, base = np.zeros(2), np.zeros(2)
    for k, img in enumerate(mr_heldout_slices):
        for seed in (0, 1):
            les = iso_intense_lesion(img, seed=seed, radius=7)
            res = detect_anomalies(tiny_mr_model, _scan(les.image), threshold=1e9, device="cpu")
            fg = res.foreground.array > 0
            healthy = fg & ~ndi.binary_dilation(les.mask, iterations=3)
            diff += matched_means(res.map.array, les.image, les.mask, healthy)
            base += matched_means(np.abs(les.image - les.image[fg].mean()), les.image, les.mask, healthy)
    assert base[0] / base[1] < 1.05  # the lesions really are iso-intense: intensity alone hardly sees them
    assert diff[0] / diff[1] > max(1.08, base[0] / base[1] + 0.05)


# -- masks with a stated false-discovery rate ----------------------------------------------------------------
def test_conformal_pvalues_and_benjamini_hochberg_by_hand():
    from medidiff.tasks.anomaly.fdr import benjamini_hochberg, bh_mask, conformal_pvalues, decode_scores, encode_scores

    healthy = np.array([1.0, 2.0, 3.0, 4.0])
    # (1 + #{h >= s}) / (m + 1)
    np.testing.assert_allclose(conformal_pvalues([0.5, 2.0, 3.5, 9.0], healthy), [5 / 5, 4 / 5, 2 / 5, 1 / 5])
    # BH at q = 0.1 over 5 p-values: the largest k with p_(k) <= 0.1 k / 5 is k = 2
    np.testing.assert_array_equal(benjamini_hochberg([0.01, 0.5, 0.03, 0.9, 0.2], 0.1), [True, False, True, False, False])
    amap = np.array([[0.0, 9.0, 8.0], [1.0, 2.0, 0.0]])
    mask, thr = bh_mask(amap, amap > 0, np.arange(100.0) / 100 * 3, 0.2)
    np.testing.assert_array_equal(mask, (amap > thr) & (amap > 0))
    assert mask[0, 1] and mask[0, 2] and not mask[1].any()
    sample = np.sort(np.random.default_rng(0).gamma(2.0, 10.0, 500))
    np.testing.assert_allclose(decode_scores(encode_scores(sample)), sample, rtol=1e-5)


def test_fdr_is_controlled_under_exchangeability():
    """Monte Carlo: healthy voxels exchangeable with the calibration, lesion voxels shifted; FDP averages <= q."""
    from medidiff.tasks.anomaly.fdr import bh_mask, healthy_sample

    rng = np.random.default_rng(0)
    q, fdps, found = 0.1, [], []
    for _ in range(200):
        table = healthy_sample(rng.gamma(2.0, 1.0, 20000), 4096, seed=int(rng.integers(1 << 30)))
        truth = np.zeros(3000, bool)
        truth[:90] = True
        scores = rng.gamma(2.0, 1.0, 3000) + truth * rng.uniform(3, 12, 3000)
        mask, _ = bh_mask(scores, np.ones(3000, bool), table, q)
        fdps.append((mask & ~truth).sum() / max(mask.sum(), 1))
        found.append((mask & truth).sum() / truth.sum())
    assert np.mean(fdps) <= q  # the guarantee: E[FDP] <= q N0 / N = 0.097 (measured 0.091)
    assert np.mean(fdps) > 0.02 and np.mean(found) > 0.3  # not trivially empty


@pytest.fixture(scope="module")
def calibrated(tiny_mr_model, mr_heldout_slices, tmp_path_factory):
    """A copy of the tiny model calibrated on held-out healthy slices 3 and 4 (default options)."""
    folder = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(tiny_mr_model.path, folder)
    model = DiffusionModel.load(folder)
    calibrate_threshold(model, [_scan(mr_heldout_slices[k]) for k in (3, 4)], 99.0, device="cpu")
    return DiffusionModel.load(folder)


def test_fdr_mask_on_real_slices(calibrated, mr_heldout_slices):
    """Calibrated on held-out healthy slices 3, 4: the FDR mask flags (almost) nothing on other healthy
    slices, while a per-voxel test at the same level flags about q of them; a planted lesion is flagged."""
    from medidiff.tasks.anomaly.fdr import conformal_pvalues, decode_scores

    model = calibrated
    table = decode_scores(model.config.anomaly["healthy_scores"])
    q = 0.1
    flagged = per_voxel = total = 0
    for k in (0, 1, 5):
        res = detect_anomalies(model, _scan(mr_heldout_slices[k]), fdr=q, device="cpu")
        fg = res.foreground.array > 0
        flagged += int(res.mask.array[fg].sum())
        per_voxel += int((conformal_pvalues(res.map.array[fg], table) <= q).sum())
        total += int(fg.sum())
    assert flagged <= 0.01 * total  # all voxels healthy: any flagged voxel is false, BH keeps them rare
    assert 0.3 * q * total <= per_voxel <= 2 * q * total  # the p-values are calibrated on unseen healthy slices

    # a clear lesion: this tests the FDR machinery, not the tiny model's sensitivity (at contrast
    # 0.8 a model trained with the per-scan rule finds it with p >= 8e-4, above what BH admits here)
    planted = plant_lesion(mr_heldout_slices[2], seed=1, kind="ellipse", radius=7, contrast=1.2)
    lesion = planted.mask
    res = detect_anomalies(model, _scan(planted.image), fdr=q, device="cpu")
    mask = res.mask.array > 0
    assert (mask & lesion).sum() >= 0.3 * lesion.sum()
    assert (mask & ~lesion).sum() <= 2 * q * mask.sum()  # the share of false voxels stays near q (here: ~2%)
    np.testing.assert_array_equal(mask, (res.map.array > res.threshold) & (res.foreground.array > 0))
    assert res.fdr["q"] == q and "Benjamini-Hochberg" in res.fdr["method"]
    assert res.fdr["calibration"]["n_scans"] == 2 and res.fdr["calibration"]["healthy_scores"] == table.size
    with pytest.raises(ModelError, match="other options"):
        detect_anomalies(model, _scan(planted.image), fdr=q, timesteps=(100,), device="cpu")


def test_map_does_not_change_when_the_scan_is_rescaled(calibrated, lesioned):
    scan, mask = lesioned
    assert calibrated.normaliser.per_scan and calibrated.config.anomaly["tissue_level"] > 0  # an MR model
    a = detect_anomalies(calibrated, scan, device="cpu")  # the calibrated threshold, in the model's units
    assert _fg_auroc(a, mask) > 0.85 and a.mask.array[mask].mean() > 0.5
    for factor in (0.01, 7.5):
        b = detect_anomalies(calibrated, scan.with_array(scan.array * factor), device="cpu")
        # the default calibration is a z-score: a voxel whose mean reconstruction sits on a bin edge of the
        # healthy profile may change bin under float rounding, so a handful of voxels may differ slightly
        close = np.isclose(b.map.array, a.map.array, rtol=1e-3, atol=1e-3 * float(np.abs(a.map.array).max()))
        assert close.mean() > 0.999 and np.abs(b.map.array - a.map.array).max() < 0.05 * np.abs(a.map.array).max()
        assert (b.mask.array != a.mask.array).sum() <= 3
        assert b.score == pytest.approx(a.score, rel=1e-3)


# -- out-of-distribution warning -------------------------------------------------------------------------------
def test_mr2d_warns_on_a_microscopy_image_not_on_its_own_mr_sample():
    import warnings

    from medidiff.builtin.sample_scans import microscopy_sample, mr_sample
    from medidiff.model_store.registry import resolve_model
    from medidiff.tasks.anomaly import OutOfDistributionWarning

    mr2d = resolve_model("mr2d", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        own = detect_anomalies(mr2d, mr_sample(), device="cpu")
    assert not [w for w in caught if issubclass(w.category, OutOfDistributionWarning)]
    assert not own.out_of_distribution and own.ood["reasons"] == []
    assert 0.5 < own.ood["structure_ratio"] < 2.0 and own.ood["residual_shift"] < 1.0  # mr2d: a z-score calibration

    with pytest.warns(OutOfDistributionWarning) as record:
        cell = detect_anomalies(mr2d, microscopy_sample(), device="cpu")
    text = str(record[0].message)
    assert "cell_heldout.tif" in text and "mr2d" in text and "expect" in text and "\n" not in text
    assert cell.out_of_distribution and cell.ood["structure_ratio"] < 0.4
    assert cell.map.meta["anomaly"]["out_of_distribution"]  # rides on the map for the widget and sidecar


def test_ood_check_flags_a_residual_many_times_the_healthy_level():
    from medidiff.tasks.anomaly import ood

    rng = np.random.default_rng(0)
    healthy = np.sort(rng.gamma(2.0, 1.0, 4000))
    fg = np.ones((16, 16), bool)
    stack = rng.normal(0, 1, (1, 16, 16))
    profile = ood.profile_scans([(stack, fg[None])])
    near = ood.check(rng.gamma(2.0, 1.0, (16, 16)), fg, stack, fg[None], healthy, profile)
    assert not near["out_of_distribution"] and near["intensity_distance"] < 1e-5
    far = ood.check(10 * rng.gamma(2.0, 1.0, (16, 16)), fg, stack, fg[None], healthy, profile)
    assert far["out_of_distribution"] and "residual level" in far["reasons"][0] and far["residual_ratio"] > 5
    shifted = ood.check(rng.gamma(2.0, 1.0, (16, 16)), fg, stack + 1.0, fg[None], healthy, profile)
    assert shifted["out_of_distribution"] and "histogram" in shifted["reasons"][0]


def test_calibration_stores_the_ood_profile(calibrated, mr_heldout_slices):
    prof = calibrated.config.anomaly["profile"]
    assert len(prof["intensity_quantiles"]) == 19 and prof["structure_level"] > 0 and prof["intensity_iqr"] > 0
    res = detect_anomalies(calibrated, _scan(mr_heldout_slices[1]), device="cpu")
    assert set(res.ood) >= {"residual_shift", "structure_ratio", "intensity_distance"}  # a z-score calibration
    assert not res.out_of_distribution, res.ood  # a healthy held-out slice of the same volume
