"""The denoise sidecar: what the denoised file cannot hold, as JSON next to it (``clean.denoise.json``).

Written by ``medidiff denoise`` whenever its self-check ran (the default): the estimated gain
(Monte-Carlo SURE, no clean data; ``medidiff.tasks.denoise_selfcheck``) with its MSE, noise
variance, region, which denoiser it describes and the warning given, if any; and how the scan was
denoised (model, method, noise model, noise std, time). For a folder IN the sidecars sit next to
each output scan inside OUT (scan readers skip ``.json`` files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.io.atomic import atomic_file
from medidiff.io.formats import scan_stem

SUFFIX = ".denoise.json"

__all__ = ["SUFFIX", "sidecar_path", "sidecar_info", "write_sidecar"]


def sidecar_path(out: str | Path) -> Path:
    """``clean.nii.gz`` -> ``clean.denoise.json`` (a DICOM folder ``out/`` -> ``out.denoise.json``)."""
    p = Path(out)
    return p.with_name(scan_stem(p) + SUFFIX)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    return value


def sidecar_info(result, *, model: str, source: str, method: str) -> dict[str, Any]:
    """The sidecar's content for one denoised scan (``result``: a ``DenoiseResult`` with a self-check)."""
    check = result.self_check
    return {"input": source, "model": model, "method": method, "noise_model": result.noise_model,
            "sigma": [float(s) for s in np.atleast_1d(result.sigma)],
            "timestep": [float(t) for t in np.atleast_1d(result.timestep)],
            "self_check": None if check is None else {**_plain(check.to_dict()), "resolved": check.resolved,
                                                       "line": check.line(), "method": "Monte-Carlo SURE"}}


def write_sidecar(info: dict[str, Any], out: str | Path) -> Path:
    """Write ``info`` as JSON next to ``out`` (atomically, replacing a staged one); returns its path."""
    path = sidecar_path(out)
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return path
