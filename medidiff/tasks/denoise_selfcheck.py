"""The denoise self-check: the gain a denoising is likely to have given, estimated without clean data.

A diffusion prior outside its domain (a bright-field stain shown to a phase-contrast model, noise
mis-estimated) returns a plausible-looking image that can be *worse* than the input. The
self-check estimates the result's MSE against the unknown clean scan with Monte-Carlo SURE
(:mod:`medidiff.core.metrics.sure`: one more pass of the same denoiser at ``y + eps s b``) and
turns it into the PSNR gain a user with the clean scan would have measured,
``10 log10(mean s^2 / SURE)``. Below :data:`WARN_BELOW_DB` the task warns in one line naming the
file ("the model is unlikely to help this scan ... try --fit"; after ``--fit`` itself: train
longer or check the noise level, :func:`medidiff.tasks.fit.fit_advice`).

Everything is in **scan units**, on the whole pipeline (noise-model transform, per-scan
normaliser, network, inverse transform), so the estimate is of the output the user gets:

* ``s_i`` (the noise std per voxel) comes from the noise model the task estimated: Gaussian,
  ``sigma`` of the voxel's item (exact); Poisson-Gaussian, ``sqrt(gain * y_i + read^2)`` at the
  *noisy* value, which is unbiased for the affine variance ``gain * x_i + read^2`` (the noise is
  treated as Gaussian with that variance: good above ~10 photons per voxel); Rician, ``sigma``
  where the denoised signal is above ``2 sigma`` (there the magnitude is close to Gaussian of
  std ``sigma``); darker voxels (Rayleigh-like background) are left out of the region because
  SURE's Gaussian identity does not hold there.
* region (``"foreground"``, the default, chosen on the validation split of
  ``benchmarks/denoise_selfcheck.py``: its estimate is the closest to the true gain on the
  voxels it measures, 0.47 dB mean error against 0.68 for ``signal`` and 2.11 for ``all``): the
  voxels with ``D - min > 0.1 (max - min)`` (robust 0.1/99.9 percentiles of the denoised scan,
  like the benchmarks' PSNR region ``x > 0.1 max``), and for Rician noise above ``2 sigma`` too.
  ``"signal"`` is every voxel where the Gaussian approximation holds (all of them, or those above
  ``2 sigma`` for Rician noise); ``"all"`` every voxel.
* which denoiser: for ``tweedie`` (with its ``ensemble``) the estimate is of the returned image
  (one more pass: ``ensemble`` network calls per slice batch). ``ddim`` and ``posterior`` are
  deterministic only given their seeds and many passes long, so the estimate is of the
  single-call ``tweedie`` denoiser of the same model (two passes), an indicator of whether the
  scan is inside what the model can handle, not of the returned image; the result says which.
* measured (``benchmarks/README.md``, "Denoise self-check"): where the noise estimate is within
  ~3 % the estimate is within 0.51 dB of the true foreground gain below +5 dB (median 0.16 dB over
  22 rows up to +10 dB, max 1.7); an overestimated noise level (texture taken for noise: x1.15-1.16
  on a foreign T1, a photo, a star field) makes it optimistic by 1.2-1.7 dB. On the test split the
  warning fired on the one row that lost (-0.5 dB) and missed one at +0.3 dB (noise 16 % high).
  With Rician noise (the VST path) the foreground figure of ``mr2d`` on its held-out sample is
  about 6 dB below its whole-image gain (+2.4 to +7.0 against +8.6 to +13.2 dB): the background.
* precision: the probe is 1 % of the noise, far below bf16's rounding (~0.4 %), so on a device
  where the network runs under bf16 autocast (CUDA) the finite difference would measure rounding;
  there the check is skipped (logged) until the network can be run in float32 for it. Larger
  probes bias it (measured on CPU: ``eps = 0.1`` moves the estimate by 0.1 dB below +7 dB,
  ``0.3`` by 0.5-1 dB).
* the noise level is the task's own (estimated or given), and SURE inherits its error: a noise
  variance off by ``dv`` moves SURE by about ``-dv``. The noise estimators are good to ~5 % in
  std (~10 % in variance) on real images (``benchmarks/denoise_selfcheck.py`` prints the ratio),
  so a SURE within ``+-`` :data:`RESOLUTION` ``x`` the noise variance cannot be told from 0: such a
  gain is reported as "about +10 dB or more" (never warned about), and a SURE *below*
  ``-RESOLUTION x`` the variance is impossible for any true MSE -- the noise level is too high
  (a wrong ``--sigma``, or image texture taken for noise) -- and gets its own warning. Too *low*
  a level biases SURE up, so the warning may fire where the gain is small only because most of
  the noise was left in.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass

import numpy as np

from medidiff.core.metrics.sure import DEFAULT_EPS, SureEstimate, perturbed, probe, sure_from_passes
from medidiff.core.noise import NoiseDomain

__all__ = ["WARN_BELOW_DB", "RESOLUTION", "ADVICE", "SIGMA_ADVICE", "REGIONS", "REGION", "SelfCheck", "noise_std_map",
           "region_mask",
           "probe_input", "evaluate",
           "warn_if_unhelpful", "COST_NOTE", "available_on", "check_plan", "self_check_steps"]

WARN_BELOW_DB = 1.0  # estimated gain below which the task warns (chosen on the validation split)
RESOLUTION = 0.1  # SURE within +-this share of the noise variance is indistinguishable from 0 (gain > +10 dB)
REGIONS = ("signal", "foreground", "all")
REGION = "foreground"  # the default (chosen on the validation split)
COST_NOTE = "one more network pass for tweedie (x ensemble), two tweedie passes for ddim/posterior"
_PROBE_STREAM = 0x5E1F  # the probe's random stream, apart from the posterior samplers'


@dataclass(frozen=True)
class SelfCheck:
    """What the self-check estimated.

    ``gain_db``: estimated PSNR gain of ``denoiser``'s output over the noisy scan (dB, on
    ``region``; capped at +40). ``mse`` / ``noise_var``: SURE of the output and the noise variance
    (scan units squared). ``resolved``: ``mse >= RESOLUTION * noise_var``, i.e. ``gain_db`` is at
    most +10 dB and means what it says; otherwise the gain is only known to be large.
    ``consistent``: False when ``mse < -RESOLUTION * noise_var`` (no true MSE can be that: the
    noise level is too high; ``gain_db`` means nothing). ``stderr_db``: rough standard error. ``denoiser``: what was
    checked (``"tweedie"``, ``"tweedie x4"``; for ddim/posterior runs ``"tweedie (indicator)"``).
    ``region``: which voxels, ``voxels``: how many (of ``total``). ``warning``: the one-line warning given, if any.
    ``by_region``: the estimated gain on each of :data:`REGIONS` (from the same two passes; for
    benchmarks and the curious); ``mse_by_region``: the SURE on each (what the ``sure`` interval
    scale reads, for a region fixed by its calibration).
    """

    gain_db: float
    mse: float
    noise_var: float
    consistent: bool
    stderr_db: float
    denoiser: str
    region: str
    voxels: int
    total: int = 0
    warning: str | None = None
    by_region: dict | None = None
    mse_by_region: dict | None = None

    @property
    def resolved(self) -> bool:
        """Whether :attr:`gain_db` is resolved (SURE at least ``RESOLUTION`` x the noise variance)."""
        return self.consistent and self.mse >= RESOLUTION * self.noise_var

    def line(self) -> str:
        """The CLI line: ``estimated gain: +X dB (SURE, no clean data)``."""
        what = f"; of {self.denoiser}" if "indicator" in self.denoiser else ""
        if self.total and self.voxels < self.total:
            where = "foreground" if self.region == "foreground" else "voxels where the noise is near Gaussian"
            what += f"; on the {where}, {100 * self.voxels / self.total:.0f}% of the scan"
        if not self.consistent:
            return f"estimated gain: unknown (SURE, no clean data{what}: below zero, the noise level looks too high)"
        if not self.resolved:
            return f"estimated gain: about +10 dB or more (SURE, no clean data{what})"
        return f"estimated gain: {self.gain_db:+.1f} dB (SURE, no clean data{what})"

    def to_dict(self) -> dict:
        """Plain values (for layer metadata and JSON)."""
        return asdict(self)


def noise_std_map(domain: NoiseDomain, items: np.ndarray) -> np.ndarray:
    """The noise std per voxel in scan units (float64, ``items``' shape) under ``domain``'s model."""
    arr = np.asarray(items, dtype=np.float64)
    if domain.model == "poisson-gaussian" and domain.gain is not None:
        return np.asarray(domain.std_at(arr), dtype=np.float64)  # at the noisy value: unbiased variance
    sigma = np.asarray(domain.sigma, dtype=np.float64).reshape(-1)
    return np.broadcast_to(sigma.reshape((-1,) + (1,) * (arr.ndim - 1)), arr.shape).copy()


def region_mask(domain: NoiseDomain, s: np.ndarray, denoised: np.ndarray, region: str = REGION) -> np.ndarray:
    """The voxels SURE is averaged over (boolean, ``denoised``' shape); see the module docstring."""
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    d = np.asarray(denoised, dtype=np.float64)
    mask = s > 0
    if region in ("signal", "foreground") and domain.model == "rician":
        mask &= d > 2.0 * s
    if region == "foreground":
        low, high = np.percentile(d, [0.1, 99.9])
        mask &= d - low > 0.1 * (high - low)
    return mask


def probe_input(items: np.ndarray, s: np.ndarray, seed: int, eps: float = DEFAULT_EPS) -> tuple[np.ndarray, np.ndarray]:
    """``(y + eps s b, b)``: the perturbed stack (float32, scan units) and the probe, fixed by ``seed``."""
    b = probe(np.shape(items), seed=(int(seed), _PROBE_STREAM))
    return perturbed(items, s, b, eps).astype(np.float32), b


def evaluate(items: np.ndarray, denoised: np.ndarray, denoised_probe: np.ndarray, s: np.ndarray, b: np.ndarray,
             domain: NoiseDomain, denoiser: str, region: str = REGION, eps: float = DEFAULT_EPS) -> SelfCheck | None:
    """The :class:`SelfCheck` from the two passes (None when there is no noise to measure against).

    ``items``: the noisy stack, ``denoised`` = D(items), ``denoised_probe`` = D(items + eps s b),
    all scan units (the perturbed input's float32 rounding, ~1e-4 of the probe, is ignored).
    """
    y = np.asarray(items, dtype=np.float64)
    found: dict[str, SureEstimate] = {}
    for name in REGIONS:
        mask = region_mask(domain, s, denoised, name)
        if mask.any():
            found[name] = sure_from_passes(y, denoised, denoised_probe, s, b, eps, mask)
    est = found.get(region)
    if est is None:
        return None
    by_region = {k: (v.gain_db if v.consistent else float("nan")) for k, v in found.items()}
    consistent = est.mse >= -RESOLUTION * est.noise_var
    return SelfCheck(est.gain_db, est.mse, est.noise_var, consistent, est.stderr_db, denoiser, region, est.voxels,
                     total=int(y.size), by_region=by_region, mse_by_region={k: v.mse for k, v in found.items()})


ADVICE = "try --fit (trains on the scan itself)"  # what the warning suggests after a pretrained model's denoising
SIGMA_ADVICE = "check --sigma, or try --fit"  # ... and when the noise level is inconsistent with the result


def warn_if_unhelpful(check: SelfCheck | None, source: str, threshold_db: float = WARN_BELOW_DB, *,
                      subject: str = "the model", advice: str = ADVICE,
                      sigma_advice: str = SIGMA_ADVICE) -> SelfCheck | None:
    """Warn (one ``UserWarning`` line naming ``source``) when the estimated gain is below ``threshold_db``.

    ``subject`` / ``advice`` / ``sigma_advice``: what denoised, and what the line suggests (small
    gain / inconsistent noise level); the defaults are for a pretrained model, a ``--fit`` result
    passes its own (:func:`medidiff.tasks.fit.fit_advice`). Returns ``check`` with its ``warning``
    set (or unchanged when nothing was said).
    """
    if check is None:
        return None
    what = "" if "indicator" not in check.denoiser else " (estimated for its tweedie denoiser)"
    if not check.consistent:
        text = (f"{source}: the noise level ({check.noise_var ** 0.5:.4g} rms, scan units) is inconsistent with the "
                f"result (SURE far below zero): it looks too high for this scan; {sigma_advice}")
    elif check.resolved and check.gain_db < threshold_db:
        text = (f"{source}: {subject} is unlikely to help this scan{what} (estimated {check.gain_db:+.1f} dB, "
                f"SURE without clean data); {advice}")
    else:
        return check
    warnings.warn(text, UserWarning, stacklevel=3)
    return SelfCheck(**{**asdict(check), "warning": text})


def available_on(device) -> bool:
    """Whether the check's 1 % finite difference is meaningful on ``device`` (not under bf16 autocast)."""
    from medidiff.core.devices import autocast_dtype

    return autocast_dtype(device) is None


def check_plan(method: str, ensemble: int) -> tuple[int, int]:
    """``(passes, ensemble)`` of the tweedie passes the check adds for ``method``."""
    return (1, ensemble) if method == "tweedie" else (2, 1)


def self_check_steps(run_pass: Callable[[np.ndarray, int], Generator], items: np.ndarray, out: np.ndarray,
                     domain: NoiseDomain, method: str, ensemble: int, seed: int, source: str
                     ) -> Generator[object, None, SelfCheck | None]:
    """Run the check's passes (``run_pass(stack, ensemble)``: tweedie on a scan-units stack, a generator).

    ``out`` is the task's result (scan units), reused as ``D(y)`` for tweedie. Warns through
    :func:`warn_if_unhelpful`; returns the :class:`SelfCheck` (None when there is no noise).
    """
    passes, size = check_plan(method, ensemble)
    s_map = noise_std_map(domain, items)
    probe_items, b = probe_input(items, s_map, seed)
    plain = out if passes == 1 else (yield from run_pass(items, 1))
    probed = yield from run_pass(probe_items, size)
    label = (f"tweedie x{ensemble}" if ensemble > 1 else "tweedie") if method == "tweedie" else "tweedie (indicator)"
    return warn_if_unhelpful(evaluate(items, plain, probed, s_map, b, domain, label), source)
