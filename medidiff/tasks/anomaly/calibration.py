"""Threshold calibration on healthy scans, stored in the model (config.json and its card).

The threshold is the ``percentile`` of the anomaly map over the foreground voxels of healthy
scans, so about ``100 - percentile`` % of healthy tissue is flagged. The calibration also keeps
a sorted random sample of those healthy voxel scores (:func:`medidiff.tasks.anomaly.fdr.healthy_sample`),
from which detection with ``fdr=q`` computes conformal p-values, and the same sample of the
scores standardised per scan by each scan's own median and interquartile range
(``healthy_scores_scan_adaptive``, for the default scan-adaptive FDR method; :mod:`.fdr`). All are only valid for the
map settings they were made with, which are stored alongside. For the ``zscore`` and ``ssim``
scores (:mod:`.scores`) the calibration first fits the healthy statistics per bin of
reconstructed intensity on the calibration scans' raw residuals (``score_profile``), then
thresholds the scored maps of the same scans. Given none of ``score``, ``median_size`` and
``smooth_sigma``, a calibration uses :func:`~.options.calibration_defaults` (the z-score,
Gaussian sigma 2, or 3 for a training window of 64 pixels or more, no median: measured better in
``benchmarks/anomaly.py`` and ``benchmarks/anomaly_task.py``).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.core.devices import release_memory
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, plain_twin
from medidiff.core.sampling import sample_seed
from medidiff.errors import InvalidScanError
from medidiff.io import Scan

from . import fdr, ood, scores
from .detect import use_model
from .maps import map_steps, plan_scan, scored_map, tissue_fraction
from .options import (CALIBRATION_DEFAULTS, DEFAULT_SCORE, SCORE_PERCENTILE, AnomalyOptionError, AnomalyOptions,
                      calibration_defaults)

MAX_SOURCES = 20  # calibration scans named in config.json (the count is always complete)
MAX_LEVELS = 200  # calibration scans' (median, scale) kept for the record (the FDR uses the standardised sample)


def calibrate_threshold_steps(
    model: DiffusionModel | str | Path,
    healthy_scans: Iterable[Scan | str | Path] | Scan | str | Path,
    percentile: float = 99.0,
    options: AnomalyOptions | None = None,
    *,
    save: bool = True,
    sample_size: int = fdr.HEALTHY_SAMPLE_SIZE,
    **overrides: Any,
) -> Generator[Progress, None, float]:
    """Threshold = ``percentile`` of the anomaly map over the foreground voxels of healthy scans.

    ``options`` (:class:`AnomalyOptions`, changed by ``overrides``) say how maps are made; fields
    left ``None`` take the defaults (not a previous calibration); when none of ``score``,
    ``median_size``, ``smooth_sigma`` is given, those three are :data:`~.options.CALIBRATION_DEFAULTS`.
    Stored in ``model.config.anomaly``:
    threshold, percentile, method, options, voxel and scan counts, the calibration scans' names and
    ``healthy_scores``, a sorted sample of at most ``sample_size`` healthy voxel scores for FDR masks,
    ``healthy_scores_scan_adaptive``, the same of the scores standardised per scan (and the scans'
    ``healthy_levels``, their median and scale; :func:`.fdr.calibration_tables`),
    and ``profile``, the scans' intensity and fine-structure statistics for the out-of-distribution
    check (:mod:`.ood`); for ``score="zscore"`` or ``"ssim"`` also ``score_profile``, the healthy
    statistics per bin of reconstructed intensity (:func:`.scores.fit_profile`).
    With ``save`` and a model loaded from a folder it is written back to that folder atomically
    (the model card gains an "Anomaly calibration" section). Returns the threshold.
    """
    from medidiff.core.data import expand_inputs

    if not 0 < percentile < 100:
        raise AnomalyOptionError("percentile", f"must be between 0 and 100 (exclusive), got {percentile}")
    if int(sample_size) < 100:
        raise AnomalyOptionError("sample_size", f"must be >= 100 healthy voxels, got {sample_size}")
    opts = (options or AnomalyOptions()).with_(**overrides) if overrides else (options or AnomalyOptions())
    model = use_model(model, opts.device)
    if all(getattr(opts, k) is None for k in CALIBRATION_DEFAULTS):
        opts = opts.with_(**calibration_defaults(model))
    items = [healthy_scans] if isinstance(healthy_scans, (str, Path, Scan)) else list(healthy_scans)
    scans = expand_inputs(items)
    if not scans:
        raise InvalidScanError(None, "no healthy scans to calibrate on")
    settings = opts.resolve(model, use_calibrated=False)
    model.network.eval()
    tissue_level = None
    if model.normaliser.per_scan:  # unit-free maps: anchor each scan on its tissue (see maps)
        tissue_level = float(np.median([tissue_fraction(model, s.array, str(s.meta.get("source_path") or "scan"))
                                        for s in scans]))
    plans = [plan_scan(model, s, settings, opts.batch_size, tissue_level) for s in scans]
    total = sum(p.calls for p in plans)
    values = []
    step = 0
    # a z-score needs the healthy statistics first: map the raw residual, keep the raw parts
    raw = settings if settings.score == DEFAULT_SCORE else replace(settings, score=DEFAULT_SCORE)
    parts: list[dict] = [{} for _ in plans]
    try:
        for k, plan in enumerate(plans):
            amap = yield from map_steps(model, plan, raw, sample_seed(opts.seed, k), opts.batch_size,
                                        step, total, f"scan {k + 1}/{len(scans)} ", parts=parts[k])
            step += plan.calls
            values.append(amap[plan.foreground])
    finally:
        release_memory(model.device)
    score_profile = None
    if settings.score != DEFAULT_SCORE:
        score_profile = fit_score_profile(plans, parts)
        values = [scored_map(p, settings, parts[k], score_profile)[p.foreground] for k, p in enumerate(plans)]
    profile = ood.profile_scans([(p.normaliser.forward(p.stack), p.fg) for p in plans])
    pooled = np.concatenate(values) if values else np.zeros(0)
    if pooled.size == 0:
        raise InvalidScanError(None, "the healthy scans have no foreground voxels to calibrate on")
    threshold = float(np.percentile(pooled, percentile))
    sources = [str(s.meta.get("source_path") or f"scan {k}") for k, s in enumerate(scans)]
    tables = fdr.calibration_tables(values, int(sample_size), seed=opts.seed)
    model.config.anomaly = {
        "threshold": threshold, "percentile": float(percentile), "method": settings.method,
        "options": settings.to_dict(), "n_voxels": int(pooled.size), "n_scans": len(scans), "seed": int(opts.seed),
        "sources": sources[:MAX_SOURCES], "tissue_level": tissue_level,
        "units": "the model's reference intensity units (|x - reconstruction|; see medidiff.tasks.anomaly.maps)",
        "score": f"{SCORE_PERCENTILE:g}th percentile of the map in the foreground",
        "healthy_scores": fdr.encode_scores(tables[fdr.PLAIN]),
        "healthy_scores_scan_adaptive": fdr.encode_scores(tables[fdr.ADAPTIVE]),
        "healthy_levels": tables["levels"][:MAX_LEVELS],
        "profile": profile,
    }
    if score_profile is not None:
        model.config.anomaly["score_profile"] = score_profile
        model.config.anomaly["units"] = f"healthy z-scores ({settings.score}; see medidiff.tasks.anomaly.scores)"
    if save and model.path is not None:
        save_calibration(model)
    return threshold


calibrate_threshold = plain_twin(calibrate_threshold_steps, "calibrate")


def fit_score_profile(plans: list, parts: list[dict]) -> dict[str, Any]:
    """Healthy statistics of the raw parts per bin of mean reconstruction, pooled over the scans' foreground."""
    res, rec, ssim = [], [], []
    for plan, items in zip(plans, parts):
        for i, (r, c, s_) in items.items():
            fg = plan.fg[i]
            res.append(r[fg])
            rec.append(c[fg])
            if s_ is not None:
                ssim.append(s_[fg])
    named = {"residual": np.concatenate(res)}
    if ssim:
        named["ssim"] = np.concatenate(ssim)
    return scores.fit_profile(np.concatenate(rec), named)


def calibration_section(cal: dict[str, Any]) -> str:
    """The "Anomaly calibration" section of a model card."""
    names = ", ".join(Path(s).name for s in cal.get("sources", [])[:5])
    more = " ..." if cal.get("n_scans", 0) > 5 else ""
    lines = [
        "## Anomaly calibration",
        "",
        f"- threshold: {cal['threshold']:.6g} (map units), the {cal['percentile']:g}th percentile of the map over "
        f"{cal['n_voxels']:,} foreground voxels of {cal['n_scans']} healthy scans" + (f" ({names}{more})" if names else ""),
        f"- calibrated with: method {cal['method']}, options {cal['options']}, seed {cal.get('seed', 0)}",
    ]
    if cal.get("healthy_scores_scan_adaptive"):
        n = fdr.decode_scores(cal["healthy_scores_scan_adaptive"]).size
        lines.append(f"- FDR masks (`--fdr q`, default `--fdr-method {fdr.ADAPTIVE}`): conformal p-values of the scan's scores "
                     f"standardised by its own foreground median and interquartile range, against {n:,} sampled healthy voxel scores of the "
                     "calibration scans standardised the same way, then Benjamini-Hochberg over the scan's foreground voxels "
                     f"(`--fdr-method {fdr.PLAIN}`: the unstandardised scores)")
    elif cal.get("healthy_scores"):
        lines.append(f"- FDR masks (`--fdr q`): conformal p-values against {fdr.decode_scores(cal['healthy_scores']).size:,} sampled healthy "
                     "voxel scores, then Benjamini-Hochberg over the scan's foreground voxels")
    return "\n".join(lines) + "\n"


def save_calibration(model: DiffusionModel) -> None:
    """Re-save the model folder atomically with the calibration, keeping (and extending) its card."""
    path = Path(model.path)
    card_path = path / "MODEL_CARD.md"
    card = card_path.read_text() if card_path.is_file() else None
    section = calibration_section(model.config.anomaly)
    if card is not None:
        head = card.split("## Anomaly calibration")[0].rstrip("\n")
        tail = card.split("## Anomaly calibration", 1)[1] if "## Anomaly calibration" in card else ""
        rest = tail[tail.find("\n## "):] if "\n## " in tail else ""  # keep the sections after it
        card = head + "\n\n" + section + (rest if rest else "")
    else:
        from medidiff.core.model import default_model_card

        card = default_model_card(model).rstrip("\n") + "\n\n" + section
    model.save(path, overwrite=True, model_card=card)
