"""NIfTI-1/2 (``.nii``, ``.nii.gz``) <-> ``Scan``, keeping the affine exactly.

nibabel's data is x-first ``(i, j, k)``; a ``Scan`` array is ``data.T`` so ``(z, y, x)``
and ``scan.affine`` is the image's affine unchanged (see ``medidiff.io.scan``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medidiff.errors import InvalidScanError, OutputError
from medidiff.io.formats import NIFTI_SUFFIXES  # noqa: F401  (one home: io.formats)
from medidiff.io.limits import check_declared_size, check_file_holds, check_gzip_holds
from medidiff.io.scan import Scan


# NIfTI xyzt spatial units -> the unit string medidiff keeps in meta["unit"]
_UNITS = {"mm": "mm", "meter": "m", "micron": "µm"}
_UNIT_CODES = {"mm": "mm", "m": "meter", "µm": "micron", "um": "micron", "micron": "micron"}


def read_nifti(path: Path, volume: int | None = None) -> Scan:
    """Read a 2D, 3D or 4D NIfTI file; ``volume`` picks one volume of a 4D file."""
    import nibabel as nib

    img = nib.load(str(path))
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InvalidScanError(path, f"is a {type(img).__name__}, not a NIfTI image")
    shape = tuple(int(s) for s in img.shape)
    if any(s == 0 for s in shape):
        raise InvalidScanError(path, f"has a zero-size axis (shape {shape}); the file holds no voxels")
    # drop trailing singleton axes beyond the third (x, y, z, 1, 1 -> x, y, z)
    ndim = len(shape)
    while ndim > 3 and shape[ndim - 1] == 1:
        ndim -= 1
    if ndim > 4:
        raise InvalidScanError(path, f"has {ndim} dimensions (shape {shape}); medidiff reads 2D, 3D and 4D NIfTI")
    proxy = img.dataobj
    stored = img.header.get_data_dtype()
    check_declared_size(path, shape[:3] if ndim == 4 else shape, stored, what="NIfTI header")
    offset = int(getattr(proxy, "offset", 0) or 0)
    if str(path).lower().endswith(".gz"):
        check_gzip_holds(path, offset, shape, stored, what="NIfTI")
    else:
        check_file_holds(path, offset, shape, stored, what="NIfTI")
    if ndim == 4:
        n_vol = shape[3]
        if volume is None:
            raise InvalidScanError(
                path,
                f"is 4D with {n_vol} volumes (shape {shape}); pick one with volume=N "
                f"(--volume N on the command line), N from 0 to {n_vol - 1}",
            )
        if not 0 <= volume < n_vol:
            raise InvalidScanError(path, f"volume={volume} is out of range: the file has {n_vol} volumes (0 to {n_vol - 1})")
        index = (slice(None),) * 3 + (volume,) + (0,) * (len(shape) - 4)
        data = np.asarray(proxy[index], dtype=np.float32)  # proxy slicing applies scl_slope/inter
    else:
        if volume not in (None, 0):
            raise InvalidScanError(path, f"is not 4D (shape {shape}); volume={volume} does not apply")
        data = np.asarray(proxy, dtype=np.float32)  # scaling applied by the proxy
        data = data.reshape(shape[:ndim] if ndim >= 1 else shape)
    affine = np.array(img.affine, dtype=np.float64)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim == 1:
        data = data[:, None]
    array = np.ascontiguousarray(data.T)  # (z, y, x) or (y, x)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    spacing = tuple(float(n) if n > 0 else 1.0 for n in norms[: array.ndim][::-1])

    header = img.header
    space_unit = header.get_xyzt_units()[0]
    meta = {
        "format": "nifti",
        "unit": _UNITS.get(space_unit, "mm"),
        "nifti": {
            "shape": list(shape),
            "dtype": str(header.get_data_dtype()),
            "qform_code": int(header["qform_code"]),
            "sform_code": int(header["sform_code"]),
            "descrip": header["descrip"].item().decode("latin-1", errors="replace").strip("\x00 "),
        },
    }
    modality = "OT"
    descrip = meta["nifti"]["descrip"]
    if descrip.startswith("medidiff "):  # written by medidiff: modality (and synthetic flag) kept
        for word in descrip.split()[1:]:
            if word.startswith("modality=") and len(word) > 9:
                modality = word[9:]
            elif word == "SYNTHETIC":
                meta["synthetic"] = True
    if ndim == 4:
        meta["volume"] = int(volume)  # type: ignore[arg-type]
        meta["n_volumes"] = int(shape[3])
    return Scan(array=array, spacing=spacing, affine=affine, modality=modality, meta=meta)


def label_dtype(values: np.ndarray, path: str | Path | None = None) -> np.dtype:
    """The smallest integer type (uint8, int16, uint16, int32) that holds a label map's values exactly."""
    if values.size and not np.all(np.equal(np.mod(values, 1), 0)):
        raise OutputError(f"{path}: a label map (meta['labels']) must hold whole numbers; round it first")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if lo >= info.min and hi <= info.max:
            return np.dtype(dtype)
    raise OutputError(f"{path}: label values {lo:g} to {hi:g} do not fit a 32-bit integer")


def write_nifti(scan: Scan, path: Path, label: str | Path | None = None) -> None:
    """Write ``scan`` as float32 NIfTI-1 with qform and sform set to its affine (code 1, scanner).

    A label map (``scan.meta["labels"]`` true) is stored in the smallest integer type that
    holds its values exactly (``label_dtype``), so viewers open it as labels.
    """
    import nibabel as nib

    data = scan.array.T
    if data.ndim == 2:
        data = data[:, :, None]
    dtype = label_dtype(scan.array, label or path) if scan.meta.get("labels") else np.dtype(np.float32)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), scan.affine)
    img.set_sform(scan.affine, code=1)
    img.set_qform(scan.affine, code=1)  # nearest rigid+zoom fit; the sform keeps the exact affine
    img.header.set_data_dtype(dtype)
    if dtype != np.float32:
        img.header.set_slope_inter(1.0, 0.0)  # stored values are the labels themselves
    unit = _UNIT_CODES.get(str(scan.meta.get("unit", "mm")), "mm")
    img.header.set_xyzt_units(xyz=unit)
    descrip = f"medidiff modality={scan.modality}" + (" SYNTHETIC" if scan.meta.get("synthetic") else "")
    img.header["descrip"] = descrip[:79].encode("ascii", errors="replace")
    nib.save(img, str(path))
