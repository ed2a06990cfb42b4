"""Monte-Carlo SURE (``medidiff.core.metrics.sure``) against denoisers whose error is known exactly.

A linear Gaussian smoothing ``D y = G y`` (periodic boundary) has divergence ``sum_i s_i^2 G_ii``
with ``G_ii`` the kernel's centre weight, and its error against the clean image is computed
directly: SURE, which never sees the clean image, must match it.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from scipy import ndimage as ndi

from medidiff.core.metrics.sure import monte_carlo_sure, perturbed, probe, sure_from_passes


def _clean() -> np.ndarray:
    return skimage.data.camera().astype(np.float64)[::2, ::2]  # a real 256 x 256 photograph


def _smooth(width: float):
    return lambda y: ndi.gaussian_filter(y, width, mode="wrap")


@pytest.mark.parametrize("width", [0.7, 1.5, 3.0])
def test_sure_matches_the_true_error_of_gaussian_smoothing(width: float) -> None:
    x = _clean()
    s = 20.0
    y = x + np.random.default_rng(1).normal(0, s, x.shape)
    est = monte_carlo_sure(_smooth(width), y, s, seed=0)
    true_mse = float(np.mean((_smooth(width)(y) - x) ** 2))
    # one noise draw and one probe on 65536 voxels: within 2 % of the error measured with the clean image
    assert est.consistent
    assert abs(est.mse - true_mse) / true_mse < 0.02
    true_gain = 10 * np.log10(np.mean((y - x) ** 2) / true_mse)
    assert abs(est.gain_db - true_gain) < 0.15


def test_the_probe_estimates_the_weighted_trace_of_a_linear_denoiser() -> None:
    x = _clean()
    s = np.sqrt(0.5 * x + 4.0)  # heteroscedastic, like photon noise
    smooth = _smooth(1.0)
    delta = np.zeros(x.shape)
    delta[0, 0] = 1.0
    centre = smooth(delta)[0, 0]  # G_ii, the same at every voxel with a periodic boundary
    b = probe(x.shape, seed=3)
    d = smooth(x)
    div = float(np.sum(s * b * (smooth(perturbed(x, s, b)) - d)) / 0.01)
    exact = float(np.sum(s ** 2) * centre)
    assert abs(div - exact) / exact < 0.03


def test_heteroscedastic_sure_matches_the_true_error() -> None:
    x = _clean()
    s = np.sqrt(0.8 * x + 25.0)  # Poisson-Gaussian-like variance, known per voxel
    y = x + np.random.default_rng(2).normal(0, 1, x.shape) * s
    smooth = _smooth(1.2)
    est = monte_carlo_sure(smooth, y, s, seed=0)
    true_mse = float(np.mean((smooth(y) - x) ** 2))
    assert abs(est.mse - true_mse) / true_mse < 0.02
    # and the noisy image's own error is the mean variance, so the gain is the true PSNR gain
    assert abs(est.noise_var - np.mean((y - x) ** 2)) / est.noise_var < 0.02
    # a region fixed in advance (the brighter half): SURE estimates the error there too
    region = x > np.median(x)
    part = monte_carlo_sure(smooth, y, s, seed=0, region=region)
    assert abs(part.mse - np.mean(((smooth(y) - x) ** 2)[region])) / part.mse < 0.03


def test_identity_gains_nothing_and_oversmoothing_loses() -> None:
    x = _clean()
    y = x + np.random.default_rng(4).normal(0, 5.0, x.shape)
    assert abs(monte_carlo_sure(lambda a: a, y, 5.0).gain_db) < 0.1
    blur = monte_carlo_sure(_smooth(6.0), y, 5.0)  # low noise, heavy blur: worse than the input
    assert blur.gain_db < -3.0


def test_an_overestimated_noise_level_is_flagged_inconsistent() -> None:
    x = np.full((128, 128), 100.0)  # flat: any smoothing is near perfect, so SURE with 4x sigma goes negative
    y = x + np.random.default_rng(5).normal(0, 2.0, x.shape)
    est = monte_carlo_sure(_smooth(4.0), y, 8.0)
    assert not est.consistent and est.mse <= 0


def test_same_seed_same_estimate_and_bad_arguments_raise() -> None:
    x = _clean()[:64, :64]
    a = monte_carlo_sure(_smooth(1.0), x, 3.0, seed=7)
    b = monte_carlo_sure(_smooth(1.0), x, 3.0, seed=7)
    assert a == b
    with pytest.raises(ValueError, match="eps"):
        monte_carlo_sure(_smooth(1.0), x, 3.0, eps=0.0)
    with pytest.raises(ValueError, match="region"):
        sure_from_passes(x, x, x, 1.0, x * 0, region=np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="no voxel"):
        sure_from_passes(x, x, x, 1.0, x * 0, region=np.zeros(x.shape, bool))
