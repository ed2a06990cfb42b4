"""Calibrate the denoising intervals of the built-in models and measure their coverage.

    OMP_NUM_THREADS=1 python benchmarks/builtin_intervals.py [--write]

Calibration data: what each model card names as its training data, rebuilt here exactly as
benchmarks/prepare_builtin_data.py builds it (mr2d: nibabel's example4d.nii.gz volume 0, slices
z < 16; micro2d: scikit-image's cell.png, left half). Coverage: the shipped held-out samples
(medidiff/builtin/samples/, never trained or calibrated on) with simulated noise at three levels.
``--write`` stores the calibration in medidiff/builtin/NAME/config.json (a targeted edit of the
``intervals`` key only; every other field and the file's format are kept).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import skimage.data

from medidiff.core.model import DiffusionModel
from medidiff.io import Scan, affine_from_spacing, load_scan
from medidiff.tasks.denoise_calibration import calibrate_intervals, measure_coverage

BUILTIN = Path(__file__).resolve().parents[1] / "medidiff" / "builtin"
LEVELS = (0.02, 0.03, 0.05, 0.08, 0.12, 0.18, 0.27, 0.4, 0.6)  # simulated noise std, normalised units
TEST_LEVELS = (0.05, 0.12, 0.25)
# the scale that gave the tightest intervals at the nominal coverage (measured with this script)
SCALE = {"mr2d": "noise", "micro2d": "texture"}


def mr_train() -> Scan:
    img = nib.load(Path(os.path.dirname(nib.__file__)) / "tests" / "data" / "example4d.nii.gz")
    part = np.asarray(img.dataobj)[..., 0][:, :, 0:16].astype(np.int16)
    spacing = tuple(float(z) for z in reversed(img.header.get_zooms()[:3]))
    return Scan(part.T.astype(np.float32), spacing, img.affine.copy(), "MR",
                meta={"source_path": "mr_train.nii.gz (nibabel example4d.nii.gz volume 0, z < 16)"})


def cell_train() -> Scan:
    cell = skimage.data.cell()
    return Scan(cell[:, : cell.shape[1] // 2].astype(np.float32), (1.0, 1.0), affine_from_spacing((1.0, 1.0)),
                "microscopy", meta={"source_path": "cell_train.png (scikit-image cell.png, x < 275)"})


def write_intervals(name: str, intervals: dict) -> None:
    """Re-read config.json and replace only its ``intervals`` key (same json.dumps(indent=2) format)."""
    path = BUILTIN / name / "config.json"
    raw = json.loads(path.read_text())
    raw["intervals"] = intervals
    if "weights_sha256" in raw:  # keep the hash last, where the model writer puts it
        raw["weights_sha256"] = raw.pop("weights_sha256")
    path.write_text(json.dumps(raw, indent=2) + "\n")


def main(write: bool) -> None:
    for name, train, sample in (("mr2d", mr_train(), "mr_heldout.nii.gz"), ("micro2d", cell_train(), "cell_heldout.tif")):
        model = DiffusionModel.load(BUILTIN / name)
        model.path = None  # calibrate in memory; written below with a targeted edit
        cal = calibrate_intervals(model, [train], levels=LEVELS, scale=SCALE[name], device="cpu", save=False)
        print(f"{name}: scale {cal.scale}, calibrated levels {cal.levels.min():.3g}-{cal.levels.max():.3g}")
        rows = measure_coverage(model, [load_scan(BUILTIN / "samples" / sample)], TEST_LEVELS, (0.8, 0.9, 0.95), device="cpu")
        print("| model | noise (normalised std) | estimated | nominal | coverage (all) | coverage (x > 0.1 max) "
              "| mean width (normalised) | width / sigma |")
        for r in rows:
            print(f"| {name} | {r['level']:.2f} | {r['estimated']:.3f} | {r['coverage']:.2f} | {r['covered']:.3f} | "
                  f"{r['covered_fg']:.3f} | {r['width']:.3f} | {r['width_sigmas']:.2f} |")
        if write:
            write_intervals(name, model.config.intervals)
            print(f"wrote {BUILTIN / name / 'config.json'}")


if __name__ == "__main__":
    main("--write" in sys.argv[1:])
