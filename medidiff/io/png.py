"""PNG / JPEG (and other Pillow images) <-> ``Scan``: 2D grayscale, spacing 1.

Colour images are turned into grayscale with a warning. PNGs written by medidiff carry a
``medidiff`` text chunk with the value range, spacing and modality, so that reading one
back undoes the 8/16-bit scaling (up to the quantisation step).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.errors import InvalidScanError
from medidiff.io._util import rgb_to_gray, warn
from medidiff.io.formats import IMAGE_SUFFIXES as PNG_SUFFIXES  # noqa: F401  (one home: io.formats)
from medidiff.io.limits import check_declared_size
from medidiff.io.scan import Scan, affine_from_spacing

TEXT_KEY = "medidiff"


def read_png(path: Path) -> Scan:
    """A 2D float32 image; colour converted to gray (with a warning)."""
    from PIL import Image

    with Image.open(str(path)) as img:
        bands = len(img.getbands())
        check_declared_size(path, (img.height, img.width, bands) if bands > 1 else (img.height, img.width), np.uint8, what="image")
        img.load()  # decode now, so truncated files fail here
        mode = img.mode
        info = dict(img.info)
        if mode in ("P", "PA"):
            img = img.convert("RGBA" if ("transparency" in info or mode == "PA") else "RGB")
            mode = img.mode
        elif mode == "CMYK" or mode == "YCbCr":
            img = img.convert("RGB")
            mode = "RGB"
        elif mode == "1":
            img = img.convert("L")
            mode = "L"
        arr = np.asarray(img)
    if arr.size == 0:
        raise InvalidScanError(path, f"has a zero-size axis (shape {arr.shape})")
    if mode == "LA":
        warn(path, "gray + alpha image: alpha channel ignored")
        arr = arr[..., 0]
    elif arr.ndim == 3:
        arr = rgb_to_gray(arr, path, what=f"{mode} image")
    array = arr.astype(np.float32)

    spacing: tuple[float, ...] = (1.0, 1.0)
    modality, meta = "OT", {"format": "png", "unit": "pixel", "mode": mode}
    stored = info.get(TEXT_KEY)
    if stored:
        try:
            extra: dict[str, Any] = json.loads(stored)
        except (TypeError, ValueError):
            extra = {}
        if "value_min" in extra and "value_max" in extra and extra.get("code_max"):
            lo, hi = float(extra["value_min"]), float(extra["value_max"])
            array = (lo + array.astype(np.float64) * ((hi - lo) / float(extra["code_max"]))).astype(np.float32)
        if isinstance(extra.get("spacing"), list) and len(extra["spacing"]) == 2:
            spacing = tuple(float(s) for s in extra["spacing"])
        modality = str(extra.get("modality") or modality)
        if extra.get("unit"):
            meta["unit"] = str(extra["unit"])
        if extra.get("synthetic"):
            meta["synthetic"] = True
    return Scan(array=array, spacing=spacing, affine=affine_from_spacing(spacing), modality=modality, meta=meta)


def png_codes(values: np.ndarray) -> tuple[np.ndarray, dict[str, Any] | None]:
    """8/16-bit codes for ``values``; the scaling (or None when exact) to undo on reading."""
    lo, hi = float(values.min()), float(values.max())
    integral = bool(np.all(np.equal(np.mod(values, 1), 0)))
    if integral and lo >= 0 and hi <= 255:
        return values.astype(np.uint8), None
    if integral and lo >= 0 and hi <= 65535:
        return values.astype(np.uint16), None
    code_max = 65535
    if hi == lo:
        codes = np.zeros(values.shape, dtype=np.uint16)
    else:
        codes = np.clip(np.rint((values.astype(np.float64) - lo) / (hi - lo) * code_max), 0, code_max).astype(np.uint16)
    return codes, {"value_min": lo, "value_max": hi, "code_max": code_max}


def write_png(scan: Scan, path: Path, *, label: str | Path | None = None) -> None:
    """Write a 2D scan as an 8- or 16-bit grayscale PNG (scaled, with a warning, when lossy)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    codes, scaling = png_codes(scan.array)
    extra: dict[str, Any] = {"spacing": list(scan.spacing), "modality": scan.modality, "unit": scan.meta.get("unit", "pixel")}
    if scan.meta.get("synthetic"):
        extra["synthetic"] = True
    if scaling is not None:
        extra.update(scaling)
        warn(label or path, f"PNG holds integers: values {scaling['value_min']:g}..{scaling['value_max']:g} were scaled "
             f"to 16-bit codes 0..{scaling['code_max']} (lossy; medidiff undoes the scaling when it reads the file)")
    pnginfo = PngInfo()
    pnginfo.add_text(TEXT_KEY, json.dumps(extra))
    Image.fromarray(codes).save(str(path), format="PNG", pnginfo=pnginfo)
