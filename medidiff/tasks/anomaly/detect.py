"""Detection: the anomaly map, score and mask of one scan (the task and its generator twin).

The scan score is the 99th percentile of the map inside the foreground (robust to a few hot
voxels, yet driven by a lesion of about 1% of the tissue). The mask is ``map > threshold``,
where the threshold is calibrated on healthy scans (:mod:`.calibration`, stored in the model's
config.json) or given; or, with ``fdr=q``, the Benjamini-Hochberg mask of conformal p-values
against the calibration's healthy voxels (:mod:`.fdr`), whose expected share of false voxels
is at most ``q``; by default scan-adaptive (the scan's scores and the calibration's standardised
per scan by their own median and interquartile range, so a scan reconstructed worse than the
calibration scans keeps its FDR). A scan unlike the calibration scans (:mod:`.ood`) gets a one-line
:class:`~.ood.OutOfDistributionWarning` and ``result.ood["out_of_distribution"]``.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import warnings

import numpy as np

from medidiff.core.devices import release_memory, resolve_device
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, plain_twin
from medidiff.errors import InvalidScanError, ModelError
from medidiff.io import Scan

from . import fdr as fdr_maths
from . import ood as ood_check
from .maps import map_steps, plan_scan, scan_score
from .options import DEFAULT_SCORE, SCORE_PERCENTILE, AnomalyOptions, MapSettings


@dataclass
class AnomalyResult:
    """An anomaly map and mask with the input's geometry, the scan score and the threshold used.

    ``score`` is the 99th percentile of ``map`` inside the foreground; ``volume_mm3`` the volume
    of ``mask`` (voxel count times voxel volume); ``foreground`` the voxels that were scored;
    ``threshold`` the map value above which the mask is set (for an FDR mask, the one the
    Benjamini-Hochberg procedure chose for this scan); ``fdr`` what the sidecar records of an
    FDR mask (``None`` otherwise); ``ood`` the out-of-distribution check (:func:`.ood.check`:
    ``ood["out_of_distribution"]`` is true when the scan is unlike the calibration scans, with
    the reasons and statistics; ``None`` for a model without a calibration).
    """

    map: Scan
    mask: Scan
    score: float
    threshold: float
    volume_mm3: float = 0.0
    foreground: Scan | None = None
    options: dict[str, Any] = field(default_factory=dict)
    fdr: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None

    @property
    def out_of_distribution(self) -> bool:
        """Whether the scan looked unlike the model's healthy calibration scans (see ``ood``)."""
        return bool(self.ood and self.ood.get("out_of_distribution"))


def use_model(model: DiffusionModel | str | Path, device: str | None) -> DiffusionModel:
    """A loaded model as given (moved only when ``device`` is given), or a name/folder loaded on ``device``."""
    if isinstance(model, DiffusionModel):
        if device is not None:
            model.to(resolve_device(device))
        return model
    from medidiff.model_store.registry import resolve_model

    return resolve_model(model, device=resolve_device(device or "auto"))


def _calibration(model: DiffusionModel, settings: MapSettings, need: str) -> dict[str, Any]:
    """The model's calibration, checked to be there and made with ``settings``."""
    cal = model.config.anomaly
    where = model.path or "this model"
    if "threshold" not in cal:
        raise ModelError(
            f"{where}: no calibrated anomaly threshold; run `medidiff anomaly calibrate MODEL HEALTHY_DIR` "
            f"on healthy scans first, or pass {need}"
        )
    stored = cal.get("options", {})
    mine = settings.to_dict()
    differ = [k for k, v in mine.items() if k in stored and stored[k] != v]
    if differ:
        detail = ", ".join(f"{k}={mine[k]!r} (calibrated: {stored[k]!r})" for k in differ)
        raise ModelError(
            f"{where}: the calibration was made with other options: {detail}; "
            f"use the calibrated options, recalibrate with these (`medidiff anomaly calibrate`), or pass {need}"
        )
    return cal


def _ood(model: DiffusionModel, settings: MapSettings, plan: Any, amap: np.ndarray, source: str) -> dict[str, Any] | None:
    """The OOD check against the calibration (residual level only if it was made with ``settings``); warns."""
    cal = model.config.anomaly or {}
    if "threshold" not in cal:
        return None
    same = all(cal.get("options", {}).get(k, v) == v for k, v in settings.to_dict().items())
    healthy = fdr_maths.decode_scores(cal["healthy_scores"]) if same and cal.get("healthy_scores") else None
    stack = plan.normaliser.forward(plan.stack)
    info = ood_check.check(amap, plan.foreground, stack, plan.fg, healthy, cal.get("profile"),
                           signed=settings.score != DEFAULT_SCORE)
    if info["out_of_distribution"]:
        name = Path(model.path).name if model.path else "the model"
        warnings.warn(ood_check.warning_text(source, name, info), ood_check.OutOfDistributionWarning, stacklevel=3)
    return info


def _fdr_table(model: DiffusionModel, settings: MapSettings, method: str | None) -> tuple[np.ndarray, str]:
    """The calibration's healthy sample for the FDR method (``None``: the default) and the method used.

    A calibration made before the scan-adaptive method keeps only the plain sample: the default
    then falls back to ``plain`` (recorded in the sidecar); asking for ``scan-adaptive`` is refused.
    """
    cal = _calibration(model, settings, "--threshold VALUE instead of --fdr")
    where = model.path or "this model"
    if not cal.get("healthy_scores"):
        raise ModelError(f"{where}: its calibration keeps no healthy voxel scores, which --fdr "
                         "needs; recalibrate it with `medidiff anomaly calibrate MODEL HEALTHY_DIR`")
    use = method or fdr_maths.DEFAULT_METHOD
    if use == fdr_maths.ADAPTIVE and not cal.get("healthy_scores_scan_adaptive"):
        if method is not None:
            raise ModelError(f"{where}: its calibration predates --fdr-method {fdr_maths.ADAPTIVE}; recalibrate it with "
                             f"`medidiff anomaly calibrate MODEL HEALTHY_DIR`, or pass --fdr-method {fdr_maths.PLAIN}")
        use = fdr_maths.PLAIN
    key = "healthy_scores_scan_adaptive" if use == fdr_maths.ADAPTIVE else "healthy_scores"
    return fdr_maths.decode_scores(cal[key]), use


def detect_anomalies_steps(
    model: DiffusionModel | str | Path,
    scan: Scan,
    options: AnomalyOptions | None = None,
    **overrides: Any,
) -> Generator[Progress, None, AnomalyResult]:
    """Anomaly map, mask and score of ``scan``; yields one ``Progress`` per network call.

    ``model`` is a loaded model, a built-in or user model name, or a model folder. ``options``
    is an :class:`AnomalyOptions` (see it for every option); keyword ``overrides`` change single
    fields of it (``detect_anomalies(m, scan, threshold=30.0, timesteps=(250,))``). Map options
    left ``None`` take the values the model was calibrated with, else the defaults (ddpm, 30% and
    45% of the schedule 3 draws each -- 15% and 30% for a model trained on windows of 64 pixels or
    more, :func:`.options.default_t_fractions` -- Tweedie, median 3, foreground, both). ``threshold="auto"``
    needs a calibration made with the same map settings; so does ``fdr``. Same ``seed`` -> same
    map, whatever ``batch_size``.
    """
    if not isinstance(scan, Scan):
        raise InvalidScanError(None, f"detect_anomalies expects a medidiff.io.Scan (see load_scan), got {type(scan).__name__}")
    opts = (options or AnomalyOptions()).with_(**overrides) if overrides else (options or AnomalyOptions())
    model = use_model(model, opts.device)
    settings = opts.resolve(model)
    table, fdr_method = _fdr_table(model, settings, opts.fdr_method) if opts.fdr is not None else (None, None)
    if table is None:
        thr = float(_calibration(model, settings, "a threshold (--threshold VALUE)")["threshold"]) \
            if opts.threshold == "auto" else float(opts.threshold)
    profile = None
    if settings.score != DEFAULT_SCORE:
        profile = _calibration(model, settings, "--score residual").get("score_profile")
        if profile is None:
            raise ModelError(f"{model.path or 'this model'}: --score {settings.score} needs healthy statistics the "
                             f"calibration does not keep; recalibrate with `medidiff anomaly calibrate MODEL HEALTHY_DIR "
                             f"--score {settings.score}`")
    model.network.eval()
    plan = plan_scan(model, scan, settings, opts.batch_size, model.config.anomaly.get("tissue_level"))
    try:
        amap = yield from map_steps(model, plan, settings, opts.seed, opts.batch_size, profile=profile)
    finally:
        release_memory(model.device)
    fg = plan.foreground
    ood_info = _ood(model, settings, plan, amap, str(scan.meta.get("source_path") or "the scan"))
    score = scan_score(amap, fg, SCORE_PERCENTILE)
    fdr_info = None
    if table is not None:
        mask, thr = fdr_maths.bh_mask(amap, fg, table, opts.fdr, fdr_method)
        cal = model.config.anomaly
        fdr_info = {"q": opts.fdr, "fdr_method": fdr_method, "method": fdr_maths.DESCRIPTIONS[fdr_method], "threshold": thr,
                    "calibration": {"n_scans": cal.get("n_scans"), "n_voxels": cal.get("n_voxels"),
                                    "healthy_scores": len(table), "sources": cal.get("sources", []),
                                    "seed": cal.get("seed")},
                    "assumption": fdr_maths.ASSUMPTIONS[fdr_method]}
        if fdr_method == fdr_maths.ADAPTIVE:
            loc, scale = fdr_maths.scan_level(amap[fg])
            fdr_info["scan_level"] = {"median": loc, "scale": scale}
    else:
        mask = (amap > thr) & fg
    volume = float(mask.sum() * np.prod(scan.spacing))
    info = {"score": score, "threshold": thr, "volume_mm3": volume, "method": settings.method,
            "score_definition": f"{SCORE_PERCENTILE:g}th percentile of the map in the foreground"}
    if fdr_info is not None:
        info["fdr"] = opts.fdr
        info["fdr_method"] = fdr_method
    if ood_info is not None and ood_info["out_of_distribution"]:
        info["out_of_distribution"] = ood_info["reasons"]
    meta = {**scan.meta, "anomaly": info}
    return AnomalyResult(
        map=scan.with_array(amap.astype(np.float32), meta=meta),
        mask=scan.with_array(mask.astype(np.float32), meta={**scan.meta, "anomaly": info, "label": True}),
        score=score, threshold=thr, volume_mm3=volume,
        foreground=scan.with_array(fg.astype(np.float32)), options=settings.to_dict(), fdr=fdr_info,
        ood=ood_info,
    )


detect_anomalies = plain_twin(detect_anomalies_steps, "anomaly")


def sidecar_info(result: AnomalyResult, **extra: Any) -> dict[str, Any]:
    """What :func:`medidiff.io.anomaly_sidecar.write_sidecar` writes for ``result`` (plus ``extra``)."""
    info: dict[str, Any] = {"score": result.score, "threshold": result.threshold, "volume_mm3": result.volume_mm3,
                            "score_definition": f"{SCORE_PERCENTILE:g}th percentile of the map in the foreground",
                            "options": result.options}
    if result.fdr is not None:
        info["fdr"] = result.fdr
    if result.ood is not None:
        info["ood"] = result.ood
    return {**info, **extra}
