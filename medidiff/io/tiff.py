"""TIFF and OME-TIFF <-> ``Scan`` (via tifffile), keeping the physical pixel size.

Physical sizes come from OME ``PhysicalSizeX/Y/Z`` (with their units), else from ImageJ
metadata (``unit`` and ``spacing``) with the X/YResolution tags, else from X/YResolution
in centimetres. Resolutions in inches are print settings (72 dpi, ...) and are ignored.
Files written by medidiff also carry the full affine and the modality in a private tag,
so a NIfTI -> TIFF -> NIfTI round trip keeps the geometry.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.errors import InvalidScanError
from medidiff.io._util import rgb_to_gray, warn
from medidiff.io.formats import TIFF_SUFFIXES  # noqa: F401  (one home: io.formats)
from medidiff.io.limits import check_declared_size, check_file_holds
from medidiff.io.scan import Scan, affine_from_spacing

MEDIDIFF_TAG = 65000  # private tag holding medidiff's JSON (affine, modality, unit)

_MICRONS = {"micron", "microns", "um", "µm", "μm", "\\u00b5m", "micrometer", "micrometre"}
_AXIS_NAMES = {"C": "channels", "T": "time points", "S": "samples", "I": "images", "Q": "pages",
               "E": "lambda", "H": "lifetime", "R": "tiles", "A": "angles", "P": "phases"}


def _unit(text: Any) -> str | None:
    if text is None:
        return None
    value = str(text).strip()
    if not value:
        return None
    return "µm" if value.lower() in _MICRONS else value


def _ome_sizes(xml: str) -> dict[str, Any]:
    """PhysicalSize{X,Y,Z} and their units from the first OME Pixels element."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    for element in root.iter():
        if element.tag.split("}")[-1] == "Pixels":
            out: dict[str, Any] = {}
            for axis in "XYZ":
                size = element.get(f"PhysicalSize{axis}")
                if size is not None:
                    try:
                        out[axis] = float(size)
                    except ValueError:
                        continue
                    out[f"{axis}unit"] = _unit(element.get(f"PhysicalSize{axis}Unit")) or "µm"
            return out
    return {}


def _select_axes(data: np.ndarray, axes: str, page, path: Path, volume: int | None) -> np.ndarray:
    """Reduce tifffile's axes to (Z, Y, X) or (Y, X): colour to gray, one extra axis via ``volume``."""
    axes = axes.upper()
    photometric = int(getattr(page, "photometric", 1) or 1)
    # palette images: indices -> RGB through the colour map
    if photometric == 3 and getattr(page, "colormap", None) is not None and "S" not in axes:
        cmap = np.asarray(page.colormap)  # (3, 2**bits)
        data = np.moveaxis(cmap[:, data.astype(np.intp)], 0, -1)
        axes = axes + "S"
    if "S" in axes:
        s_size = data.shape[axes.index("S")]
        if photometric in (2, 3, 6) and s_size in (3, 4):
            data = np.moveaxis(data, axes.index("S"), -1)
            axes = axes.replace("S", "") + "S"
            data = rgb_to_gray(data, path, what="RGB TIFF")
            axes = axes[:-1]
        else:
            axes = axes.replace("S", "C")  # extra samples of a gray image: treat as channels
    # drop singleton axes (other than Y and X)
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "Y" not in axes or "X" not in axes:
        raise InvalidScanError(path, f"TIFF axes {axes!r} have no Y and X image axes")
    # the depth axis: Z, else a page axis (I, Q) when there is no Z
    z_axis = "Z" if "Z" in axes else next((a for a in "IQ" if a in axes), None)
    extra = [a for a in axes if a not in "YX" and a != z_axis]
    if len(extra) > 1:
        raise InvalidScanError(path, f"has axes {axes} with shape {data.shape}; medidiff reads 2D images and 3D stacks with at most one extra axis")
    if extra:
        axis = extra[0]
        i = axes.index(axis)
        n = data.shape[i]
        name = _AXIS_NAMES.get(axis, f"entries along axis {axis}")
        if volume is None:
            raise InvalidScanError(path, f"has {n} {name} (axes {axes}, shape {data.shape}); pick one with volume=N "
                                         f"(--volume N on the command line), N from 0 to {n - 1}")
        if not 0 <= volume < n:
            raise InvalidScanError(path, f"volume={volume} is out of range: the file has {n} {name} (0 to {n - 1})")
        data = np.take(data, volume, axis=i)
        axes = axes.replace(axis, "")
    elif volume not in (None, 0):
        raise InvalidScanError(path, f"has no time or channel axis (axes {axes}); volume={volume} does not apply")
    order = [axes.index(a) for a in ((z_axis,) if z_axis else ()) + ("Y", "X")]
    return np.transpose(data, order)


def read_tiff(path: Path, volume: int | None = None) -> Scan:
    """A 2D image or (z, y, x) stack from a TIFF/OME-TIFF file, with its physical pixel size."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        if not tif.series or not tif.pages:
            raise InvalidScanError(path, "TIFF file holds no image")
        series = tif.series[0]
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        if any(int(n) == 0 for n in series.shape):
            raise InvalidScanError(path, f"has a zero-size axis (shape {tuple(series.shape)})")
        check_declared_size(path, series.shape, series.dtype, what="TIFF")
        if int(getattr(page, "compression", 1) or 1) == 1:  # uncompressed: the file must hold every declared byte
            check_file_holds(path, 0, series.shape, series.dtype, what="TIFF")
        data = np.asarray(series.asarray())
        axes = series.axes
        ome = _ome_sizes(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else {}
        imagej = tif.imagej_metadata if tif.is_imagej else None
        resolution = getattr(page, "resolution", None)
        resolution_unit = int(getattr(page, "resolutionunit", 1) or 1)
        private = page.tags.get(MEDIDIFF_TAG)
        private_json = private.value if private is not None else None
    if data.size == 0:
        raise InvalidScanError(path, f"has a zero-size axis (shape {data.shape})")
    array = _select_axes(data, axes, page, path, volume)

    unit = None
    sizes = {"X": 1.0, "Y": 1.0, "Z": 1.0}
    meta: dict[str, Any] = {"format": "tiff", "tiff_axes": axes}
    if ome:
        for axis in "XYZ":
            if axis in ome:
                sizes[axis] = ome[axis]
        units = {ome.get(f"{a}unit") for a in "XY" if a in ome} | ({ome["Zunit"]} if "Z" in ome else set())
        unit = ome.get("Xunit") or ome.get("Yunit") or ome.get("Zunit")
        if len(units) > 1:
            warn(path, f"OME physical sizes use different units {sorted(units)}; medidiff keeps the numbers as given, unit {unit}")
        meta["ome"] = True
    elif imagej is not None and (imagej.get("unit") or imagej.get("spacing")):
        unit = _unit(imagej.get("unit"))
        if resolution and resolution[0] > 0 and resolution[1] > 0:
            sizes["X"], sizes["Y"] = 1.0 / resolution[0], 1.0 / resolution[1]
        if imagej.get("spacing"):
            sizes["Z"] = float(imagej["spacing"])
    elif resolution and resolution_unit == 3 and resolution[0] > 0 and resolution[1] > 0:
        sizes["X"], sizes["Y"] = 10.0 / resolution[0], 10.0 / resolution[1]  # pixels per cm -> mm
        unit = "mm"
    elif resolution and resolution_unit == 2:
        meta["dpi"] = [float(resolution[0]), float(resolution[1])]
    spacing = tuple(float(sizes[a]) if sizes[a] > 0 else 1.0 for a in ("ZYX"[-array.ndim:]))
    meta["unit"] = unit or "pixel"

    affine = affine_from_spacing(spacing)
    modality = "microscopy"
    if private_json:
        try:
            info = json.loads(private_json)
        except (TypeError, ValueError):
            info = {}
        stored = np.asarray(info.get("affine", []), dtype=np.float64)
        if stored.shape == (4, 4):
            norms = np.linalg.norm(stored[:3, :array.ndim], axis=0)[::-1]
            if np.allclose(norms, spacing, rtol=1e-5, atol=1e-9):
                affine = stored
        modality = str(info.get("modality") or modality)
        if info.get("unit") and meta["unit"] == "pixel":
            meta["unit"] = str(info["unit"])
        if info.get("synthetic"):
            meta["synthetic"] = True
    return Scan(array=array, spacing=spacing, affine=affine, modality=modality, meta=meta)


def write_tiff(scan: Scan, path: Path) -> None:
    """Write ``scan`` as a float32 OME-TIFF with PhysicalSizeX/Y(/Z) and medidiff's geometry tag."""
    import tifffile

    unit = str(scan.meta.get("unit") or "pixel")
    metadata: dict[str, Any] = {"axes": "ZYX" if scan.ndim == 3 else "YX"}
    names = "ZYX"[-scan.ndim:]
    for axis, size in zip(names, scan.spacing):
        metadata[f"PhysicalSize{axis}"] = float(size)
        metadata[f"PhysicalSize{axis}Unit"] = unit
    info = {"affine": scan.affine.tolist(), "modality": scan.modality, "unit": unit}
    if scan.meta.get("synthetic"):
        info["synthetic"] = True
    tifffile.imwrite(
        str(path),
        np.ascontiguousarray(scan.array, dtype=np.float32),
        ome=True,
        photometric="minisblack",
        metadata=metadata,
        extratags=[(MEDIDIFF_TAG, "s", 0, json.dumps(info), True)],
    )
