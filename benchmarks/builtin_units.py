"""The built-in models' gain in several intensity scalings and at several noise levels, on held-out
and foreign real images (issue 12 §5): what each model card's "Units and noise levels" states.

    OMP_NUM_THREADS=1 python benchmarks/builtin_units.py [--write] [NAME ...]

Images (none trained on): each model's shipped held-out sample, and a *foreign* image of the same
kind from another source -- ``mr2d`` (EPI): nibabel's ``anatomical.nii`` (a T1 brain of another
subject, the napari sample, ``data_cards/napari-sample-brain-mri.md``); ``micro2d`` (trained on the
left halves of a phase-contrast cell image and a bright-field IHC stain): the IHC image's right half
(``immunohistochemistry()`` as gray, x >= 256: the same slide, never trained on) and, as the foreign
image, scikit-image's ``microaneurysms()`` (the green channel of a retinal fundus photograph: not
microscopy, but the only other gray medical-like image that ships; ``data_cards/skimage-sample-images.md``);
``ct2d``: no second CT source ships, so only its held-out slice (a third patient). Noise (seed 0) at 2.5 / 5 / 10 % of the image's range, the model card's
noise model; scalings x 1e-3, x 1, x 4.1 of the *clean* image before the noise (MR and
microscopy have no absolute units); CT stays in HU (other scalings are refused, which is tested).
Gain = PSNR(denoised) - PSNR(noisy), both over the whole image, ``medidiff denoise`` defaults.
``--write`` puts the table into each MODEL_CARD.md (a "Units and noise levels" section).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from builtin_intervals import write_card  # the one card-section writer (benchmarks/ is the script's folder)
from medidiff.core.metrics import psnr
from medidiff.core.noise import add_noise
from medidiff.io import Scan, affine_from_spacing, load_scan

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "medidiff" / "builtin"
LEVELS = (0.025, 0.05, 0.10)
SCALES = (1e-3, 1.0, 4.1)
NOISE = {"mr2d": "rician", "micro2d": "poisson-gaussian", "ct2d": "gaussian"}


def _foreign_mr() -> Scan:
    return load_scan(ROOT / "napari_plugin" / "sample_data" / "brain_mri.nii.gz")


def _ihc_heldout() -> Scan:
    from prepare_builtin_data import IHC_HALF, ihc_gray  # micro2d trains on x < IHC_HALF

    gray = np.ascontiguousarray(ihc_gray()[:, IHC_HALF:])
    return Scan(gray, (1.0, 1.0), affine_from_spacing((1.0, 1.0)), "microscopy")


def _foreign_micro() -> Scan:
    import skimage.data

    return Scan(skimage.data.microaneurysms().astype(np.float32), (1.0, 1.0), affine_from_spacing((1.0, 1.0)),
                "microscopy")


IMAGES = {
    "mr2d": [("held-out (example4d z 18-23)", lambda: load_scan(BUILTIN / "samples" / "mr_heldout.nii.gz")),
             ("foreign (anatomical.nii, T1, another subject)", _foreign_mr)],
    "micro2d": [("held-out (cell.png right half)", lambda: load_scan(BUILTIN / "samples" / "cell_heldout.tif")),
                ("held-out (IHC right half, gray; left half trained on)", _ihc_heldout),
                ("foreign (microaneurysms: retinal fundus, not microscopy)", _foreign_micro)],
    "ct2d": [("held-out (CT_small.dcm, a third patient)", lambda: load_scan(BUILTIN / "samples" / "ct_heldout.nii.gz"))],
}


def measure(name: str) -> list[dict]:
    from medidiff.tasks.denoise import denoise

    rows = []
    scales = (1.0,) if NOISE[name] == "gaussian" and name.startswith("ct") else SCALES
    for label, load in IMAGES[name]:
        clean = load()
        for scale in scales:
            x = clean.array.astype(np.float64) * scale
            span = float(x.max() - x.min())
            for level in LEVELS:
                y = add_noise(x, NOISE[name], level, np.random.default_rng(0)).astype(np.float32)
                out = denoise(name, clean.with_array(y, meta={"source_path": ""}), noise=NOISE[name], device="cpu",
                              seed=0).scan.array
                noisy, den = psnr(x, y, data_range=span), psnr(x, out, data_range=span)
                rows.append({"image": label, "scale": scale, "level": level, "noisy": noisy, "denoised": den})
                print(name, rows[-1], flush=True)
    return rows


def section(name: str, rows: list[dict]) -> str:
    lines = ["## Units and noise levels", "",
             f"Gain in dB (PSNR denoised - noisy, whole image, `medidiff denoise {name}` defaults, {NOISE[name]} noise "
             "at a share of the image's range, seed 0) on images it never trained on, the clean image scaled before "
             "the noise (`benchmarks/builtin_units.py`):", "",
             "| image | scale | " + " | ".join(f"{lv:g}" for lv in LEVELS) + " |",
             "|---|---|" + "---|" * len(LEVELS)]
    keys = sorted({(r["image"], r["scale"]) for r in rows}, key=lambda k: ([r["image"] for r in rows].index(k[0]), k[1]))
    for image, scale in keys:
        cells = [f"{r['denoised'] - r['noisy']:+.2f}" for r in rows if r["image"] == image and r["scale"] == scale]
        lines.append(f"| {image} | x {scale:g} | " + " | ".join(cells) + " |")
    if name.startswith("ct"):
        lines += ["", "CT keeps its HU window: the same slice stored in other units is refused in one line "
                      "(\"is the scan in the units the model was trained on (HU for CT)?\"), not denoised."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    write = "--write" in argv
    names = [a for a in argv if not a.startswith("--")] or [n for n in IMAGES if (BUILTIN / n).is_dir()]
    for name in names:
        text = section(name, measure(name))
        print(text)
        if write:
            write_card(name, text)


if __name__ == "__main__":
    main(sys.argv[1:])
