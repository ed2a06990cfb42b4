"""Denoising does not care how a scan's intensities are stored, and refuses what it cannot handle.

Real held-out MR slices (never trained on), the tiny test model; see ``medidiff.tasks.denoise``
(per-scan normalisation) and ``medidiff.tasks.denoise_checks`` (refusals and warnings).
"""

from __future__ import annotations

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
