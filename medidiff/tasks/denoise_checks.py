"""What the denoise task refuses or warns about before any network call (and its option checks).

A diffusion prior only removes noise it was trained on, from images that look like its training
data in *network units*. Outside that, the output is not a worse denoising but an artefact (a
grid of window-shaped blobs, a sample instead of the scan), so these inputs get one clear line:

* too small: an item side under half the model's training window (the network would see less
  than half the context it learned), or under 8 pixels (the noise estimators need 8x8);
* constant: nothing to normalise or denoise (raised by the per-scan normaliser);
* no foreground: the scan's intensity spread after in-plane smoothing (0.5th-99.5th
  percentiles; smoothing leaves ~0.28 of the noise std) is under ``2 x`` the noise std, i.e.
  the scan is indistinguishable from pure noise (pure Gaussian noise measures ~1.45);
* outside the model's units: a fixed normaliser (a CT window, given bounds) maps the scan to an
  almost constant image (spread under 0.02 network units) or far outside [-1, 1] (median beyond
  +-10) -- e.g. a CT model given a scan stored as 0..1;
* beyond the trained noise: the noise level in network units reaches the model's noisiest time;
* not a Gaussian denoiser: a model trained with structured noise (``train --noise simplex|coarse``)
  learnt to remove that noise, not white noise (see :mod:`medidiff.tasks.train_noise`).

A voxel size far (more than 1.5x) from the model's training spacing (for a model trained with
``--spacing-augment F``: from the range 1..F times it) gets a one-line warning
(``UserWarning``; the CLI prints it as ``warning: ...``) saying what to expect; the scan is not
resampled, because resampling measured no better overall. Built-in ``mr2d`` (the 64 x 64 model,
trained at 2 mm) on its held-out sample resampled to other voxel sizes, Gaussian noise 5%, PSNR in
``x > 0.1 max`` (noisy ~26.0 dB; ``benchmarks/voxel_size.py``): at 2 mm +4.3 dB; at 4 mm +2.7 dB
direct vs +1.5 dB resampled to 2 mm and back; at 1 mm +6.2 dB direct vs +7.5 dB resampled. The
1 mm scan is the 2 mm sample upsampled, with no detail finer than 2 mm for the round trip to blur,
so its 1.4 dB favour resampling more than a real 1 mm scan would; the warning says both.
"""

from __future__ import annotations

import warnings

import numpy as np

from medidiff.choices import DenoiseMethod, NoiseChoice
from medidiff.core.intensity import Normaliser, fit_scan_range
from medidiff.core.slicing import SliceLayout
from medidiff.errors import InvalidScanError, MedidiffError, ModelError
from medidiff.tasks.ensemble import ENSEMBLE_SIZES

__all__ = ["DenoiseOptionError", "check_options", "check_ensemble", "check_white_noise", "check_size", "check_constant",
           "check_signal", "check_units", "check_noise_range", "warn_spacing",
           "MIN_SIGNAL_TO_NOISE", "SPACING_TOLERANCE"]

MIN_SIGNAL_TO_NOISE = 2.0  # smoothed intensity spread / noise std below which a scan is noise only
SPACING_TOLERANCE = 1.5  # voxel size ratio to the training spacing above which we warn
_MIN_NET_SPREAD = 0.02  # network units: a fixed normaliser maps the scan to (almost) one value
_MAX_NET_MEDIAN = 10.0
METHODS = DenoiseMethod.values()
NOISE_CHOICES = NoiseChoice.values()


class DenoiseOptionError(MedidiffError, ValueError):
    """A denoise option is out of range or unknown (the message names the option)."""


def check_options(method: str, noise: str, sigma: float | None, strength: float, steps: int, samples: int,
                  batch_size: int, ensemble: int) -> None:
    """Refuse an unknown method or noise model, or an option out of range (one line naming it)."""
    if method not in METHODS:
        raise DenoiseOptionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if noise not in NOISE_CHOICES:
        raise DenoiseOptionError(f"unknown noise model {noise!r}; choose one of {', '.join(NOISE_CHOICES)}")
    if not strength > 0:
        raise DenoiseOptionError(f"strength must be > 0, got {strength}")
    if sigma is not None and not (np.isfinite(sigma) and sigma >= 0):
        raise DenoiseOptionError(f"sigma must be a finite number >= 0, got {sigma}")
    if steps < 1 or samples < 2 or batch_size < 1:
        raise DenoiseOptionError(f"steps and batch_size must be >= 1 and samples >= 2; got steps={steps}, "
                                 f"samples={samples}, batch_size={batch_size}")
    if ensemble not in ENSEMBLE_SIZES:
        raise DenoiseOptionError(f"ensemble must be one of {', '.join(map(str, ENSEMBLE_SIZES))}, got {ensemble}")
    if ensemble > 1 and method != "tweedie":
        raise DenoiseOptionError(f"ensemble {ensemble} works with method 'tweedie' only, not {method!r}")


def check_ensemble(ensemble: int, layout: SliceLayout, scan, source: str) -> None:
    """Refuse ensemble 8 (90-degree turns) on non-square pixels."""
    if ensemble == 8:
        dy, dx = layout.item_spacing(tuple(scan.spacing))[-2:]
        if abs(dy - dx) > 1e-3 * max(dy, dx):
            raise DenoiseOptionError(f"{source}: ensemble 8 rotates the pixel grid, which needs square pixels; "
                                     f"these are {dy:.4g} x {dx:.4g} mm (use ensemble 4: flips only)")


def check_white_noise(model, source: str) -> None:
    """Refuse a model trained with structured (simplex, coarse) noise: it is no white-noise denoising prior."""
    noise = str((model.config.training or {}).get("noise") or "white")
    if noise not in ("white", "gaussian"):
        raise ModelError(f"{model.path or 'model'}: was trained with {noise} noise (an anomaly model for "
                         f"--method simplex), not white noise, so it cannot denoise {source}; use a model trained "
                         "with --noise white")


def check_size(model, layout: SliceLayout, shape: tuple[int, ...], source: str) -> None:
    """Refuse items smaller than half the model's window (or 8 pixels) along any axis."""
    item = layout.item_shape(shape)
    window = tuple(model.config.image_size)
    need = tuple(max(8, w // 2) for w in window)
    if len(item) != len(need) or any(s < n for s, n in zip(item, need)):
        what = "slices are" if layout.slice_wise else "image is"
        raise InvalidScanError(source, f"{what} {'x'.join(map(str, item))} voxels; the model needs at least "
                                       f"{'x'.join(map(str, need))} (half its {'x'.join(map(str, window))} "
                                       "training window) to denoise without artefacts")


def check_constant(array: np.ndarray, source: str) -> None:
    """Refuse an (almost) constant scan before any noise estimation."""
    fit_scan_range(array, "percentile", source=source)


def check_signal(array: np.ndarray, sigma: np.ndarray, source: str) -> float:
    """Refuse a constant scan or one with no foreground above the noise; returns the spread."""
    low, high = fit_scan_range(array, "percentile", source=source)
    spread = high - low
    noise = float(np.median(sigma)) if np.size(sigma) else 0.0
    if noise > 0 and spread < MIN_SIGNAL_TO_NOISE * noise:
        raise InvalidScanError(source, f"has no foreground above the noise: its intensity spread ({spread:.4g}, "
                                       f"smoothed) is only {spread / noise:.2f}x the noise std {noise:.4g}; "
                                       "it looks like noise only")
    return spread


def check_units(norm: Normaliser, scan_norm: Normaliser, array: np.ndarray, source: str) -> None:
    """Refuse a scan that a fixed normaliser maps to a constant or far out-of-range image."""
    if norm.per_scan or norm.kind == "identity":
        return  # a per-scan rule cannot do this; identity models work on network units by design
    low, high = fit_scan_range(array, "percentile", source=source)
    net = scan_norm.forward(np.array([low, high], dtype=np.float64))
    spread, centre = float(net[1] - net[0]), float(net.mean())
    what = f"{norm.kind} {norm.detail}".strip()
    if spread < _MIN_NET_SPREAD or abs(centre) > _MAX_NET_MEDIAN:
        raise InvalidScanError(source, f"its intensities ({low:.4g}..{high:.4g}) do not fit the model's fixed "
                                       f"normaliser ({what}: [{norm.low:.4g}, {norm.high:.4g}] -> [-1, 1]); "
                                       "is the scan in the units the model was trained on (HU for CT)?")


def check_noise_range(model, s_net: np.ndarray, source: str) -> None:
    """Refuse noise beyond the model's noisiest training time (network units)."""
    sched = model.schedule
    times = np.array([sched.timestep_for_noise(float(s)) for s in np.atleast_1d(s_net)])
    if np.any(times >= sched.T - 1):
        raise InvalidScanError(source, f"its noise ({float(np.max(s_net)):.3g} in the model's normalised units) "
                               "is beyond the noisiest level the model was trained on; lower --strength or "
                               "--sigma, or use a model trained for this noise")


def warn_spacing(model, layout: SliceLayout, scan, source: str) -> str | None:
    """Warn (one line) when the scan's voxel size is far from the model's training spacing."""
    trained = tuple(model.config.spacing or ())
    if not trained or scan.meta.get("unit") == "pixel":
        return None
    have = layout.item_spacing(tuple(scan.spacing))
    if len(have) != len(trained) or min(have) <= 0 or min(trained) <= 0:
        return None
    # a model trained on coarser-voxel crops (train --spacing-augment F) knows 1..F times its spacing
    coarsest = max(1.0, float((model.config.training or {}).get("spacing_augment") or 1.0))
    ratios = [h / t / coarsest if h / t > coarsest else min(h / t, 1.0) for h, t in zip(have, trained)]
    worst = max(ratios, key=lambda r: max(r, 1 / r))
    if max(worst, 1 / worst) <= SPACING_TOLERANCE:
        return None
    fmt = "x".join(f"{v:.3g}" for v in have)
    ref = "x".join(f"{v:.3g}" for v in (trained if worst < 1 else [t * coarsest for t in trained]))
    factor = max(worst, 1 / worst)
    if worst > 1:
        expect = (f"expect a smaller gain than at {ref} mm (mr2d at 2x coarser: +2.7 dB instead of +4.3 dB; "
                  "resampling first measured worse)")
    else:
        expect = (f"expect less than resampling to {ref} mm first would give where the scan has no finer detail "
                  "(mr2d at 2x finer: 1.4 dB less), more where it has")
    upto = "up to " if worst > 1 and coarsest > 1 else ""
    text = (f"{source}: voxels are {fmt} mm but the model was trained at {upto}{ref} mm ({factor:.1f}x "
            f"{'coarser' if worst > 1 else 'finer'}); {expect}")
    warnings.warn(text, UserWarning, stacklevel=3)
    return text
