"""The denoise self-check (SURE without clean data) with the real tiny MR model.

Where the model clearly helps (held-out MR slices it never saw) the estimate tracks the gain
measured against the clean slices; where it cannot (a photograph at low noise, or a noise level
set far too high) the task warns in one line naming the file.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import skimage.data

from medidiff.core import noise as noise_lib
from medidiff.core.progress import Progress, run_to_end
from medidiff.io import Scan
from medidiff.io.scan import affine_from_spacing
from medidiff.tasks.denoise import denoise, denoise_steps
from medidiff.tasks.denoise_selfcheck import WARN_BELOW_DB

TRACK_DB = 0.5  # the estimate's error where the model helps (measured on the foreground: 0.1-0.2 dB at 2-5 % noise)


def _scan(array: np.ndarray, name: str) -> Scan:
    spacing = (2.2, 2.0, 2.0)[-array.ndim:]
    return Scan(array.astype(np.float32), spacing, affine_from_spacing(spacing), "MR", {"source_path": f"/data/{name}"})


def _gain(clean: np.ndarray, noisy: np.ndarray, out: np.ndarray, where: np.ndarray | None = None) -> float:
    where = np.ones(clean.shape, bool) if where is None else where
    return float(10 * np.log10(np.mean((noisy - clean)[where] ** 2) / np.mean((out - clean)[where] ** 2)))


def _foreground(out: np.ndarray) -> np.ndarray:
    """The check's default region for Gaussian noise, rebuilt from its definition (robust 10 % of the range)."""
    low, high = np.percentile(out, [0.1, 99.9])
    return out - low > 0.1 * (high - low)


def _noisy(clean: np.ndarray, level: float) -> np.ndarray:
    return noise_lib.add_noise(clean, "gaussian", level, np.random.default_rng(5)).astype(np.float32)


@pytest.fixture(scope="module")
def heldout(mr_volume) -> np.ndarray:
    return mr_volume.array[18:24]  # six held-out slices


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage.data.camera().astype(np.float32)[::4, ::4][:96, :128]  # nothing like a brain EPI


def test_estimate_tracks_the_true_gain_where_the_model_helps(tiny_mr_model, heldout):
    noisy = _noisy(heldout, 0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = denoise(tiny_mr_model, _scan(noisy, "heldout.nii.gz"), noise="gaussian", device="cpu")
    where = _foreground(result.scan.array)
    true = _gain(heldout, noisy, result.scan.array, where)
    check = result.self_check
    assert true > 3.0  # the model clearly helps here
    assert check.resolved and check.denoiser == "tweedie" and check.region == "foreground"
    assert check.voxels == where.sum() and check.total == heldout.size
    assert abs(check.gain_db - true) < TRACK_DB
    assert not [w for w in caught if "unlikely to help" in str(w.message)]
    share = f"{100 * where.sum() / heldout.size:.0f}%"
    expected = f"estimated gain: {check.gain_db:+.1f} dB (SURE, no clean data; on the foreground, {share} of the scan)"
    assert check.line() == expected


def test_warns_on_a_scan_the_model_cannot_help(tiny_mr_model, photo):
    noisy = _noisy(photo, 0.01)
    with pytest.warns(UserWarning, match=r"camera.tif: the model is unlikely to help this scan \(estimated [-+]\d"):
        result = denoise(tiny_mr_model, _scan(noisy, "camera.tif"), noise="gaussian", device="cpu")
    assert _gain(photo, noisy, result.scan.array) < 0.5  # it truly does not help
    assert result.self_check.gain_db < WARN_BELOW_DB and "try --fit" in result.self_check.warning


def test_a_noise_level_set_far_too_high_is_called_inconsistent(tiny_mr_model, heldout):
    clean = heldout[2]
    noisy = _noisy(clean, 0.05)
    sigma = 3 * 0.05 * float(clean.max() - clean.min())
    with pytest.warns(UserWarning, match="z20.nii.gz: the noise level .* is inconsistent with the result"):
        result = denoise(tiny_mr_model, _scan(noisy, "z20.nii.gz"), noise="gaussian", sigma=sigma, device="cpu")
    assert _gain(clean, noisy, result.scan.array) < 0  # over-smoothed: worse than the input
    assert not result.self_check.consistent and "unknown" in result.self_check.line()


@pytest.mark.parametrize("options, main_calls, check_calls, label", [
    ({"method": "tweedie"}, 3, 3, "tweedie"),  # a 96x128 image is 3 sliding-window calls
    ({"method": "tweedie", "ensemble": 4}, 12, 12, "tweedie x4"),
    ({"method": "ddim", "steps": 2}, 6, 6, "tweedie (indicator)"),  # two single-call tweedie passes
])
def test_cost_and_progress(tiny_mr_model, photo, options, main_calls, check_calls, label):
    noisy = _scan(_noisy(photo, 0.05), "photo.tif")
    counts = []
    for self_check in (False, True):
        calls: list[int] = []
        handle = tiny_mr_model.network.register_forward_pre_hook(lambda *_: calls.append(1))
        events: list[Progress] = []
        try:
            result = run_to_end(denoise_steps(tiny_mr_model, noisy, noise="gaussian", device="cpu",
                                              self_check=self_check, **options), callback=events.append)
        finally:
            handle.remove()
        counts.append(len(calls))
        assert events[-1].step == events[-1].total == len(calls)  # the bar ends full, counting the check
        assert (result.self_check is not None) == self_check
    assert counts == [main_calls, main_calls + check_calls]
    assert result.self_check.denoiser == label


def test_same_seed_same_estimate(tiny_mr_model, photo):
    noisy = _scan(_noisy(photo, 0.05), "photo.tif")
    a = denoise(tiny_mr_model, noisy, noise="gaussian", device="cpu", seed=3).self_check
    b = denoise(tiny_mr_model, noisy, noise="gaussian", device="cpu", seed=3).self_check
    assert a.gain_db == b.gain_db and a.mse == b.mse


def test_every_region_is_reported(tiny_mr_model, photo):
    check = denoise(tiny_mr_model, _scan(_noisy(photo, 0.05), "photo.tif"), noise="gaussian", device="cpu").self_check
    assert set(check.by_region) == set(check.mse_by_region) == {"signal", "foreground", "all"}
    assert check.mse_by_region["foreground"] == check.mse  # the default region's SURE is the headline
    assert check.by_region["all"] == check.by_region["signal"]  # Gaussian noise: every voxel is near Gaussian
