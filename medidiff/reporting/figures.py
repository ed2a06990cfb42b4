"""PNG reports: image grids with titles, drawn with matplotlib (Agg, no screen needed).

Every task that produces pictures (training sample grids, denoising and anomaly reports,
contact sheets) draws them here, written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medidiff.io.atomic import atomic_file


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
) -> Path:
    """Draw 2D ``images`` in a grid (optional titles, colour maps, overlays) and save a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = ncols or min(n, 6)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_inches * ncols, cell_inches * nrows + (0.4 if suptitle else 0)), squeeze=False)
    rng = _display_range(np.concatenate([np.ravel(i) for i in images])) if shared_range else None
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
