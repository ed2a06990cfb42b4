"""The Rician VST domain and its posterior-mean inversion near the Rayleigh floor."""

from __future__ import annotations

import numpy as np
import pytest

from medidiff.core.noise import rician, rician_vst
from medidiff.core.noise.rician import add_rician, rician_bias_correct, rician_mean


def _g(a: np.ndarray) -> np.ndarray:
    return rician_vst.expected(a)


def _phantom() -> np.ndarray:
    """Flat background (A = 0) around a tissue block at SNR 8 with a darker SNR-2 insert (sigma = 1)."""
    amp = np.zeros((64, 64))
    amp[16:48, 16:48] = 8.0
    amp[20:30, 20:30] = 2.0
    return amp


def test_vst_stabilises_the_noise_and_centres_the_background() -> None:
    rng = np.random.default_rng(0)
    stds = []
    for a in (0.0, 1.0, 2.0, 5.0, 20.0):
        f = rician_vst.forward(add_rician(np.full(100_000, a), 1.0, rng))
        stds.append(f.std())
        if a == 0.0:
            assert abs(f.mean()) < 0.02  # a noise-only region is zero-mean, like the prior's training noise
    assert min(stds) > 0.85 and max(stds) < 1.1  # the raw magnitude's std goes 0.655 .. 1


@pytest.mark.parametrize("amp", [0.5, 1.0, 2.0, 5.0, 20.0])
def test_vst_inverse_is_unbiased(amp: float) -> None:
    f = rician_vst.forward(add_rician(np.full(200_000, amp), 1.0, np.random.default_rng(1)))
    assert rician_vst.inverse(np.array([f.mean()]))[0] == pytest.approx(amp, abs=0.03)


def test_posterior_inverse_shrinks_background_ripple() -> None:
    amp = _phantom()
    rng = np.random.default_rng(2)
    tau = 0.2  # the denoiser's residual error in the VST domain
    denoised = _g(amp) + rng.normal(0.0, tau, amp.shape)
    est = rician_vst.residual_std(denoised)
    assert est == pytest.approx(tau, rel=0.1)
    plain, post = rician_vst.inverse(denoised), rician_vst.posterior_inverse(denoised, est)
    bg = amp == 0
    rmse = lambda x, m: float(np.sqrt(np.mean((x[m] - amp[m]) ** 2)))  # noqa: E731
    assert rmse(post, bg) < 0.3 * rmse(plain, bg)
    tissue = amp == 8.0
    assert rmse(post, tissue) == pytest.approx(rmse(plain, tissue), rel=0.02)  # tissue is left alone
    assert rmse(post, amp == 2.0) < 1.2 * rmse(plain, amp == 2.0)


def test_posterior_inverse_beats_the_mean_inversion_on_the_same_ripple() -> None:
    """The old path (invert E[m]) with the same relative ripple folds the background up much more."""
    amp = _phantom()
    rng = np.random.default_rng(3)
    ripple = rng.normal(0.0, 0.15, amp.shape)  # ripple of 0.15 sigma in either domain
    old = rician_bias_correct(rician_mean(amp, 1.0) + ripple, 1.0, method="mean")
    denoised = _g(amp) + ripple
    new = rician_vst.posterior_inverse(denoised, rician_vst.residual_std(denoised))
    bg = amp == 0
    assert np.mean(new[bg]) < 0.3 * np.mean(old[bg])


def test_high_snr_amplitudes_come_back_exactly() -> None:
    amp = np.array([10.5, 15.0, 30.0, 55.0, 80.0])
    assert np.allclose(rician_vst.inverse(_g(amp)), amp, atol=1e-9)
    assert np.allclose(rician_vst.posterior_inverse(_g(amp), 0.3), amp, atol=1e-9)


def test_domain_round_trip_in_scan_units() -> None:
    """``sigma g(A / sigma)`` (what a perfect denoiser returns) maps back to ``A`` in scan units."""
    sigma = 40.0
    amp = np.linspace(0.0, 1000.0, 64)[None, :].repeat(8, axis=0)
    for transform in ("vst", "vst-mmse"):
        dom = rician.domain(np.array([sigma]), transform=transform)
        back = dom.from_gaussian(sigma * _g(amp / sigma), 0)
        high = amp > 4 * sigma
        assert np.allclose(back[high], amp[high], rtol=1e-4)
        background = add_rician(np.zeros((1, 64, 64)), sigma, np.random.default_rng(4))
        assert abs(float(np.mean(dom.to_gaussian(background)))) < 0.05 * sigma  # noise-only: centred on 0


def test_unknown_transform_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown Rician transform"):
        rician.domain(np.array([1.0]), transform="anscombe")
