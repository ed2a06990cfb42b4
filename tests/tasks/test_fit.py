"""``fit_and_denoise``: denoising a real noisy image with a network fitted to that image alone.

The clean image is used only to score; the blur's sigma is chosen on a *different* image (the
other half of scikit-image's cell photo) with the same noise, as a user would have to.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from scipy import ndimage as ndi

from medidiff.builtin.sample_scans import microscopy_sample
from medidiff.core import noise as noise_lib
from medidiff.core.metrics import psnr
from medidiff.errors import InvalidScanError, MedidiffError
from medidiff.io import Scan
from medidiff.tasks.fit import FitOptionError, fit_and_denoise, fit_and_denoise_steps

LEVEL = 0.1  # Poisson-Gaussian, total std 10% of the range at the brightest value
BLUR_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0)


def _noisy(array: np.ndarray, seed: int) -> np.ndarray:
    return noise_lib.add_noise(array, "poisson-gaussian", LEVEL, rng=seed).astype(np.float32)


@pytest.fixture(scope="module")
def cell() -> tuple[Scan, np.ndarray]:
    """A 128x128 crop of the held-out microscopy sample: (noisy scan, clean array for scoring)."""
    sample = microscopy_sample()
    clean = sample.array[200:328, 60:188].copy()
    return Scan(_noisy(clean, 1), sample.spacing, sample.affine, "microscopy", {"format": "tiff"}), clean


@pytest.fixture(scope="module")
def blur_sigma() -> float:
    """The blur sigma that is best on another image (the left half of skimage's cell) at the same noise."""
    other = skimage.data.cell()[200:328, 60:188].astype(np.float32)
    noisy = _noisy(other, 2)
    return max(BLUR_SIGMAS, key=lambda s: psnr(other, ndi.gaussian_filter(noisy.astype(np.float64), s)))


@pytest.fixture(scope="module")
def fitted(cell):
    scan, _ = cell
    return fit_and_denoise(None, scan, minutes=5, max_steps=250, batch_size=8, draws=4, seed=0, device="cpu")


def test_fit_from_scratch_beats_noisy_and_blur(cell, blur_sigma, fitted):
    scan, clean = cell
    span = float(clean.max() - clean.min())
    noisy_db = psnr(clean, scan.array, span)
    blur_db = psnr(clean, ndi.gaussian_filter(scan.array.astype(np.float64), blur_sigma), span)
    fit_db = psnr(clean, fitted.scan.array, span)
    assert fit_db > noisy_db + 8, (noisy_db, fit_db)
    assert fit_db > blur_db + 0.3, (blur_db, blur_sigma, fit_db)
    assert fitted.noise_model == "poisson-gaussian" and fitted.steps == 250 and not fitted.stopped_by_clock
    assert fitted.scan.shape == scan.shape and fitted.scan.array.dtype == np.float32


def test_fitted_model_is_a_model_with_the_scan_rule(fitted):
    model = fitted.model
    assert model.normaliser.kind == "foreground" and model.config.training["steps"] == 250
    assert model.config.training["fine_tuned_from"] == ""


def test_same_seed_same_result_other_seed_differs(cell):
    scan, _ = cell
    a = fit_and_denoise(None, scan, max_steps=4, batch_size=4, draws=1, seed=3, device="cpu")
    b = fit_and_denoise(None, scan, max_steps=4, batch_size=4, draws=1, seed=3, device="cpu")
    c = fit_and_denoise(None, scan, max_steps=4, batch_size=4, draws=1, seed=4, device="cpu")
    np.testing.assert_array_equal(a.scan.array, b.scan.array)
    assert not np.array_equal(a.scan.array, c.scan.array)


def test_time_budget_stops_training(cell):
    scan, _ = cell
    result = fit_and_denoise(None, scan, minutes=0.03, batch_size=4, draws=1, device="cpu")  # 1.8 s
    assert result.stopped_by_clock and 1 <= result.steps < 100_000
    assert result.seconds < 1.8 + 3.0  # the step that crosses the deadline finishes, nothing more


def test_cancel_stops_within_one_step(cell):
    scan, _ = cell
    gen = fit_and_denoise_steps(None, scan, max_steps=10_000, batch_size=4, device="cpu")
    events = [next(gen) for _ in range(3)]
    gen.close()
    assert all(e.message.startswith("fit step") for e in events)
    with pytest.raises(StopIteration):
        next(gen)


def test_fine_tuning_leaves_the_builtin_model_untouched(cell):
    from medidiff.model_store.registry import resolve_model

    scan, _ = cell
    builtin = resolve_model("micro2d", device="cpu")
    before = {k: v.clone() for k, v in builtin.network.state_dict().items()}
    result = fit_and_denoise("micro2d", scan, max_steps=3, batch_size=4, draws=1, device="cpu")
    after = resolve_model("micro2d", device="cpu").network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    tuned = result.model.network.state_dict()
    assert any(not torch.equal(before[k], tuned[k]) for k in before)
    assert result.model.config.training["fine_tuned_from"] == "micro2d"


def test_single_8x8_image_is_refused_in_one_line():
    rng = np.random.default_rng(0)
    scan = Scan((100 + 10 * rng.standard_normal((8, 8))).astype(np.float32), (1.0, 1.0), np.eye(4), "microscopy", {})
    with pytest.raises(InvalidScanError) as info:
        fit_and_denoise(None, scan, max_steps=2, device="cpu")
    text = str(info.value)
    assert "\n" not in text and "8x8" in text and "32x32" in text


@pytest.mark.parametrize("options, word", [({"minutes": 0}, "--fit-minutes"), ({"minutes": float("nan")}, "--fit-minutes"),
                                           ({"max_steps": 0}, "--fit-steps"), ({"draws": 0}, "draws"),
                                           ({"noise": "speckle"}, "speckle")])
def test_bad_options_are_one_line_errors(cell, options, word):
    scan, _ = cell
    with pytest.raises(FitOptionError) as info:
        fit_and_denoise(None, scan, device="cpu", **options)
    assert isinstance(info.value, MedidiffError) and word in str(info.value)
