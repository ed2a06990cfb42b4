"""The options of anomaly detection, in one object shared by the task, the CLI and the napari widget.

:class:`AnomalyOptions` is what a user chooses: every field left ``None`` means "as the model
was calibrated, else the default". :meth:`AnomalyOptions.resolve` turns it, for one model, into
:class:`MapSettings`: the concrete settings that make a map, stored with a calibration so that an
"auto" threshold is only used with the settings it was measured with.

Every check raises :class:`AnomalyOptionError` (a ``MedidiffError``: one line naming the option,
exit 2 on the command line). This module is torch-free so the widget can import it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from medidiff.choices import AnomalyMethod, AnomalyScore, Direction, FdrMethod, Reconstruction, TrainingNoise
from medidiff.errors import MedidiffError

METHODS = AnomalyMethod.values()
RECONS = Reconstruction.values()
DIRECTIONS = Direction.values()
SCORES = AnomalyScore.values()
FDR_METHODS = FdrMethod.values()
DEFAULT_SCORE = AnomalyScore.RESIDUAL.value
SCORE_PERCENTILE = 99.0
# default noise levels as fractions of the schedule length, each drawn DEFAULT_DRAWS times with fresh
# noise; they depend on how much context the model sees (its training window). Higher t hides a
# lesion under more noise, so the model paints healthy tissue over it; but one noise draw leaves a
# grainy residual whose false positives move with the seed, and averaging 3 independent draws per
# level steadies it (6 draws did not help on the 64 x 64 mr2d). Windows under WIDE_WINDOW pixels a
# side (the 32 x 32 mr2d, the test suite's tiny model): 0.30/0.45 (300 and 450 of a 1000-step DDPM);
# on benchmarks/anomaly.py it beat 0.15/0.30 one draw each on every metric (voxel AUPRC 0.25 -> 0.40)
# at 6 network calls per slice, and on the tiny 32 x 32 test model 0.15/0.30 breaks the FDR masks of
# noisier scans. A window of WIDE_WINDOW or more (the 64 x 64 mr2d) reconstructs a lesion's healthy
# surroundings from context even at low noise, while the lesion's own contrast survives it:
# 0.15/0.30 x 3 with sigma 3 gave validation AUPRC bright / iso 0.648 / 0.113 vs 0.641 / 0.066 for
# 0.30/0.45 x 3 with sigma 2 (test 0.791 / 0.319 vs 0.804 / 0.102; benchmarks/anomaly_task.py,
# benchmarks/README.md "Anomaly map settings for the 64 x 64 mr2d"), at the same 6 calls per slice;
# lower still (0.10/0.20) broke the FDR masks there too.
DEFAULT_T_FRACTIONS = (0.30, 0.45)
WIDE_T_FRACTIONS = (0.15, 0.30)
WIDE_WINDOW = 64  # pixels a side of the training window from which WIDE_T_FRACTIONS are the default
# what a calibration uses when none of score, median_size, smooth_sigma is given
# (:func:`calibration_defaults`): the healthy z-score smoothed by a Gaussian inside the tissue, sigma 2
# voxels for windows under WIDE_WINDOW, 3 for wider ones. On benchmarks/anomaly.py (32 x 32 mr2d) the
# z-score + Gaussian 2 beat the residual + median 3 on validation (AUPRC bright 0.587 vs 0.483, iso
# 0.054 vs 0.032) and test (0.640 vs 0.585, 0.040 vs 0.034) and, with the scan-adaptive FDR method,
# keeps its FDR masks; on the tiny 32 x 32 test model sigma 3 lets a strong lesion spill false voxels
# past its edge (30 % of an FDR 0.1 mask). With the 64 x 64 mr2d sigma 3 beat 2 and 4 on validation
# at t = 0.20/0.30 (AUPRC bright / iso 0.651 / 0.104 vs 0.619 / 0.093 and 0.619 / 0.102) and at
# 0.15/0.30 (0.648 / 0.113 vs 0.602 / 0.097, and sigma 2 flagged 2 of 6 healthy slices at q = 0.1).
# ``ssim`` (z-score plus structural z-score) finds iso-intense lesions best there (validation iso
# 0.190 at 0.20/0.30, sigma 3) but loses bright ones (0.554) and breaks the FDR masks (FDP 0.19 /
# 0.34 at q = 0.1), so it is not the default. Detection then uses the calibrated options; a map
# without a calibration (an explicit threshold) stays the plain residual, which needs no healthy
# statistics.
CALIBRATION_DEFAULTS = {"score": AnomalyScore.ZSCORE.value, "median_size": 0, "smooth_sigma": 2.0}
WIDE_SMOOTH_SIGMA = 3.0  # the calibration default's sigma for a window of WIDE_WINDOW or more
DEFAULT_DRAWS = 3
# the noise a model was trained with is ``config.training["noise"]``; models without it are white-noise models
WHITE_NOISE = TrainingNoise.WHITE.value  # "white"; older records said "gaussian"


MAX_DDIM_STEPS = 1000  # more steps than a 1000-step schedule has times is no reconstruction
MAX_MEDIAN = 31  # voxels; a wider median filter erases lesions
MAX_BATCH = 4096
MAX_SIGMA = 10.0  # voxels; a wider Gaussian blurs a lesion into its surroundings


class AnomalyOptionError(MedidiffError, ValueError):
    """An anomaly option out of range or unfit for the model (a ``ValueError`` too, for older callers)."""

    def __init__(self, option: str, problem: str) -> None:
        self.option = option
        super().__init__(f"--{option.replace('_', '-')}: {problem}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if str(value) not in allowed:
        raise AnomalyOptionError(name, f"unknown value {value!r}; choose one of {', '.join(allowed)}")
    return str(value)


def _int(name: str, value: Any, low: int, high: int | None = None) -> int | None:
    if value is None:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value == int(value)
    if not ok or int(value) < low or (high is not None and int(value) > high):
        span = f"between {low} and {high}" if high is not None else f">= {low}"
        raise AnomalyOptionError(name, f"must be a whole number {span}, got {value!r}")
    return int(value)


def _number(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise AnomalyOptionError(name, f"must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise AnomalyOptionError(name, f"must be finite, got {value!r}")
    return v


@dataclass(frozen=True)
class MapSettings:
    """The concrete settings of one map (what a calibration stores under ``options``)."""

    method: str
    timesteps: tuple[float, ...]
    recon: str
    ddim_steps: int
    patch_size: tuple[int, ...] | None
    median_size: int
    foreground: bool
    direction: str
    score: str = DEFAULT_SCORE
    smooth_sigma: float = 0.0
    mirror: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, in the form stored in ``config.json`` (lists, not tuples)."""
        d = asdict(self)
        d["timesteps"] = [float(t) for t in self.timesteps]
        d["patch_size"] = None if self.patch_size is None else [int(p) for p in self.patch_size]
        return d

    @property
    def calls_per_reconstruction(self) -> int:
        return 1 if self.recon == Reconstruction.TWEEDIE else self.ddim_steps


MAP_FIELDS = tuple(f.name for f in fields(MapSettings))


@dataclass(frozen=True)
class AnomalyOptions:
    """Everything a user chooses about anomaly detection; ``None`` = as calibrated, else the default.

    method:      ``ddpm`` (Gaussian noise), ``simplex`` (AnoDDPM simplex noise; only for a model
                 trained with simplex noise) or ``patched`` (pDDPM: one noised patch at a time);
    timesteps:   noise levels (times of the model's schedule); default 30% and 45% of its length
                 (15% and 30% for a training window of 64 pixels a side or more), 3 draws
                 each; a time given twice is drawn twice with fresh noise;
    recon:       ``tweedie`` (one network call per time) or ``ddim`` (``ddim_steps`` calls);
    patch_size:  the noised patch of ``patched`` (default a quarter of the side);
    median_size: median filter of the map (0 or 1: none); foreground: score Otsu tissue only;
    direction:   ``both`` (|x - recon|), ``bright`` or ``dark`` (one-signed residual);
    score:       ``residual`` (the residual r), ``zscore`` ((r - mu) / sd, mu and sd of healthy
                 calibration residuals at the same reconstructed intensity) or ``ssim`` (that
                 z-score plus the z-score of 1 - local SSIM(x, reconstruction)); see
                 :mod:`medidiff.tasks.anomaly.scores`; the last two need a calibration; a
                 calibration given none of score, median_size, smooth_sigma uses
                 :func:`calibration_defaults` (zscore, no median, Gaussian sigma 2; 3 for a
                 training window of 64 pixels a side or more);
    smooth_sigma: Gaussian smoothing of the map inside the tissue after the median filter,
                 ``G * (m 1_fg) / G * 1_fg`` (sigma in voxels; 0: none, the default);
    mirror:      weight ``w`` in [0, 1] of the left-right mirror comparison ``m - w m(mirrored)``
                 about the tissue's mid-line, after smoothing (0: none, the default; for
                 left-right symmetric anatomy such as axial brain slices, whose columns must run
                 left-right; see :mod:`medidiff.tasks.anomaly.symmetry`);
    threshold:   ``"auto"`` (the calibrated threshold) or a number in the map's units;
    fdr:         instead of a threshold, a mask whose expected share of false voxels is at most
                 ``fdr`` (conformal p-values against the calibration's healthy voxels, then
                 Benjamini-Hochberg; see :mod:`medidiff.tasks.anomaly.fdr`);
    fdr_method:  how ``fdr`` compares the scan with the calibration: ``scan-adaptive`` (the
                 default: each scan's scores standardised by its own median and interquartile
                 range first, so a scan reconstructed worse than the calibration scans keeps its
                 FDR) or ``plain``;
    batch_size:  slices (or patches) per network call; seed: same seed, same map;
    device:      ``None`` keeps a loaded model where it is (a name or folder loads on ``auto``).
    """

    method: str | None = None
    timesteps: tuple[float, ...] | None = None
    recon: str | None = None
    ddim_steps: int | None = None
    patch_size: tuple[int, ...] | int | None = None
    median_size: int | None = None
    foreground: bool | None = None
    direction: str | None = None
    score: str | None = None
    smooth_sigma: float | None = None
    mirror: float | None = None
    threshold: str | float = "auto"
    fdr: float | None = None
    fdr_method: str | None = None
    batch_size: int = 8
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "method", _choice("method", self.method, METHODS))
        set_(self, "recon", _choice("recon", self.recon, RECONS))
        set_(self, "direction", _choice("direction", self.direction, DIRECTIONS))
        set_(self, "score", _choice("score", self.score, SCORES))
        set_(self, "fdr_method", _choice("fdr_method", self.fdr_method, FDR_METHODS))
        if self.smooth_sigma is not None:
            sig = _number("smooth_sigma", self.smooth_sigma)
            if not 0 <= sig <= MAX_SIGMA:
                raise AnomalyOptionError("smooth_sigma", f"must be between 0 and {MAX_SIGMA:g} voxels, got {self.smooth_sigma!r}")
            set_(self, "smooth_sigma", sig)
        if self.mirror is not None:
            w = _number("mirror", self.mirror)
            if not 0 <= w <= 1:
                raise AnomalyOptionError("mirror", f"must be a weight between 0 and 1 (0: off), got {self.mirror!r}")
            set_(self, "mirror", w)
        set_(self, "ddim_steps", _int("ddim_steps", self.ddim_steps, 1, MAX_DDIM_STEPS))
        set_(self, "median_size", _int("median_size", self.median_size, 0, MAX_MEDIAN))
        set_(self, "batch_size", _int("batch_size", self.batch_size, 1, MAX_BATCH))
        set_(self, "seed", _int("seed", self.seed, 0))
        if self.timesteps is not None:
            ts = [self.timesteps] if isinstance(self.timesteps, (int, float, str)) else list(self.timesteps)
            if not ts:
                raise AnomalyOptionError("timesteps", "at least one noise time is needed")
            set_(self, "timesteps", tuple(_number("timesteps", t) for t in ts))
        if self.patch_size is not None:
            ps = (self.patch_size,) if isinstance(self.patch_size, (int, float)) else tuple(self.patch_size)
            set_(self, "patch_size", tuple(_int("patch_size", p, 2) for p in ps))
        if self.foreground is not None:
            set_(self, "foreground", bool(self.foreground))
        if isinstance(self.threshold, str) and self.threshold == "auto":
            pass
        else:
            set_(self, "threshold", _number("threshold", self.threshold))
        if self.fdr is not None:
            q = _number("fdr", self.fdr)
            if not 0 < q < 1:
                raise AnomalyOptionError("fdr", f"must be a rate between 0 and 1 (exclusive), e.g. 0.05; got {self.fdr!r}")
            if self.threshold != "auto":
                raise AnomalyOptionError("fdr", "give a --threshold or an --fdr rate, not both")
            set_(self, "fdr", q)

    def with_(self, **changes: Any) -> "AnomalyOptions":
        """A copy with some fields changed (unknown names are an error naming them)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise AnomalyOptionError(unknown[0], f"not an anomaly option; the options are {', '.join(sorted(known))}")
        return replace(self, **changes)

    def map_fields(self) -> dict[str, Any]:
        """The map-making fields that were given (not ``None``)."""
        return {k: getattr(self, k) for k in MAP_FIELDS if getattr(self, k) is not None}

    def resolve(self, model: Any, *, use_calibrated: bool = True) -> MapSettings:
        """The concrete settings for ``model``: given > calibrated (``use_calibrated``) > default.

        Checks what depends on the model: times inside its schedule, patch sizes of its
        dimensionality, and ``simplex`` only on a model trained with simplex noise.
        """
        calibrated = dict(model.config.anomaly.get("options", {})) if use_calibrated else {}
        values = {k: calibrated.get(k) for k in MAP_FIELDS}
        values.update(self.map_fields())
        T = model.schedule.T
        dims = model.config.spatial_dims
        fractions = default_t_fractions(model)
        ts = values["timesteps"] or [round(f * T) for f in fractions for _ in range(DEFAULT_DRAWS)]
        ts = [ts] if isinstance(ts, (int, float)) else list(ts)
        for t in ts:
            if not 0 <= float(t) < T:
                raise AnomalyOptionError("timesteps", f"{t:g} is outside this model's schedule [0, {T}); "
                                         f"the default is {', '.join(f'{f * T:g}' for f in fractions)}")
        ps = values["patch_size"]
        if ps is not None:
            ps = tuple(int(p) for p in ps) * (dims if len(ps) == 1 else 1)
            if len(ps) != dims:
                raise AnomalyOptionError("patch_size", f"{values['patch_size']} must be one size or {dims} sizes for this {dims}D model")
        settings = MapSettings(
            method=values["method"] or AnomalyMethod.DDPM.value,
            timesteps=tuple(float(t) for t in ts),
            recon=values["recon"] or Reconstruction.TWEEDIE.value,
            ddim_steps=int(values["ddim_steps"] or 3),
            patch_size=ps,
            median_size=3 if values["median_size"] is None else int(values["median_size"]),
            foreground=True if values["foreground"] is None else bool(values["foreground"]),
            direction=values["direction"] or Direction.BOTH.value,
            score=values["score"] or DEFAULT_SCORE,
            smooth_sigma=float(values["smooth_sigma"] or 0.0),
            mirror=float(values["mirror"] or 0.0),
        )
        check_method(model, settings.method)
        return settings


def wide_window(model: Any) -> bool:
    """Whether ``model`` was trained on windows of at least :data:`WIDE_WINDOW` pixels a side."""
    size = getattr(model.config, "image_size", None)
    sides = [size] if isinstance(size, (int, float)) else list(size or [])
    return bool(sides) and min(int(n) for n in sides) >= WIDE_WINDOW


def default_t_fractions(model: Any) -> tuple[float, ...]:
    """The default noise levels of ``model``: :data:`WIDE_T_FRACTIONS` for a wide window, else the others."""
    return WIDE_T_FRACTIONS if wide_window(model) else DEFAULT_T_FRACTIONS


def calibration_defaults(model: Any) -> dict[str, Any]:
    """What a calibration of ``model`` given none of score, median_size, smooth_sigma uses."""
    wide = {"smooth_sigma": WIDE_SMOOTH_SIGMA} if wide_window(model) else {}
    return {**CALIBRATION_DEFAULTS, **wide}


def trained_noise(model: Any) -> str:
    """The noise ``model`` was trained with (``config.training["noise"]``; unrecorded: white Gaussian)."""
    name = str((model.config.training or {}).get("noise") or WHITE_NOISE)
    return WHITE_NOISE if name == "gaussian" else name


def check_method(model: Any, method: str) -> None:
    """Refuse ``simplex`` on a model that was not trained with simplex noise (one line)."""
    if method == AnomalyMethod.SIMPLEX and trained_noise(model) != TrainingNoise.SIMPLEX.value:
        where = getattr(model, "path", None) or "this model"
        raise AnomalyOptionError(
            "method", f"simplex needs a model trained with simplex noise, but {where} was trained with "
            f"{trained_noise(model)} noise; use --method ddpm or patched, or train with --noise simplex")


def resolve_options(model: Any, options: AnomalyOptions | None = None, *, use_calibrated: bool = True,
                    **fields_: Any) -> MapSettings:
    """The :class:`MapSettings` of ``options`` (changed by ``fields_``) for ``model``."""
    opts = (options or AnomalyOptions()).with_(**fields_) if fields_ else (options or AnomalyOptions())
    return opts.resolve(model, use_calibrated=use_calibrated)


def parse_timesteps(text: str | None) -> tuple[float, ...] | None:
    """``"300,450"`` -> ``(300.0, 450.0)``; one-line error naming ``--timesteps`` otherwise."""
    if text is None:
        return None
    try:
        ts = tuple(float(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise AnomalyOptionError("timesteps", f"expected numbers separated by commas, got {text!r}") from None
    if not ts:
        raise AnomalyOptionError("timesteps", f"expected numbers separated by commas, got {text!r}")
    return ts


def parse_threshold(text: str | float) -> str | float:
    """``"auto"`` or a number; one-line error naming ``--threshold`` otherwise."""
    if isinstance(text, str) and text == "auto":
        return "auto"
    return _number("threshold", text)


def parse_patch_size(text: str | None) -> tuple[int, ...] | None:
    """``"16"`` or ``"16,16"`` -> sizes; one-line error naming ``--patch-size`` otherwise."""
    if text is None:
        return None
    try:
        return tuple(int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise AnomalyOptionError("patch_size", f"expected whole numbers separated by commas, got {text!r}") from None


__all__ = ["AnomalyOptions", "AnomalyOptionError", "MapSettings", "resolve_options", "trained_noise",
           "check_method", "parse_timesteps", "parse_threshold", "parse_patch_size", "SCORE_PERCENTILE",
           "DEFAULT_T_FRACTIONS", "WIDE_T_FRACTIONS", "WIDE_WINDOW",
           "default_t_fractions", "calibration_defaults", "wide_window", "WIDE_SMOOTH_SIGMA", "DEFAULT_DRAWS",
           "SCORES", "DEFAULT_SCORE", "FDR_METHODS", "CALIBRATION_DEFAULTS"]
