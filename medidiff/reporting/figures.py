"""PNG reports: image grids with titles, drawn with matplotlib (Agg, no screen needed).

Every task that produces pictures (training sample grids, denoising and anomaly reports,
contact sheets) draws them here, written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medidiff.io.atomic import atomic_file


_MEDICAL = {"MR", "CT", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF"}


def radiological(image: np.ndarray, affine: np.ndarray, modality: str) -> np.ndarray:
    """A 2D slice ``(y, x)`` turned as radiologists view it: anterior (or superior) up, patient's
    right on the left of the picture.

    Only medical modalities (MR, CT, PET, ...) are turned: microscopy and plain images have no
    patient axes, and neither does a file that does not say what it is (modality ``OT``, e.g. most
    NIfTI files), so those are drawn as stored. ``affine`` is the scan's (the nibabel convention: column ``k`` of its top-left 3x3 is the RAS
    direction of array axis ``-1-k``). The picture's vertical axis is the world
    axis the rows run along most (S if the slice contains it, else A), drawn increasing upwards;
    the horizontal one is drawn increasing to the left (R, or A on a sagittal slice).
    """
    img = np.asarray(image)
    if img.ndim != 2 or str(modality).upper() not in _MEDICAL:
        return img
    a = np.asarray(affine, dtype=float)[:3, :3]
    col, row = a[:, 0], a[:, 1]  # RAS direction of +1 along x (columns) and y (rows)
    if not (np.any(col) and np.any(row)):
        return img
    col_axis, row_axis = int(np.argmax(np.abs(col))), int(np.argmax(np.abs(row)))
    if col_axis == row_axis:
        return img
    vertical = 2 if 2 in (col_axis, row_axis) else 1  # S if in plane, else A
    if col_axis == vertical:  # columns run along the vertical world axis: transpose
        img, col, row, col_axis, row_axis = img.T, row, col, row_axis, col_axis
    if row[row_axis] > 0:  # row index grows up the world axis, but rows are drawn downwards
        img = img[::-1, :]
    if col[col_axis] > 0:  # column index grows along R (or A): draw it growing to the left
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


def _display_range(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1)


def save_grid(
    images: Sequence[np.ndarray],
    path: str | Path,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    cmaps: Sequence[str] | None = None,
    suptitle: str | None = None,
    shared_range: bool = False,
    overlays: Sequence[np.ndarray | None] | None = None,
    overwrite: bool = True,
    cell_inches: float = 2.6,
    value_range: tuple[float, float] | None = None,
) -> Path:
    """Draw 2D ``images`` in a grid (optional titles, colour maps, overlays) and save a PNG.

    Each image gets its own display window (0.5-99.5 percentiles) unless ``shared_range`` (one
    window over all) or ``value_range`` (this window for all: e.g. the real images' range, so
    generated and real images are drawn on the same scale and a brightness error shows).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = ncols or min(n, 6)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_inches * ncols, cell_inches * nrows + (0.4 if suptitle else 0)), squeeze=False)
    rng = _display_range(np.concatenate([np.ravel(i) for i in images])) if shared_range else None
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        rng = (lo, hi if hi > lo else lo + 1.0)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        img = np.asarray(images[k], dtype=np.float32)
        lo, hi = rng or _display_range(img)
        cmap = cmaps[k] if cmaps else "gray"
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        if overlays is not None and overlays[k] is not None:
            ov = np.ma.masked_where(np.asarray(overlays[k]) <= 0, overlays[k])
            ax.imshow(ov, cmap="autumn", alpha=0.5, interpolation="nearest")
        if cmap != "gray":
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        if titles:
            ax.set_title(titles[k], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
