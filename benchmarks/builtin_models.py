"""Finish the built-in models: measure them on held-out real images, calibrate, write their cards.

    python benchmarks/prepare_builtin_data.py DATA
    medidiff train DATA/mr_train.nii.gz --out RUNS/mr2d --dims 2 --preset tiny --image-size 32 \
        --steps 3000 --batch-size 32 --lr 2e-3 --seed 0 --checkpoint-every 250 --sample-every 1000
    medidiff train DATA/cell_train.png --out RUNS/micro2d --dims 2 --preset tiny --image-size 32 \
        --steps 3000 --batch-size 32 --lr 2e-3 --seed 0 --checkpoint-every 250 --sample-every 1000
    medidiff train DATA/ct_train/693_J2KI.dcm DATA/ct_train/J2K_pixelrep_mismatch.dcm --out RUNS/ct2d \
        --dims 2 --preset tiny --image-size 32 --steps 3000 --batch-size 32 --lr 2e-3 --seed 0 \
        --checkpoint-every 250 --sample-every 1000 --timestep-sampling low-noise
    python benchmarks/builtin_models.py RUNS DATA [NAME ...]

copies RUNS/NAME/model into medidiff/builtin/NAME with a MODEL_CARD.md that records the
command, data, training time and the PSNR gain measured here on the held-out sample (the same
measurement ``tests/tasks/test_builtin_models.py`` repeats). mr2d is also calibrated for anomaly
detection on its (healthy) training slices. NAMEs (default: all) finish only those models.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "medidiff" / "builtin"

# The measurement the model card records and the test repeats: (noise model, level) per model.
EVALUATION = {
    "mr2d": {"sample": "mr_heldout.nii.gz", "noise": "rician", "levels": (0.05, 0.10)},
    "micro2d": {"sample": "cell_heldout.tif", "noise": "poisson-gaussian", "levels": (0.05, 0.10)},
    "ct2d": {"sample": "ct_heldout.nii.gz", "noise": "gaussian", "levels": (0.02, 0.05, 0.10)},
}
MODALITY = {"mr2d": "MR", "micro2d": "microscopy", "ct2d": "CT"}
DATA = {
    "mr2d": ("nibabel-test-data.md", "nibabel's tests/data/example4d.nii.gz, volume 0, slices z < 16 (EPI brain MRI, 2 x 2 x 2.2 mm)",
             "MIT (nibabel)", "MR (2D slices, brain EPI-like contrast)"),
    "micro2d": ("skimage-sample-images.md", "scikit-image's data/cell.png, left half (x < 275)",
                "see data_cards/skimage-sample-images.md (scikit-image data, BSD-3-Clause package)",
                "microscopy (2D, grayscale)"),
    "ct2d": ("pydicom-test-files.md", "pydicom's test files 693_J2KI.dcm (a CQ500 head CT) and "
             "J2K_pixelrep_mismatch.dcm: one 512 x 512 slice each of two patients, in HU",
             "see data_cards/pydicom-test-files.md (pydicom MIT; test files README)", "CT (2D slices, HU)"),
}


def measure(name: str, model, seed: int = 0) -> list[dict]:
    """PSNR of the noisy and the denoised held-out sample at each noise level."""
    from medidiff.io import load_scan
    from medidiff.core.metrics import psnr
    from medidiff.core.noise import add_noise
    from medidiff.tasks.denoise import denoise

    spec = EVALUATION[name]
    clean = load_scan(BUILTIN / "samples" / spec["sample"])
    rng_ = float(clean.array.max() - clean.array.min())
    rows = []
    for level in spec["levels"]:
        noisy = clean.with_array(add_noise(clean.array, spec["noise"], level, np.random.default_rng(seed)).astype(np.float32),
                                 meta={"source_path": ""})
        out = denoise(model, noisy, noise=spec["noise"], device="cpu", seed=seed)
        rows.append({"noise": spec["noise"], "level": level,
                     "psnr_noisy": psnr(clean.array, noisy.array, data_range=rng_),
                     "psnr_denoised": psnr(clean.array, out.scan.array, data_range=rng_)})
    return rows


# the recorded command names several data files DATA1, DATA2...; the card names what prepare_builtin_data wrote
TRAIN_FILES = {"ct2d": "DATA/ct_train/693_J2KI.dcm DATA/ct_train/J2K_pixelrep_mismatch.dcm"}


def _exact(name: str, command: str) -> str:
    return command.replace("DATA1 DATA2", TRAIN_FILES[name]) if name in TRAIN_FILES else command


def card(name: str, model, run: Path, rows: list[dict], calibration: dict | None) -> str:
    cfg = model.config
    data_card, source, licence, kind = DATA[name]
    log = list(csv.DictReader(open(run / "log.csv")))
    seconds = float(log[-1]["seconds"]) if log else float("nan")
    lines = [
        f"# {name}: built-in medidiff model ({kind})",
        "",
        f"- intended scans: {kind}; denoising (tweedie), synthetic patches, anomaly detection on similar scans",
        f"- network: MONAI DiffusionModelUNet, preset {cfg.preset}, {model.num_parameters():,} parameters, "
        f"{cfg.schedule['kind']} ({cfg.schedule['prediction']}), training size {cfg.image_size}",
        f"- normaliser: {cfg.normaliser['kind']} [{cfg.normaliser['low']:.4g}, {cfg.normaliser['high']:.4g}]",
        f"- training data: {source}; data card `data_cards/{data_card}`; licence: {licence}",
        f"- training: {len(log)} steps in {seconds / 60:.1f} min on CPU (1 thread, shared 2-core machine), seed 0",
        "",
        "## Command",
        "",
        "    python benchmarks/prepare_builtin_data.py DATA",
        f"    {_exact(name, cfg.training.get('command', '(see benchmarks/builtin_models.py)'))}",
        "    python benchmarks/builtin_models.py RUNS DATA",
        "",
        "## Measured quality (held-out real image, never trained on)",
        "",
        f"Sample `medidiff/builtin/samples/{EVALUATION[name]['sample']}`, noise added with seed 0, "
        "`medidiff denoise` defaults (tweedie):",
        "",
        "| noise | level (of range) | PSNR noisy (dB) | PSNR denoised (dB) | gain (dB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['noise']} | {r['level']:.2f} | {r['psnr_noisy']:.2f} | {r['psnr_denoised']:.2f} | "
                     f"{r['psnr_denoised'] - r['psnr_noisy']:.2f} |")
    lines += ["", "```json", json.dumps({"psnr_gain_db": {f"{r['noise']}@{r['level']:.2f}":
                                                           round(r["psnr_denoised"] - r["psnr_noisy"], 3) for r in rows}}), "```"]
    if calibration:
        lines += ["", "## Anomaly calibration", "",
                  f"Threshold {calibration['threshold']:.4g} at the {calibration['percentile']:g}th percentile of "
                  "healthy foreground voxels of its training slices."]
    lines += ["", "## Limitations", "",
              "Trained on CPU from the few real images that may be redistributed: a demonstration of the method, "
              "not a clinical tool. Trained on 32 x 32 crops, so generated images are patches at that size and "
              "larger scans are processed with a sliding window."]
    return "\n".join(lines) + "\n"


def main(runs: Path, data: Path, names: list[str]) -> None:
    from medidiff.io import load_scan
    from medidiff.core.model import DiffusionModel
    from medidiff.tasks.anomaly import calibrate_threshold

    for name in names or list(EVALUATION):
        run = runs / name
        model = DiffusionModel.load(run / "model")
        # NIfTI and PNG do not record the modality; the built-in models must know theirs so that
        # `medidiff denoise IN OUT` can pick them and `--noise auto` picks the right noise model
        model.config.modality = MODALITY[name]
        dest = BUILTIN / name
        if dest.exists():
            shutil.rmtree(dest)
        model.save(dest, model_card="(being measured)\n")
        model = DiffusionModel.load(dest)
        calibration = None
        if name == "mr2d":
            calibrate_threshold(model, [load_scan(data / "mr_train.nii.gz")], percentile=99.0, device="cpu")
            model = DiffusionModel.load(dest)
            calibration = model.config.anomaly
        rows = measure(name, model)
        model.save(dest, overwrite=True, model_card=card(name, model, run, rows, calibration))
        for r in rows:
            print(name, r)


if __name__ == "__main__":
    if len(sys.argv) < 3 or any(n not in EVALUATION for n in sys.argv[3:]):
        sys.exit(f"usage: python benchmarks/builtin_models.py RUNS DATA [NAME ...] (names: {', '.join(EVALUATION)})")
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
