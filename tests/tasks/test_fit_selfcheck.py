"""``fit_and_denoise`` runs the SURE self-check on its own result (the estimator with its seeded draws)."""

from __future__ import annotations

import numpy as np
import pytest

from medidiff.builtin.sample_scans import microscopy_sample
from medidiff.core import noise as noise_lib
from medidiff.io import Scan
from medidiff.tasks.fit import fit_and_denoise


@pytest.fixture(scope="module")
def fitted():
    """A 64x64 crop of the held-out cells with Gaussian noise (SURE's own assumption), fitted for 40 steps."""
    sample = microscopy_sample()
    clean = sample.array[200:264, 60:124].astype(np.float64)
    sigma = 0.08 * float(clean.max() - clean.min())
    noisy = noise_lib.add_noise(clean, "gaussian", 0.08, np.random.default_rng(2)).astype(np.float32)
    scan = Scan(noisy, sample.spacing, sample.affine, "microscopy", {"format": "tiff"})
    # the true sigma: SURE inherits any error of an estimated one (denoise_selfcheck's docstring)
    result = fit_and_denoise(None, scan, noise="gaussian", sigma=sigma, minutes=5.0, max_steps=40, seed=0,
                             device="cpu")
    return clean, noisy, result


def test_fit_result_carries_a_self_check_close_to_the_true_gain(fitted):
    clean, noisy, result = fitted
    check = result.self_check
    assert check is not None and check.denoiser == "fit (8 draws)" and check.region == "foreground"
    out = result.scan.array.astype(np.float64)
    low, high = np.percentile(out, [0.1, 99.9])
    mask = out - low > 0.1 * (high - low)  # the check's foreground rule
    assert check.voxels == int(mask.sum())
    true_mse = float(np.mean((out[mask] - clean[mask]) ** 2))
    assert check.noise_var == pytest.approx(result.sigma ** 2, rel=1e-6)
    # SURE of exactly the returned image: within 5 % of the noise variance of the true MSE
    assert abs(check.mse - true_mse) < 0.05 * check.noise_var, (check.mse, true_mse, check.noise_var)


def test_fit_self_check_can_be_skipped(fitted):
    _, noisy, result = fitted
    scan = result.scan.with_array(noisy)
    again = fit_and_denoise(None, scan, noise="gaussian", sigma=result.sigma, minutes=5.0, max_steps=40, seed=0,
                            device="cpu", self_check=False)
    assert again.self_check is None
    np.testing.assert_array_equal(again.scan.array, result.scan.array)  # the check does not change the result


@pytest.mark.parametrize("by_clock, given, says", [(True, False, "train longer (a larger --fit-minutes than 2)"),
                                                   (False, True, "train longer (more --fit-steps than 40)")])
def test_fit_warning_suggests_training_longer_or_the_noise_level(by_clock, given, says):
    import dataclasses

    from medidiff.tasks import denoise_selfcheck as selfcheck
    from medidiff.tasks.fit import fit_advice

    low = selfcheck.SelfCheck(0.2, 0.95, 1.0, True, 0.1, "fit (8 draws)", "foreground", 100, 100)
    wording = fit_advice(by_clock, 2.0, 40, given)
    with pytest.warns(UserWarning) as caught:
        small = selfcheck.warn_if_unhelpful(low, "cells.tif", **wording)
        bad = selfcheck.warn_if_unhelpful(dataclasses.replace(low, mse=-0.5, consistent=False), "cells.tif", **wording)
    assert len(caught) == 2 and "try --fit" not in small.warning + bad.warning
    assert small.warning.startswith("cells.tif: the fitted model is unlikely to help this scan (estimated +0.2 dB")
    assert says in small.warning and "--sigma" in small.warning
    assert bad.warning.endswith("check --sigma" if given else "give the noise level with --sigma")
    # a pretrained model's warning is unchanged
    with pytest.warns(UserWarning, match=r"the model is unlikely to help this scan .*; try --fit \(trains on"):
        selfcheck.warn_if_unhelpful(dataclasses.replace(low, denoiser="tweedie"), "cells.tif")
