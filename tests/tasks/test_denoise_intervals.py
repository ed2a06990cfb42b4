"""Calibrated denoising intervals (split conformal) on the built-ins' held-out real samples."""

from __future__ import annotations

import numpy as np
import pytest

from medidiff.core import noise as noise_lib
from medidiff.core.model import DiffusionModel
from medidiff.errors import InvalidScanError, MedidiffError
from medidiff.io import Scan, load_scan, save_scan
from medidiff.model_store.registry import BUILTIN_DIR
from medidiff.tasks.denoise import denoise
from medidiff.tasks.denoise_calibration import calibrate_intervals, measure_coverage
from medidiff.tasks.denoise_intervals import IntervalCalibration, IntervalError
from tests.cli_runner import call

SAMPLES = BUILTIN_DIR / "samples"


@pytest.fixture(scope="module")
def mr2d():
    return DiffusionModel.load(BUILTIN_DIR / "mr2d")


@pytest.fixture(scope="module")
def mr_noisy():
    scan = load_scan(SAMPLES / "mr_heldout.nii.gz")
    return scan, scan.with_array(noise_lib.add_noise(scan.array, "rician", 0.05, 0).astype(np.float32))


def _covered(clean, result) -> tuple[float, float]:
    low, high = (b.array for b in result.interval)
    inside = (clean >= low) & (clean <= high)
    return float(inside.mean()), float(np.mean(high - low))


def test_mr2d_heldout_covers_nominal_and_is_not_trivially_wide(mr2d, mr_noisy):
    clean, noisy = mr_noisy
    res = denoise(mr2d, noisy, coverage=0.9, device="cpu")
    covered, width = _covered(clean.array, res)
    assert res.coverage == 0.9 and res.interval[0].shape == clean.shape
    assert covered >= 0.85, covered
    # mean width below 4 noise stds (measured ~2.4; a constant +-range band would be ~40)
    assert width < 4 * res.sigma_median, (width, res.sigma_median)
    low, high = (b.array for b in res.interval)
    assert np.all(low <= res.scan.array + 1e-3) and np.all(res.scan.array <= high + 1e-3)


def test_coverage_follows_the_nominal_level(mr2d, mr_noisy):
    clean, noisy = mr_noisy
    c80, w80 = _covered(clean.array, denoise(mr2d, noisy, coverage=0.8, device="cpu"))
    c95, w95 = _covered(clean.array, denoise(mr2d, noisy, coverage=0.95, device="cpu"))
    assert c80 < c95 and w80 < w95
    assert c80 >= 0.75 and c95 >= 0.9


def test_micro2d_heldout_covers_nominal():
    scan = load_scan(SAMPLES / "cell_heldout.tif")
    noisy = scan.with_array(noise_lib.add_noise(scan.array, "poisson-gaussian", 0.05, 0).astype(np.float32))
    res = denoise("micro2d", noisy, coverage=0.9, device="cpu")
    covered, width = _covered(scan.array, res)
    assert res.noise_model == "poisson-gaussian"
    assert covered >= 0.85, covered
    assert width < 4 * res.sigma_median, (width, res.sigma_median)


@pytest.mark.parametrize("factor", [1e-3, 4.1])
def test_rescaled_input_rescales_the_interval(mr2d, mr_noisy, factor):
    _, noisy = mr_noisy
    base = denoise(mr2d, noisy, coverage=0.9, device="cpu")
    scaled = denoise(mr2d, noisy.with_array(noisy.array * np.float32(factor)), coverage=0.9, device="cpu")
    span = float(np.ptp(noisy.array))
    for a, b in zip(base.interval, scaled.interval):
        assert np.max(np.abs(b.array / factor - a.array)) < 1e-3 * span


def test_model_without_calibration_refuses_in_one_line(mr2d, mr_noisy):
    bare = DiffusionModel(mr2d.config.__class__.from_dict({**mr2d.config.to_dict(), "intervals": {}}), mr2d.network)
    with pytest.raises(IntervalError) as info:
        denoise(bare, mr_noisy[1], coverage=0.9, device="cpu")
    assert "no interval calibration" in str(info.value) and "\n" not in str(info.value)
    assert bare.config.intervals == {}  # refused before any work


def test_bad_coverage_method_and_noise_level_refuse(mr2d, mr_noisy):
    clean, noisy = mr_noisy
    with pytest.raises(IntervalError, match="coverage must be"):
        denoise(mr2d, noisy, coverage=0.3, device="cpu")
    with pytest.raises(IntervalError, match="no interval calibration for ddim"):
        denoise(mr2d, noisy, method="ddim", coverage=0.9, device="cpu")
    with pytest.raises(IntervalError, match="strength"):
        denoise(mr2d, noisy, strength=1.5, coverage=0.9, device="cpu")
    faint = clean.with_array(noise_lib.add_noise(clean.array, "rician", 0.0015, 0).astype(np.float32))
    with pytest.raises(InvalidScanError, match="outside the range the intervals were calibrated for") as info:
        denoise(mr2d, faint, coverage=0.9, device="cpu")
    assert "\n" not in str(info.value)


def test_calibrate_saves_into_the_model_folder_and_measures(tmp_path, mr2d):
    folder = tmp_path / "m"
    model = DiffusionModel(mr2d.config.__class__.from_dict({**mr2d.config.to_dict(), "intervals": {}}), mr2d.network)
    model.save(folder)
    model = DiffusionModel.load(folder)
    train = load_scan(SAMPLES / "mr_heldout.nii.gz")
    train = Scan(train.array[:2].copy(), train.spacing, train.affine, train.modality, meta=dict(train.meta))
    cal = calibrate_intervals(model, [train], levels=(0.05, 0.1), scale="texture", device="cpu", seed=3)
    again = DiffusionModel.load(folder)
    (stored,) = again.config.intervals["calibrations"]
    back = IntervalCalibration.from_dict(stored)
    assert back.scale == "texture" and back.noise_model == "rician" and back.levels.size == 2
    assert np.allclose(back.quantiles, cal.quantiles, rtol=1e-4)
    assert np.all(np.diff(back.quantiles, axis=1) >= 0)  # quantiles grow with the coverage
    assert "## Denoising intervals" in (folder / "MODEL_CARD.md").read_text()
    # same seed, same calibration
    cal2 = calibrate_intervals(again, [train], levels=(0.05, 0.1), scale="texture", device="cpu", seed=3, save=False)
    assert np.array_equal(cal2.quantiles, cal.quantiles)
    (row,) = measure_coverage(again, [train], [0.07], [0.9], device="cpu")
    assert 0.85 <= row["covered"] <= 1.0 and row["width"] > 0


def test_cli_interval_files(capsys, tmp_path, mr_noisy):
    clean, noisy = mr_noisy
    src = tmp_path / "noisy.nii.gz"
    save_scan(noisy, src)
    out, low, high = tmp_path / "out.nii.gz", tmp_path / "low.nii.gz", tmp_path / "high.nii.gz"
    code, _, err = call(capsys, "denoise", "mr2d", src, out, "--interval", f"{low},{high}", "--device", "cpu")
    assert code == 0, err
    lo, hi, mid = (load_scan(p).array for p in (low, high, out))
    assert np.all(lo <= mid + 1e-3) and np.all(mid <= hi + 1e-3)
    assert float(((clean.array >= lo) & (clean.array <= hi)).mean()) >= 0.85
    code, _, err = call(capsys, "denoise", "mr2d", src, tmp_path / "o2.nii.gz", "--coverage", "0.9")
    assert code == 2 and "--interval" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o2.nii.gz").exists()


def test_errors_are_medidiff_errors():
    assert issubclass(IntervalError, MedidiffError)


def test_cli_calibrate_writes_the_model_folder_and_refuses_builtins(capsys, tmp_path, mr2d):
    folder = tmp_path / "m"
    DiffusionModel(mr2d.config.__class__.from_dict({**mr2d.config.to_dict(), "intervals": {}}), mr2d.network).save(folder)
    held = load_scan(SAMPLES / "mr_heldout.nii.gz")
    scan = tmp_path / "train.nii.gz"
    save_scan(Scan(held.array[:2].copy(), held.spacing, held.affine, held.modality, meta=dict(held.meta)), scan)
    code, out, err = call(capsys, "denoise-calibrate", folder, scan, "--levels", "0.05,0.1", "--scale", "noise",
                          "--device", "cpu")
    assert code == 0, err
    assert "saved to" in out
    assert DiffusionModel.load(folder).config.intervals["calibrations"][0]["scale"] == "noise"
    code, _, err = call(capsys, "denoise-calibrate", "mr2d", scan)
    assert code == 2 and "read-only" in err and len(err.strip().splitlines()) == 1
    code, _, err = call(capsys, "denoise-calibrate", folder, scan, "--scale", "wide")
    assert code == 2 and "--scale" in err and len(err.strip().splitlines()) == 1


def test_posterior_intervals_use_the_sample_spread(mr2d, mr_noisy):
    clean, noisy = mr_noisy
    res = denoise(mr2d, noisy, method="posterior", samples=8, coverage=0.9, device="cpu", seed=0)
    covered, width = _covered(clean.array, res)
    assert covered >= 0.85, covered
    assert width < 3 * res.sigma_median, (width, res.sigma_median)  # measured ~1.2 sigma
    # the width follows the posterior spread: wider where the samples disagree
    low, high = (b.array for b in res.interval)
    unc = res.uncertainty.array
    assert np.corrcoef((high - low).ravel(), unc.ravel())[0, 1] > 0.9
