"""Calibrate denoising intervals (split conformal, see :mod:`medidiff.tasks.denoise_intervals`).

For every calibration scan ``x`` (clean, training-like: for a built-in, the data its model card
names), every noise level ``s`` (std in the model's normalised units) and ``draws`` noise draws,
noise of the model's noise model is simulated at ``sigma = s * half_range`` of the scan's own
normaliser (for Poisson-Gaussian noise: that std at the brightest value), the noisy scan is
denoised with the task itself (so noise estimation, per-scan normalisation and the
noise-model transforms are exactly those of use), and the scores ``|x - x_hat| / u`` of all
voxels are pooled per level (with ``region_min``: only the voxels in the calibration region,
whose denoised value is at least ``region_min``; see :mod:`medidiff.tasks.denoise_intervals`).
Each level is stored under the noise level the *denoiser estimated* (median over its runs),
which is what a scan is matched on at use time. With the ``sure`` scale each run also does the
denoise self-check (one more tweedie pass), exactly as a use with ``coverage`` does.
:func:`measure_coverage` runs the same loop on held-out scans and reports coverage and width.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path

import numpy as np

from medidiff.core import noise as noise_lib
from medidiff.core.intensity import Normaliser
from medidiff.core.progress import Progress, plain_twin, relay
from medidiff.core.sampling import sample_seed
from medidiff.core.slicing import SliceLayout
from medidiff.errors import InvalidScanError
from medidiff.io import Scan
from medidiff.tasks import denoise_intervals as iv

__all__ = ["DEFAULT_LEVELS", "calibrate_intervals_steps", "calibrate_intervals", "measure_coverage",
           "save_intervals", "intervals_section"]

DEFAULT_LEVELS = (0.03, 0.05, 0.08, 0.12, 0.18, 0.27, 0.4)  # noise std in normalised units (range ~ 2)
MAX_SOURCES = 20


def _source(scan: Scan, k: int) -> str:
    return str(scan.meta.get("source_path") or f"scan {k + 1}")


def _simulate(scan: Scan, model, noise_model: str, level: float, seed: int) -> Scan:
    """``scan`` with simulated noise of std ``level`` (normalised units of the scan's own map)."""
    arr = np.asarray(scan.array, dtype=np.float64)
    norm = model.normaliser.for_scan(arr, source=_source(scan, 0))
    sigma = float(norm.unscale_sigma(level))
    rng = np.random.default_rng(seed)
    if noise_model == "gaussian":
        noisy = noise_lib.add_gaussian(arr, sigma, rng)
    elif noise_model == "rician":
        noisy = noise_lib.add_rician(np.maximum(arr, 0.0), sigma, rng)
    else:
        span = float(arr.max() - arr.min()) or 1.0
        noisy = noise_lib.add_noise(arr, "poisson-gaussian", sigma / span, rng)
    return scan.with_array(np.asarray(noisy, dtype=np.float32))


def _noise_model(model, scans: Sequence[Scan], noise: str) -> str:
    if noise != "auto":
        return noise
    scan = scans[0]
    return noise_lib.choose_noise_model(scan.modality or model.config.modality, scan.meta.get("format"))[0]


def _runs(model, scans: Sequence[Scan], levels: Sequence[float], draws: int, noise_model: str, scale: str,
          method: str, ensemble: int, samples: int, steps: int, seed: int, device: str,
          region_min: float | None = None,
          ) -> Generator[Progress, None, list[tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]:
    """For each (level, scan, draw): ``(estimated level, scores, x_hat_n, u, region)`` after denoising.

    ``scores`` and ``region`` (the voxels in the calibration region) are flat, over every voxel.
    """
    from medidiff.tasks.denoise import denoise_steps

    out = []
    n = len(levels) * len(scans) * draws
    run = 0
    for li, level in enumerate(levels):
        for k, scan in enumerate(scans):
            layout = SliceLayout.for_model(model, scan)
            for d in range(draws):
                run += 1
                run_seed = sample_seed(seed, (li * len(scans) + k) * draws + d)
                noisy = _simulate(scan, model, noise_model, float(level), run_seed)
                res = yield from relay(denoise_steps(model, noisy, method=method, noise=noise_model, ensemble=ensemble,
                                                     samples=samples, steps=steps, seed=run_seed, device=device,
                                                     self_check=scale == "sure"),
                                       message=f"run {run}/{n} (level {level:g})")
                norm = Normaliser.from_dict(res.normaliser)
                s_net = np.asarray(res.sigma_normalised, dtype=np.float64)
                x_hat_n = norm.forward(layout.to_items(res.scan.array)).astype(np.float64)
                clean_n = norm.forward(layout.to_items(scan.array)).astype(np.float64)
                sd = None
                if res.uncertainty is not None:
                    sd = np.asarray(norm.scale_sigma(layout.to_items(res.uncertainty.array).astype(np.float64)))
                noise_n = iv.local_noise(layout.to_items(res.scan.array), norm, res.gain, res.sigma_read)
                rmse = iv.sure_rmse(getattr(res, "self_check", None), norm)
                u = iv.scale_of(scale, x_hat_n, s_net, sd, noise_n, rmse)
                out.append((float(np.median(s_net)), iv.scores(clean_n, x_hat_n, u), x_hat_n, u,
                            iv.region_mask(region_min, x_hat_n).ravel()))
    return out


def _check(scans: list, levels: Sequence[float], draws: int, scale: str, method: str, ensemble: int,
           noise: str, region_min: float | None = None) -> list[float]:
    if not scans:
        raise InvalidScanError(None, "no calibration scans were given")
    lv = sorted(float(v) for v in levels)
    if not lv or any(not (math.isfinite(v) and v > 0) for v in lv) or len(set(lv)) != len(lv):
        raise iv.IntervalError(f"--levels must be distinct positive noise levels (normalised units), got {list(levels)}")
    if draws < 1:
        raise iv.IntervalError(f"--draws must be >= 1, got {draws}")
    if scale not in iv.SCALES:
        raise iv.IntervalError(f"--scale must be one of {', '.join(iv.SCALES)}, got {scale!r}")
    from medidiff.tasks.denoise import ENSEMBLE_SIZES, METHODS, NOISE_CHOICES

    if method not in METHODS or ensemble not in ENSEMBLE_SIZES or noise not in NOISE_CHOICES:
        raise iv.IntervalError(f"--method, --ensemble, --noise must be one of {'/'.join(METHODS)}, "
                               f"{'/'.join(map(str, ENSEMBLE_SIZES))}, {'/'.join(NOISE_CHOICES)}; "
                               f"got {method!r}, {ensemble!r}, {noise!r}")
    if region_min is not None and not (isinstance(region_min, (int, float)) and -10.0 <= float(region_min) < 1.0):
        raise iv.IntervalError(f"--region-min must be a number in -10..1 (normalised units, the scan spans about "
                               f"-1..1), got {region_min!r}")
    if scale == "posterior" and method != "posterior":
        raise iv.IntervalError("--scale posterior needs --method posterior (the spread of its samples)")
    return lv


def calibrate_intervals_steps(
    model,
    scans: Iterable[Scan | str | Path] | Scan | str | Path,
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    draws: int = 1,
    method: str = "tweedie",
    ensemble: int = 1,
    noise: str = "auto",
    scale: str = "texture",
    samples: int = 8,
    steps: int = 5,
    seed: int = 0,
    device: str = "auto",
    save: bool = True,
    region_min: float | None = None,
) -> Generator[Progress, None, iv.IntervalCalibration]:
    """Calibrate intervals for ``method``/``ensemble`` on clean training-like ``scans``; yields ``Progress``.

    levels: noise std in the model's normalised units; draws: noise draws per scan and level;
    noise: ``"auto"`` (from the scans' modality) or a noise model; scale: ``u`` (see
    :mod:`medidiff.tasks.denoise_intervals`); region_min: score only voxels whose denoised value
    is at least this (normalised units; ``None``: all), stored with the calibration so the stated
    coverage is over the same region of a new scan. The calibration replaces any previous one for the
    same method, ensemble and noise model in ``model.config.intervals``; with ``save`` and a model
    loaded from a folder it is written back there (config.json and a model-card section).
    """
    from medidiff.core.data import expand_inputs
    from medidiff.core.devices import resolve_device
    from medidiff.model_store.registry import resolve_model

    items = [scans] if isinstance(scans, (str, Path, Scan)) else list(scans)
    loaded = expand_inputs(items) if items else []
    lv = _check(loaded, levels, draws, scale, method, ensemble, noise, region_min)
    model = resolve_model(model, device=str(resolve_device(device)))
    if scale == "sure":
        from medidiff.tasks.denoise_selfcheck import available_on

        iv.require_sure(available_on(model.device), f"--scale sure on {model.device}: its intervals",
                        "calibrate with --device cpu")
    noise_model = _noise_model(model, loaded, noise)
    runs = yield from _runs(model, loaded, lv, draws, noise_model, scale, method, ensemble, samples, steps, seed, device,
                            region_min)
    per = len(loaded) * draws
    est, qs, counts = [], [], []
    for li in range(len(lv)):
        group = runs[li * per:(li + 1) * per]
        pooled = np.concatenate([g[1][g[4]] for g in group])
        n = pooled.size
        if n < 100:
            what = "the calibration scans have" if region_min is None else f"--region-min {region_min:g} leaves"
            raise iv.IntervalError(f"{what} {n} voxels at noise level {lv[li]:g} (100 or more needed); "
                                   "give more or larger scans" + ("" if region_min is None else " or lower it"))
        ranks = np.minimum(np.ceil((n + 1) * np.asarray(iv.COVERAGES)) / n, 1.0)  # split-conformal rank
        qs.append(np.quantile(pooled, ranks, method="higher"))
        est.append(float(np.median([g[0] for g in group])))
        counts.append(n)
    order = np.argsort(est)
    est_sorted = np.asarray(est)[order]
    keep = np.concatenate([[True], np.diff(est_sorted) > 0])  # estimates that collapse keep the first
    cal = iv.IntervalCalibration(method, int(ensemble), noise_model, scale, est_sorted[keep],
                                 np.stack(qs)[order][keep], int(min(counts)), len(loaded), int(draws), int(seed),
                                 tuple(_source(s, k) for k, s in enumerate(loaded))[:MAX_SOURCES],
                                 None if region_min is None else float(region_min))
    others = [d for d in (model.config.intervals or {}).get("calibrations", [])
              if (d.get("method"), d.get("ensemble"), d.get("noise_model")) != (method, int(ensemble), noise_model)]
    model.config.intervals = {"rule": "split conformal; interval = x_hat +- q(coverage, level) * u "
                                      "(normalised units; medidiff.tasks.denoise_intervals)",
                              "calibrations": others + [cal.to_dict()]}
    if save and model.path is not None:
        save_intervals(model)
    return cal


calibrate_intervals = plain_twin(calibrate_intervals_steps, "calibrate intervals")


def measure_coverage(model, scans: Sequence[Scan], levels: Sequence[float], coverages: Sequence[float] = (0.8, 0.9, 0.95),
                     *, method: str = "tweedie", ensemble: int = 1, noise: str = "auto", draws: int = 1,
                     seed: int = 1, device: str = "auto", foreground: float | None = 0.1) -> list[dict]:
    """Coverage and mean width (normalised units) of the stored intervals on held-out clean ``scans``.

    One row per level and coverage: ``level`` (simulated), ``estimated`` (the denoiser's),
    ``coverage`` (nominal), ``covered`` (all voxels), ``covered_fg`` (voxels above ``foreground``
    x the scan's max, if given), ``covered_region`` (the calibration's region, judged on the
    denoised value: the coverage the calibration states; equal to ``covered`` without a region),
    ``region_share`` (its share of the voxels), ``covered_sd`` (the spread of ``covered_region``
    over the scans and draws: how far one scan's coverage strays), ``width`` (mean interval
    width, normalised units) and ``width_sigmas`` (the same in noise stds).
    """
    from medidiff.core.progress import run_to_end
    from medidiff.model_store.registry import resolve_model

    model = resolve_model(model, device=device)
    noise_model = _noise_model(model, scans, noise)
    rows = []
    for level in levels:
        cal = iv.find_calibration(model, method, ensemble, noise_model)
        runs = run_to_end(_runs(model, list(scans), [float(level)], draws, noise_model, cal.scale, method, ensemble,
                                8, 5, seed, device, cal.region_min))
        fg = []
        for k, scan in enumerate(scans):
            layout = SliceLayout.for_model(model, scan)
            items = layout.to_items(scan.array)
            mask = items > foreground * float(items.max()) if foreground is not None else np.ones(items.shape, bool)
            fg.extend([mask.ravel()] * draws)
        for c in coverages:
            cov, cov_fg, cov_reg, share, width, width_s = [], [], [], [], [], []
            for (s_est, sc, _x, u, reg), m in zip(runs, fg):
                q = cal.quantile(c, s_est)
                inside = sc <= q
                cov.append(inside.mean())
                cov_fg.append(inside[m].mean())
                cov_reg.append(inside[reg].mean() if reg.any() else float("nan"))
                share.append(reg.mean())
                width.append(float(np.mean(2 * q * u)))
                width_s.append(float(np.mean(2 * q * u)) / s_est)
            rows.append({"level": float(level), "estimated": float(np.median([r[0] for r in runs])), "coverage": float(c),
                         "covered": float(np.mean(cov)), "covered_fg": float(np.mean(cov_fg)),
                         "covered_region": float(np.mean(cov_reg)), "region_share": float(np.mean(share)),
                         "draws": int(draws),
                         "covered_sd": float(np.std(cov_reg)),
                         "width": float(np.mean(width)), "width_sigmas": float(np.mean(width_s))})
    return rows


def intervals_section(intervals: dict) -> str:
    """The "Denoising intervals" section of a model card."""
    lines = ["## Denoising intervals", ""]
    for d in intervals.get("calibrations", []):
        cal = iv.IntervalCalibration.from_dict(d)
        lo, hi = cal.levels[0], cal.levels[-1]
        region = "" if cal.region_min is None else f", voxels with a denoised value >= {cal.region_min:g} only"
        lines.append(f"- {cal.method} x{cal.ensemble}, {cal.noise_model} noise, scale {cal.scale}: split-conformal "
                     f"quantiles at noise levels {lo:.3g}-{hi:.3g} (normalised units, {cal.levels.size} levels, "
                     f"{cal.n_voxels:,}+ voxels each{region}, {cal.n_scans} scans x {cal.draws} draws, seed {cal.seed})")
    return "\n".join(lines) + "\n"


def save_intervals(model) -> None:
    """Re-save the model folder atomically with the calibration, extending its card."""
    path = Path(model.path)
    card_path = path / "MODEL_CARD.md"
    section = intervals_section(model.config.intervals)
    card = card_path.read_text() if card_path.is_file() else None
    if card is None:
        from medidiff.core.model import default_model_card

        card = default_model_card(model)
    head, _, tail = card.partition("## Denoising intervals")
    rest = tail[tail.find("\n## "):] if "\n## " in tail else ""
    card = head.rstrip("\n") + "\n\n" + section + rest
    model.save(path, overwrite=True, model_card=card)
