"""Denoising does not care how a scan's intensities are stored, and refuses what it cannot handle.

Real held-out MR slices (never trained on), the tiny test model; see ``medidiff.tasks.denoise``
(per-scan normalisation) and ``medidiff.tasks.denoise_checks`` (refusals and warnings).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medidiff.core import noise as noise_lib
from medidiff.core.intensity import Normaliser
from medidiff.errors import InvalidScanError, MedidiffError
from medidiff.io import Scan
from medidiff.io.scan import affine_from_spacing
from medidiff.tasks.denoise import DenoiseOptionError, denoise


def _scan(array: np.ndarray, modality: str = "MR", spacing: tuple[float, ...] | None = None) -> Scan:
    spacing = spacing or (2.2, 2.0, 2.0)[-array.ndim:]
    return Scan(np.asarray(array, dtype=np.float32), spacing, affine_from_spacing(spacing), modality,
                {"source_path": "/data/noisy.nii.gz"})


@pytest.fixture(scope="module")
def clean(mr_heldout_slices) -> np.ndarray:
    return mr_heldout_slices[2].astype(np.float64)


@pytest.fixture(scope="module")
def span(clean) -> float:
    return float(clean.max() - clean.min())


@pytest.mark.parametrize("noise", ["gaussian", "rician", "poisson-gaussian"])
def test_result_scales_with_the_scan(tiny_mr_model, clean, span, noise):
    """x 1e-3, x 1 and x 4.1 give the same denoised image (in each scan's own units)."""
    noisy = noise_lib.add_noise(clean, noise, 0.08, np.random.default_rng(11))
    ref = denoise(tiny_mr_model, _scan(noisy), noise=noise, device="cpu").scan.array.astype(np.float64)
    assert np.abs(ref - clean).mean() < np.abs(noisy - clean).mean() / 2  # it does denoise
    for factor in (1e-3, 4.1):
        out = denoise(tiny_mr_model, _scan(noisy * factor), noise=noise, device="cpu").scan.array / factor
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-4 * span)


def test_gaussian_result_follows_an_offset(tiny_mr_model, clean, span):
    noisy = noise_lib.add_gaussian(clean, 0.08 * span, np.random.default_rng(12))
    ref = denoise(tiny_mr_model, _scan(noisy), noise="gaussian", device="cpu").scan.array.astype(np.float64)
    for offset, factor in ((-300.0, 1.0), (1000.0, 1e-3)):
        out = denoise(tiny_mr_model, _scan(noisy * factor + offset), noise="gaussian", device="cpu")
        np.testing.assert_allclose((out.scan.array - offset) / factor, ref, rtol=0, atol=5e-4 * span)


def test_per_scan_rule_is_stored_and_old_percentile_models_refit(clean):
    rule = Normaliser.per_scan_rule([clean])
    assert rule.kind == "foreground" and rule.per_scan
    assert Normaliser.from_dict(rule.to_dict()) == rule  # round-trips through config.json
    old = Normaliser(0.0, 727.0, kind="percentile", detail="0.5-99.5")  # the built-in mr2d's state
    fitted = old.for_scan(clean * 4.1)
    assert fitted.low == pytest.approx(4.1 * old.for_scan(clean).low, abs=1e-6)
    assert fitted.high == pytest.approx(4.1 * old.for_scan(clean).high, rel=1e-6)
    ct = Normaliser.ct_window("wide")
    assert not ct.per_scan and ct.for_scan(clean) is ct  # CT keeps its HU window


@pytest.mark.parametrize("noise", ["gaussian", "poisson-gaussian"])
def test_noisy_scan_gets_the_map_of_its_clean_version(mr_heldout_slices, noise):
    """With the noise std, both ends land within 1.5 % of the range of the clean scan's fit; without, low is far off."""
    clean = np.stack(mr_heldout_slices).astype(np.float64)  # real slices, most of their voxels exact-zero background
    rule = Normaliser(0.0, 1.0, kind="foreground", detail="0.5-99.5")
    ref = rule.for_scan(clean)
    span = ref.high - ref.low
    noisy = noise_lib.add_noise(clean, noise, 0.1, np.random.default_rng(3)).astype(np.float32)
    dom, _ = noise_lib.noise_domain(noisy, noisy, noise, modality="MR")
    plain = rule.for_scan(noisy, signal_of_mean=dom.signal_of_mean)
    aware = rule.for_scan(noisy, signal_of_mean=dom.signal_of_mean, noise_std=dom.std_at)
    assert abs(aware.low - ref.low) < 0.015 * span and abs(aware.high - ref.high) < 0.015 * span
    if noise == "gaussian":  # the old rule's error, so the check above can tell the two apart
        assert plain.low - ref.low < -0.08 * span


def test_noise_aware_tails_are_exact_where_they_can_be():
    """No noise: the plain percentiles; a flat background: its level; scaling the scan and its noise scales the fit."""
    rng = np.random.default_rng(5)
    clean = np.zeros((4, 64, 64))
    clean[:, 16:48, 16:48] = 100.0 + 20.0 * rng.standard_normal((4, 32, 32))  # one textured class on a flat background
    rule = Normaliser(0.0, 1.0, kind="foreground", detail="0.5-99.5")
    ref = rule.for_scan(clean)
    assert rule.for_scan(clean, noise_std=0.0) == ref
    # a background masked to exact zeros after the noise (skull-stripped MR) is a point mass: it stays
    assert abs(rule.for_scan(clean, noise_std=15.0).low - ref.low) < 1.0
    noisy = clean + 15.0 * rng.standard_normal(clean.shape)
    aware = rule.for_scan(noisy, noise_std=15.0)
    assert abs(aware.low - ref.low) < 2.0 and abs(rule.for_scan(noisy).low - ref.low) > 8.0  # smoothed noise std 4.2
    scaled = rule.for_scan(noisy * 4.1 - 7.0, noise_std=lambda level: 15.0 * 4.1)
    assert scaled.low == pytest.approx(4.1 * aware.low - 7.0, abs=1e-6 * 4.1 * 100)
    assert scaled.high == pytest.approx(4.1 * aware.high - 7.0, rel=1e-6)


def test_result_arrays_have_one_type(tiny_mr_model, clean, span, mr_volume):
    noisy = noise_lib.add_gaussian(clean, 0.08 * span, np.random.default_rng(13))
    one = denoise(tiny_mr_model, _scan(noisy), noise="gaussian", device="cpu")
    assert isinstance(one.sigma, np.ndarray) and one.sigma.shape == one.timestep.shape == (1,)
    assert one.sigma_median == float(one.sigma[0]) and one.sigma_normalised.shape == (1,)
    vol = mr_volume.array[18:21]
    res = denoise(tiny_mr_model, _scan(vol + 0.0), noise="gaussian", per_slice=True, device="cpu")
    assert res.sigma.shape == res.timestep.shape == (3,)


@pytest.mark.parametrize("array, match", [
    (np.full((64, 64), 5.0), "constant"),
    (np.random.default_rng(0).normal(100.0, 10.0, (96, 128)), "no foreground above the noise"),
    (np.random.default_rng(0).random((12, 12)), "needs at least 16x16"),
])
def test_unusable_scans_get_one_clear_line(tiny_mr_model, array, match):
    with pytest.raises(InvalidScanError, match=match) as info:
        denoise(tiny_mr_model, _scan(array), noise="gaussian", device="cpu")
    text = str(info.value)
    assert text.startswith("/data/noisy.nii.gz: ") and "\n" not in text


def test_noise_beyond_the_trained_range_is_refused(tiny_mr_model, clean, span):
    noisy = noise_lib.add_gaussian(clean, 0.05 * span, np.random.default_rng(14))
    with pytest.raises(InvalidScanError, match="beyond the noisiest level"):
        denoise(tiny_mr_model, _scan(noisy), noise="gaussian", strength=1e4, device="cpu")


def test_ct_model_refuses_a_scan_not_in_hu(clean):
    from medidiff.core.model import DiffusionModel

    ct = DiffusionModel.create(2, (32, 32), preset="tiny", normaliser=Normaliser.ct_window("wide"), seed=0)
    with pytest.raises(InvalidScanError, match="fixed normaliser .*HU"):
        denoise(ct, _scan(clean / clean.max(), "CT"), noise="gaussian", sigma=0.01, device="cpu")
    out = denoise(ct, _scan(clean, "CT"), noise="gaussian", sigma=10.0, device="cpu")  # HU-like values pass
    assert out.scan.shape == clean.shape


def test_spacing_far_from_training_warns_in_one_line(tiny_mr_model, clean, span):
    assert tiny_mr_model.config.spacing == pytest.approx((2.0, 2.0))
    noisy = noise_lib.add_gaussian(clean, 0.08 * span, np.random.default_rng(15))
    with pytest.warns(UserWarning, match=r"voxels are 6x6 mm but the model was trained at 2x2 mm \(3.0x coarser\)") as rec:
        denoise(tiny_mr_model, _scan(noisy, spacing=(6.0, 6.0)), noise="gaussian", device="cpu")
    assert all("\n" not in str(w.message) for w in rec)


def test_a_model_trained_on_coarser_voxels_warns_only_beyond_them(tiny_mr_model, clean, span):
    """``train --spacing-augment 2`` at 2 mm: 4 mm (in its range) is quiet, 9 mm warns against 4 mm."""
    import copy
    import warnings

    model = copy.copy(tiny_mr_model)
    model.config = dataclasses.replace(tiny_mr_model.config, training={**tiny_mr_model.config.training, "spacing_augment": 2.0})
    noisy = noise_lib.add_gaussian(clean, 0.08 * span, np.random.default_rng(15))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # any warning fails the call
        denoise(model, _scan(noisy, spacing=(4.0, 4.0)), noise="gaussian", device="cpu", self_check=False)
    with pytest.warns(UserWarning, match=r"voxels are 9x9 mm but the model was trained at up to 4x4 mm \(2.2x coarser\)"):
        denoise(model, _scan(noisy, spacing=(9.0, 9.0)), noise="gaussian", device="cpu", self_check=False)
    with pytest.warns(UserWarning, match=r"voxels are 1x1 mm but the model was trained at 2x2 mm \(2.0x finer\)"):
        denoise(model, _scan(noisy, spacing=(1.0, 1.0)), noise="gaussian", device="cpu", self_check=False)


@pytest.mark.parametrize("size", [4, 8])
def test_self_ensemble_is_exactly_equivariant(tiny_mr_model, clean, span, size):
    crop = noise_lib.add_gaussian(clean[32:64, 48:80], 0.08 * span, np.random.default_rng(16))
    opts = dict(noise="gaussian", sigma=0.08 * span, ensemble=size, device="cpu")
    out = denoise(tiny_mr_model, _scan(crop), **opts).scan.array
    ops = [np.flipud, np.fliplr] + ([np.rot90] if size == 8 else [])
    for op in ops:
        moved = denoise(tiny_mr_model, _scan(op(crop).copy()), **opts).scan.array
        np.testing.assert_allclose(moved, op(out), rtol=0, atol=1e-4 * span)
    plain = denoise(tiny_mr_model, _scan(crop), noise="gaussian", sigma=0.08 * span, device="cpu").scan.array
    assert not np.allclose(plain, out, atol=1e-3 * span)  # the ensemble really averaged something


def test_ensemble_options_are_checked(tiny_mr_model, clean):
    with pytest.raises(DenoiseOptionError, match="square pixels"):
        denoise(tiny_mr_model, _scan(clean, spacing=(2.0, 3.0)), ensemble=8, device="cpu")
    with pytest.raises(DenoiseOptionError, match="works with method 'tweedie' only"):
        denoise(tiny_mr_model, _scan(clean), ensemble=4, method="ddim", device="cpu")
    with pytest.raises(MedidiffError, match="ensemble must be one of 1, 4, 8"):
        denoise(tiny_mr_model, _scan(clean), ensemble=3, device="cpu")
