"""Anomaly detection by reconstruction with a diffusion model trained on healthy scans.

One module per job: :mod:`.options` (the :class:`AnomalyOptions` shared by the task, the CLI
and the napari widget; torch-free), :mod:`.maps` (partial noising, reconstruction, residual
maps: the maths is described there), :mod:`.detect` (map, score and mask of a scan),
:mod:`.calibration` (thresholds and healthy voxel scores from healthy scans, saved into the
model), :mod:`.fdr` (masks with a stated false-discovery rate), :mod:`.ood` (is the scan
like the calibration scans?). The sidecar file format lives
in :mod:`medidiff.io.anomaly_sidecar`.

The names below are imported lazily, so ``from medidiff.tasks.anomaly.options import
AnomalyOptions`` does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "AnomalyOptions": "options", "AnomalyOptionError": "options", "MapSettings": "options",
    "resolve_options": "options", "SCORE_PERCENTILE": "options", "DEFAULT_T_FRACTIONS": "options",
    "DEFAULT_DRAWS": "options", "METHODS": "options", "RECONS": "options", "DIRECTIONS": "options",
    "trained_noise": "options",
    "AnomalyResult": "detect", "detect_anomalies": "detect", "detect_anomalies_steps": "detect",
    "sidecar_info": "detect",
    "calibrate_threshold": "calibration", "calibrate_threshold_steps": "calibration",
    "scan_score": "maps", "OutOfDistributionWarning": "ood",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
