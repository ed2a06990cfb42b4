"""Per-voxel denoising intervals with a stated coverage: split conformal prediction.

The maths
---------
Let ``x`` be a clean scan, ``y`` a noisy copy and ``x_hat = f(y)`` the denoised scan, all in the
model's **normalised** units (the per-scan intensity map of ``Normaliser.for_scan``; CT models:
their fixed window). For a per-voxel scale ``u(y) > 0`` the *nonconformity score* of voxel ``i``
is

    r_i = |x_i - x_hat_i| / u_i .

Calibration (:mod:`medidiff.tasks.denoise_calibration`) takes the model's own training-like
scans, adds simulated noise of the model's noise model at several levels ``s_1 < ... < s_L``
(std in normalised units), denoises each with the same method, and keeps, per level, the
empirical quantiles ``q_l(c)`` of the ``n`` scores at a grid of coverages ``c`` (the finite-
sample rank ``ceil((n + 1) c)``, i.e. the split-conformal quantile). At denoising time the
interval of voxel ``i`` is

    [x_hat_i - q(c, s) u_i,  x_hat_i + q(c, s) u_i]

with ``q(c, s)`` interpolated linearly in ``c`` on the grid and linearly in ``log s`` between
the two calibrated levels around the scan's *estimated* noise level ``s`` (the same estimate
the denoiser uses, so calibration and use see the same thing). A scan whose ``s`` lies outside
``[s_1, s_L]`` (2% slack), a model without a calibration for the method, ensemble and noise
model, or a ``strength`` other than 1 is refused with one line: there is no quantile for it.
The bounds are built in normalised units and mapped back with the scan's own inverse (a
linear map), so they carry the scan's units: scaling the scan by ``a > 0`` scales the interval
by ``a``.

Scales ``u`` (stored with the calibration as ``scale``):

``noise``      ``u = s`` (the item's noise level): one width per item.
``signal``     ``u`` = the noise std *at the denoised value*: for Poisson-Gaussian noise
               ``sqrt(gain x_hat + 3/8 gain^2 + read^2)`` (scan units, then normalised; the
               local slope of the Anscombe transform), so bright voxels get wider intervals;
               ``u = s`` for Gaussian and Rician noise.
``texture``    ``u = sqrt(s^2 + var_5x5(x_hat))``: wider where the denoised image has structure
               (edges, texture), where a denoiser errs most; equal to ``noise`` in flat regions.
``posterior``  ``u = sd`` of the ``posterior`` samples (normalised units; ``method='posterior'``
               only), plus ``0.05 s`` so it never vanishes.
``sure``       ``u = max(rmse_SURE, 0.05 s)``: the denoised scan's root-mean-square error against
               the unknown clean scan, estimated without clean data by Monte-Carlo SURE (the
               denoise self-check, :mod:`medidiff.core.metrics.sure`: one more tweedie pass),
               one value per scan, over the self-check region stored with the calibration
               (``sure_region``, ``"signal"``: every voxel for Gaussian and Poisson-Gaussian
               noise), not the self-check's default, which may change. The score
               ``|x - x_hat| / rmse`` no longer depends on how hard the scan is for the model: a
               model that has memorised its few training images denoises them better than any
               new scan, so quantiles of ``|x - x_hat| / s`` calibrated on them are too small
               for new scans (built-in ``ct2d`` on its held-out slice: 0.57-0.77 coverage at
               nominal 0.90), while ``|x - x_hat| / rmse`` has about the same distribution on
               both (0.89-0.95, with the region below). At high noise SURE is itself noisy (the
               error of the estimated ``s`` dominates it), which widens the stored quantiles
               there and makes one scan's coverage stray (sd 0.01-0.03 for ``ct2d``). The floor
               keeps ``u > 0`` where SURE is inconsistent (``<= 0``).

Region (``region_min``, stored with the calibration; ``None``, the default and every older
calibration: all voxels): only voxels whose *denoised* value is at least ``region_min``
(normalised units, where the scan spans about -1..1: ``-0.9`` is 5 % of the range above the
dark end; for a CT model's HU window -1000..1000, -900 HU) are scored at calibration, and the
stated coverage is over the same voxels of a new scan. Constant padding outside the field of
view and air then cannot set the quantile that tissue is given. The region is decided by the
denoised value, which is known at use time, so the conformal argument holds for the voxels in
it; voxels outside get the same quantile (their coverage is not stated).

The guarantee and its assumption
--------------------------------
Split conformal prediction guarantees ``P(x_i in interval) >= c`` when the test pair
``(x_i, y_i)`` is *exchangeable* with the calibration pairs: here, a voxel drawn uniformly
from a scan that comes from the same distribution as the calibration scans (same kind of
anatomy or specimen, same contrast, same noise model at the same level). Two caveats, both
stated in the report rather than hidden: (1) voxels of one scan are correlated, so the
finite-sample correction counts voxels, not independent draws, and the guarantee is
approximate (marginal over voxels and scans, not per voxel); (2) a scan unlike the training
images (other contrast, pathology, other noise) breaks exchangeability and the coverage can
be lower. The measured coverage on the built-ins' held-out samples is in their model cards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from medidiff.errors import InvalidScanError, MedidiffError, ModelError
from medidiff.tasks.denoise_selfcheck import REGIONS

__all__ = ["SCALES", "COVERAGES", "MIN_COVERAGE", "MAX_COVERAGE", "IntervalCalibration", "IntervalError",
           "check_coverage", "calibrations", "find_calibration", "require_sure", "needs_sure", "local_noise", "sure_rmse", "scale_of",
           "region_mask", "interval_items", "scores", "parse_interval_option"]

SCALES = ("noise", "signal", "texture", "posterior", "sure")
MIN_COVERAGE, MAX_COVERAGE = 0.5, 0.99
COVERAGES = tuple(round(0.5 + 0.01 * k, 2) for k in range(50))  # 0.50 .. 0.99, the stored grid
LEVEL_SLACK = 0.02  # relative slack on the calibrated noise range
_TEXTURE_WINDOW = 5
_POSTERIOR_FLOOR = 0.05
_SURE_FLOOR = 0.05  # u >= 0.05 s under the sure scale
SURE_REGION = "signal"  # the self-check region the sure scale reads (denoise_selfcheck.REGIONS)


class IntervalError(MedidiffError, ValueError):
    """Coverage asked for where there is no calibration for it (the message says what to do)."""


def _encode(values) -> str:
    return " ".join(f"{float(v):.5g}" for v in np.ravel(values))


def _decode(text: str) -> np.ndarray:
    return np.array([float(v) for v in str(text).split()], dtype=np.float64)


@dataclass(frozen=True)
class IntervalCalibration:
    """One calibration: quantiles of the scores per noise level, for one method/ensemble/noise model.

    ``levels``: the calibrated noise levels (normalised units, increasing). ``quantiles``: shape
    ``(len(levels), len(COVERAGES))``. ``n_voxels``: scores per level. ``sources``: scan names.
    ``region_min``: the calibration region (denoised value >= this, normalised units; ``None``:
    every voxel), see the module docstring. ``sure_region``: the self-check region whose SURE
    the ``sure`` scale reads.
    """

    method: str
    ensemble: int
    noise_model: str
    scale: str
    levels: np.ndarray
    quantiles: np.ndarray
    n_voxels: int
    n_scans: int
    draws: int
    seed: int
    sources: tuple[str, ...] = ()
    region_min: float | None = None
    sure_region: str = SURE_REGION

    def to_dict(self) -> dict:
        """The compact JSON form (numbers as space-separated strings, one per level)."""
        d = {"method": self.method, "ensemble": int(self.ensemble), "noise_model": self.noise_model,
             "scale": self.scale, "levels": _encode(self.levels), "coverages": f"{COVERAGES[0]:.2f}:{COVERAGES[-1]:.2f}:0.01",
             "quantiles": [_encode(q) for q in self.quantiles], "n_voxels": int(self.n_voxels),
             "n_scans": int(self.n_scans), "draws": int(self.draws), "seed": int(self.seed),
             "sources": list(self.sources)}
        if self.region_min is not None:  # absent: all voxels (older calibrations read the same)
            d["region_min"] = float(self.region_min)
        if self.scale == "sure":
            d["sure_region"] = self.sure_region
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json") -> "IntervalCalibration":
        try:
            levels = _decode(d["levels"])
            q = np.stack([_decode(row) for row in d["quantiles"]])
            cal = cls(str(d["method"]), int(d["ensemble"]), str(d["noise_model"]), str(d["scale"]), levels, q,
                      int(d.get("n_voxels", 0)), int(d.get("n_scans", 0)), int(d.get("draws", 1)),
                      int(d.get("seed", 0)), tuple(d.get("sources", ())),
                      None if d.get("region_min") is None else float(d["region_min"]),
                      str(d.get("sure_region", SURE_REGION)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: the intervals calibration is damaged ({exc!r}); recalibrate the model") from None
        if (q.shape != (levels.size, len(COVERAGES)) or levels.size < 1 or np.any(np.diff(levels) <= 0)
                or not np.all(np.isfinite(q)) or cal.scale not in SCALES
                or (cal.region_min is not None and not np.isfinite(cal.region_min))
                or cal.sure_region not in REGIONS):
            raise ModelError(f"{where}: the intervals calibration is damaged (levels/quantiles do not fit); recalibrate")
        return cal

    def quantile(self, coverage: float, level: float) -> float:
        """``q(c, s)``: linear in the coverage, linear in log(level) between calibrated levels."""
        per_level = np.array([np.interp(coverage, COVERAGES, row) for row in self.quantiles])
        if self.levels.size == 1:
            return float(per_level[0])
        lv = np.log(np.clip(level, self.levels[0], self.levels[-1]))
        return float(np.interp(lv, np.log(self.levels), per_level))

    def check_level(self, level: np.ndarray, source: str) -> None:
        """Refuse a noise level (normalised units) outside the calibrated range."""
        lo, hi = self.levels[0] * (1 - LEVEL_SLACK), self.levels[-1] * (1 + LEVEL_SLACK)
        bad = [float(v) for v in np.atleast_1d(level) if not lo <= v <= hi]
        if bad:
            raise InvalidScanError(source, f"its noise level ({bad[0]:.3g} in the model's normalised units) is outside "
                                           f"the range the intervals were calibrated for ({self.levels[0]:.3g}-"
                                           f"{self.levels[-1]:.3g}); no coverage can be stated (recalibrate with "
                                           "wider --levels)")


def check_coverage(coverage: float | None) -> None:
    """Refuse a coverage outside the stored grid."""
    if coverage is None:
        return
    if not (isinstance(coverage, (int, float)) and MIN_COVERAGE <= float(coverage) <= MAX_COVERAGE):
        raise IntervalError(f"coverage must be a number in {MIN_COVERAGE}..{MAX_COVERAGE}, got {coverage!r}")


def calibrations(model) -> list[IntervalCalibration]:
    """The model's stored interval calibrations (``config.intervals["calibrations"]``)."""
    where = f"{getattr(model, 'path', None) or 'model'}/config.json"
    return [IntervalCalibration.from_dict(d, where) for d in (model.config.intervals or {}).get("calibrations", [])]


def find_calibration(model, method: str, ensemble: int, noise_model: str | None = None,
                     strength: float = 1.0) -> IntervalCalibration:
    """The calibration for ``method``/``ensemble`` (and ``noise_model`` when known), else one-line refusal."""
    name = getattr(model, "path", None) or "model"
    if strength != 1.0:
        raise IntervalError(f"--coverage: intervals are calibrated at strength 1, not {strength:g}; drop --strength")
    cals = [c for c in calibrations(model) if c.method == method and c.ensemble == int(ensemble)]
    label = method if ensemble == 1 else f"{method} x{ensemble}"
    if not cals:
        have = ", ".join(sorted({f"{c.method} x{c.ensemble}" for c in calibrations(model)})) or "none"
        raise IntervalError(f"{name}: no interval calibration for {label} (calibrated: {have}); run "
                            f"`medidiff denoise-calibrate {name} TRAINING_SCANS --method {method}` first")
    if noise_model is None:
        return cals[0]
    match = [c for c in cals if c.noise_model == noise_model]
    if not match:
        raise IntervalError(f"{name}: intervals for {label} were calibrated for {cals[0].noise_model} noise, not "
                            f"{noise_model}; pass --noise {cals[0].noise_model} or recalibrate with --noise {noise_model}")
    return match[0]


def require_sure(available: bool, what: str, fix: str) -> None:
    """Refuse in one line a ``sure``-scale use where the SURE self-check cannot run (``available`` false)."""
    if not available:
        raise IntervalError(f"{what} need the SURE self-check, which cannot run under this device's bf16 autocast; {fix}")


def needs_sure(cal: IntervalCalibration | None, available: bool, source: str) -> bool:
    """True when ``cal`` scales by the SURE self-check; refuse in one line where it cannot run (``available``)."""
    if cal is None or cal.scale != "sure":
        return False
    require_sure(available, f"{source}: these intervals (scale 'sure')", "denoise with --device cpu for intervals")
    return True


def local_noise(x_hat_scan: np.ndarray, norm, gain: float | None, read: float | None) -> np.ndarray | None:
    """Poisson-Gaussian noise std at the denoised values, normalised units (``None`` without a gain)."""
    if not gain or gain <= 0:
        return None
    r2 = float(read or 0.0) ** 2
    x = np.asarray(x_hat_scan, dtype=np.float64)
    var = np.maximum(gain * x + 0.375 * gain * gain + r2, r2 + 0.375 * gain * gain)
    return np.asarray(norm.scale_sigma(np.sqrt(var)))


def sure_rmse(check, norm, region: str = SURE_REGION) -> float | None:
    """The self-check's SURE-estimated RMSE on ``region`` in normalised units (``None`` without a check).

    ``check``: a ``denoise_selfcheck.SelfCheck`` (its ``mse_by_region``, scan units squared). An
    inconsistent estimate (``mse <= 0``) gives 0, so the ``sure`` scale falls to its floor.
    """
    mse = None if check is None else (getattr(check, "mse_by_region", None) or {}).get(region)
    if mse is None:
        return None
    return float(norm.scale_sigma(float(np.sqrt(max(float(mse), 0.0)))))


def region_mask(region_min: float | None, x_hat_n: np.ndarray) -> np.ndarray:
    """The calibration region: denoised value (normalised units) ``>= region_min``; all voxels for ``None``."""
    x = np.asarray(x_hat_n)
    return np.ones(x.shape, dtype=bool) if region_min is None else x >= float(region_min)


def scale_of(kind: str, x_hat: np.ndarray, level: np.ndarray, sd: np.ndarray | None = None,
             noise_n: np.ndarray | None = None, rmse: float | None = None) -> np.ndarray:
    """The per-voxel scale ``u`` of items ``(N, ...)`` in normalised units (``level``: one per item).

    ``sd``: posterior sd (``posterior``); ``noise_n``: :func:`local_noise` (``signal``);
    ``rmse``: the SURE-estimated RMSE in normalised units (``sure``, :func:`sure_rmse`).
    """
    s = np.asarray(level, dtype=np.float64).reshape((-1,) + (1,) * (x_hat.ndim - 1))
    if kind == "sure":
        if rmse is None:
            raise IntervalError("the 'sure' interval scale needs the denoise self-check (SURE); do not turn it off")
        return np.broadcast_to(np.maximum(float(rmse), _SURE_FLOOR * s), x_hat.shape).astype(np.float64)
    if kind == "signal" and noise_n is not None:
        return np.asarray(noise_n, dtype=np.float64)
    if kind in ("noise", "signal"):
        return np.broadcast_to(s, x_hat.shape).astype(np.float64)
    if kind == "texture":
        x = np.asarray(x_hat, dtype=np.float64)
        size = (1,) * (x.ndim - 2) + (_TEXTURE_WINDOW, _TEXTURE_WINDOW)
        mean = ndi.uniform_filter(x, size, mode="reflect")
        var = np.maximum(ndi.uniform_filter(x * x, size, mode="reflect") - mean * mean, 0.0)
        return np.sqrt(s * s + var)
    if kind == "posterior":
        if sd is None:
            raise IntervalError("the 'posterior' interval scale needs method 'posterior' (its sample spread)")
        return np.asarray(sd, dtype=np.float64) + _POSTERIOR_FLOOR * s
    raise IntervalError(f"unknown interval scale {kind!r}; choose one of {', '.join(SCALES)}")


def scores(clean_n: np.ndarray, x_hat_n: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Nonconformity scores ``|x - x_hat| / u`` (all normalised units), flat float64."""
    return (np.abs(np.asarray(clean_n, dtype=np.float64) - x_hat_n) / u).ravel()


def interval_items(cal: IntervalCalibration, coverage: float, out_items: np.ndarray, norm, level: np.ndarray,
                   sd_items: np.ndarray | None = None, gain: float | None = None,
                   read: float | None = None, self_check=None) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` bounds of items ``(N, ...)`` in scan units.

    ``out_items``: the denoised items (scan units); ``norm``: the scan's normaliser (linear);
    ``level``: the per-item noise level in normalised units; ``sd_items``: the posterior sd in
    scan units (``posterior`` scale only); ``gain``, ``read``: Poisson-Gaussian parameters (``signal``);
    ``self_check``: the denoise self-check (``denoise_selfcheck.SelfCheck``; ``sure`` scale).
    """
    x_hat_n = norm.forward(out_items).astype(np.float64)
    sd_n = None if sd_items is None else np.asarray(norm.scale_sigma(np.asarray(sd_items, dtype=np.float64)))
    u = scale_of(cal.scale, x_hat_n, level, sd_n, local_noise(out_items, norm, gain, read),
                 sure_rmse(self_check, norm, cal.sure_region))
    q = np.array([cal.quantile(coverage, float(s)) for s in np.atleast_1d(level)])
    half = q.reshape((-1,) + (1,) * (x_hat_n.ndim - 1)) * u
    low = norm.inverse((x_hat_n - half).astype(np.float32))
    high = norm.inverse((x_hat_n + half).astype(np.float32))
    return low.astype(np.float32), high.astype(np.float32)


def parse_interval_option(interval: str | None, coverage: float | None) -> tuple[tuple[str, str], float]:
    """``--interval LOW,HIGH`` and ``--coverage C`` -> ``((LOW, HIGH), C)`` (coverage 0.9 by default)."""
    if interval is None:
        raise IntervalError("--coverage needs --interval LOW,HIGH (the two files the bounds are written to)")
    parts = [p.strip() for p in str(interval).split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise IntervalError(f"--interval must be two different paths LOW,HIGH (e.g. low.nii.gz,high.nii.gz), got {interval!r}")
    cov = 0.9 if coverage is None else float(coverage)
    check_coverage(cov)
    return (parts[0], parts[1]), cov
