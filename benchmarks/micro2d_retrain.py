"""micro2d retrained on two microscopy images (issue 12 §5): shipped model vs candidates, and BM3D.

    OMP_NUM_THREADS=1 python benchmarks/micro2d_retrain.py --model shipped=medidiff/builtin/micro2d \\
        --model candidate=RUNS/micro2d/model [--model NAME=FOLDER ...] [--val-only] [--no-bm3d] \
        [--cache peers.json] [--out table.md]

Images (real, shipped with scikit-image; none of their pixels in any training set used here):

* cell: ``skimage.data.cell()`` right half (x >= 275; the shipped ``cell_heldout.tif`` is this half):
  **validation** = its top 128 rows (as ``benchmarks/denoise.py``), **test** = the rest (532 x 275).
* IHC: ``skimage.data.immunohistochemistry()`` as gray (mean of R, G, B:
  ``prepare_builtin_data.ihc_gray``) right half (x >= 256; the candidate trains on x < 256):
  **validation** = top 128 rows, **test** = the rest (384 x 256). Same image, other contrast
  (bright-field stain) than cell.
* foreign (test only): ``skimage.data.microaneurysms()`` (102 x 102, green channel of a retinal
  fundus photograph; *not* microscopy, in no training set): how each model does off its data.

Noise (``medidiff.core.noise.add_noise``, level = std at the brightest value as a share of the
clean image's range): Poisson-Gaussian and Gaussian at 2.5 / 5 / 10 %, validation seed 100 + k,
test seed k (k = the condition's index), the same draws for every model. Each model: ``medidiff
denoise`` defaults (tweedie, seed 0). Peers on the test rows: BM3D (``bm3d.bm3d``, sigma from
``skimage.restoration.estimate_sigma``) and on Poisson-Gaussian rows BM3D+VST (generalised
Anscombe at medidiff's gain/read estimate, BM3D at sigma 1, exact unbiased inverse), the functions of
``benchmarks/denoise.py``. PSNR over the whole image, data range = clean max - min. The choice
(ship or not, which checkpoint) is made on the validation mean over all 12 validation rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from denoise import bm3d_gaussian, bm3d_vst  # the peers of the denoising benchmark (benchmarks/ is the script's folder)
from medidiff.core.metrics import psnr
from medidiff.core.noise import add_noise
from medidiff.io import Scan, affine_from_spacing
from prepare_builtin_data import IHC_HALF, ihc_gray

NOISES = ("poisson-gaussian", "gaussian")
LEVELS = (0.025, 0.05, 0.10)
VAL_ROWS = 128


def images() -> dict[str, dict[str, np.ndarray]]:
    """``{split: {image label: clean array}}`` for the validation and test splits."""
    import skimage.data

    cell = skimage.data.cell().astype(np.float32)
    cell_r = cell[:, cell.shape[1] // 2:]
    ihc_r = ihc_gray()[:, IHC_HALF:]
    return {"val": {"cell": cell_r[:VAL_ROWS], "IHC": ihc_r[:VAL_ROWS]},
            "test": {"cell": cell_r[VAL_ROWS:], "IHC": ihc_r[VAL_ROWS:],
                     "foreign (microaneurysms, retina)": skimage.data.microaneurysms().astype(np.float32)}}


def _scan(arr: np.ndarray) -> Scan:
    return Scan(np.ascontiguousarray(arr, dtype=np.float32), (1.0, 1.0), affine_from_spacing((1.0, 1.0)), "microscopy",
                meta={"source_path": ""})


def run(models: dict[str, Path], with_bm3d: bool = True, splits: tuple[str, ...] = ("val", "test"),
        cache: Path | None = None) -> list[dict]:
    """One row per (split, image, noise, level): PSNR of the noisy image, each model and the peers.

    ``cache``: a JSON file of the peers' PSNR (they do not depend on the models), read if it exists and
    written after the run, so that a later run with other models does not repeat BM3D.
    """
    import json

    from medidiff.core.model import DiffusionModel
    from medidiff.tasks.denoise import denoise

    peers = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    loaded = {name: DiffusionModel.load(folder) for name, folder in models.items()}
    rows = []
    for split, imgs in images().items():
        if split not in splits:
            continue
        for label, clean in imgs.items():
            span = float(clean.max() - clean.min())
            for k, (noise, level) in enumerate((n, lv) for n in NOISES for lv in LEVELS):
                seed = k + (100 if split == "val" else 0)
                y = add_noise(clean, noise, level, np.random.default_rng(seed)).astype(np.float32)
                row = {"split": split, "image": label, "noise": noise, "level": level,
                       "noisy": psnr(clean, y, data_range=span)}
                for name, model in loaded.items():
                    out = denoise(model, _scan(y), noise=noise, device="cpu", seed=0).scan.array
                    row[name] = psnr(clean, out, data_range=span)
                key = f"{split}|{label}|{noise}|{level:g}"
                if with_bm3d and split == "test":
                    if key not in peers:
                        t0 = time.perf_counter()
                        peers[key] = {"BM3D": psnr(clean, bm3d_gaussian(y), data_range=span)}
                        if noise == "poisson-gaussian":
                            peers[key]["BM3D+VST"] = psnr(clean, bm3d_vst(y), data_range=span)
                        peers[key]["bm3d_s"] = time.perf_counter() - t0
                    row.update(peers[key])
                rows.append(row)
                print({k2: (round(v, 3) if isinstance(v, float) else v) for k2, v in row.items()}, file=sys.stderr,
                      flush=True)
    if cache is not None and peers:
        cache.write_text(json.dumps(peers, indent=1) + "\n")
    return rows


def table(rows: list[dict], names: list[str]) -> str:
    """Markdown: every row, then the mean per split and image (and the best peer's gap)."""
    peers = [p for p in ("BM3D", "BM3D+VST") if any(p in r for r in rows)]
    head = ["split", "image", "noise", "level", "noisy", *names, *peers]
    if peers:
        head += [f"{n} - best BM3D" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def best_peer(r):
        vals = [r[p] for p in peers if p in r]
        return max(vals) if vals else None

    for r in rows:
        cells = [r["split"], r["image"], r["noise"], f"{100 * r['level']:g} %", f"{r['noisy']:.2f}"]
        top = max(r[n] for n in names)
        cells += [f"**{r[n]:.2f}**" if r[n] == top and len(names) > 1 else f"{r[n]:.2f}" for n in names]
        cells += [f"{r[p]:.2f}" if p in r else "n/a" for p in peers]
        if peers:
            bp = best_peer(r)
            cells += [f"{r[n] - bp:+.2f}" if bp is not None else "" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| split | image | rows | " + " | ".join(f"{n} mean" for n in names) + " |",
              "|" + "---|" * (3 + len(names))]
    groups: dict[tuple[str, str], list[dict]] = {}
    for split in dict.fromkeys(r["split"] for r in rows):
        part = [r for r in rows if r["split"] == split]
        for image in dict.fromkeys(r["image"] for r in part):
            groups[(split, image)] = [r for r in part if r["image"] == image]
        groups[(split, "all" if split == "val" else "cell + IHC")] = [r for r in part if not r["image"].startswith("foreign")]
    for (split, image), rs in groups.items():
        lines.append(f"| {split} | {image} | {len(rs)} | " + " | ".join(f"{np.mean([r[n] for r in rs]):.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=FOLDER (repeatable; order = columns)")
    ap.add_argument("--no-bm3d", action="store_true", help="skip the BM3D peers (validation-only runs)")
    ap.add_argument("--val-only", action="store_true", help="only the validation split (choosing a checkpoint)")
    ap.add_argument("--out", type=Path, help="also write the table here")
    ap.add_argument("--cache", type=Path, help="JSON file of the BM3D peers' PSNR: reused if present, else written")
    args = ap.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.model)
    splits = ("val",) if args.val_only else ("val", "test")
    text = table(run({k: Path(v) for k, v in models.items()}, not args.no_bm3d, splits, args.cache), list(models))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
