"""The anomaly sidecar: what a map file cannot hold, as JSON next to it (``case1.anomaly.json``).

Written by ``medidiff anomaly`` and read by ``medidiff evaluate anomaly``. Keys: ``score`` (the
scan score), ``threshold`` (the map value above which the mask is set), ``volume_mm3``,
``score_definition``, ``options`` (the map settings), and for an FDR mask ``fdr`` (``q``,
``fdr_method`` (``scan-adaptive`` or ``plain``) and its description, the calibration set, the
assumption, and for the scan-adaptive method the scan's ``scan_level``); callers may add more
(model, input, seed).
Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medidiff.errors import InvalidScanError
from medidiff.io.atomic import atomic_file
from medidiff.io.formats import scan_stem

SUFFIX = ".anomaly.json"

__all__ = ["SUFFIX", "scan_stem", "sidecar_path", "write_sidecar", "read_sidecar"]


def sidecar_path(map_path: str | Path) -> Path:
    """Where the score and threshold of a saved map go: ``case1.nii.gz`` -> ``case1.anomaly.json``."""
    p = Path(map_path)
    return p.with_name(scan_stem(p) + SUFFIX)


def write_sidecar(info: dict[str, Any], map_path: str | Path, overwrite: bool = False) -> Path:
    """Write ``info`` as JSON next to the map (atomically); returns the sidecar's path."""
    path = sidecar_path(map_path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(info, indent=2, default=float) + "\n")
    return path


def read_sidecar(map_path: str | Path) -> dict[str, Any] | None:
    """The sidecar of a map written by :func:`write_sidecar`, or ``None`` when there is none."""
    path = sidecar_path(map_path)
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidScanError(path, f"not a readable anomaly sidecar ({exc})") from None
    if not isinstance(info, dict):
        raise InvalidScanError(path, "not an anomaly sidecar (expected a JSON object)")
    return info
