"""Denoising benchmark: medidiff (tweedie / ddim / posterior) vs non-local means vs BM3D.

    OMP_NUM_THREADS=1 python benchmarks/denoise.py --steps 600 --threads 1 --out /tmp/bench_denoise

One command, one markdown table (printed and written to OUT/denoise_table.md). Everything is
real data that ships with installed packages (see data_cards/benchmark-denoise.md), split so
that no test pixel was trained on:

* MR:  nibabel ``example4d.nii.gz`` volume 0; model trained on slices z < 16, tested on the six
       slices z >= 18 (96 x 128 each).
* CT:  pydicom test files; model trained on crops of ``693_J2KI.dcm`` (512 x 512), tested on
       ``CT_small.dcm`` (128 x 128): a different patient and scanner.
* Microscopy: ``skimage.data.cell()`` (660 x 550); model trained on the left half (x < 275),
       tested on the right half.

A tiny 2D DDPM is trained per modality (``--steps``, CPU), unless ``--mr-model`` etc. give
model folders. Noise (``medidiff.core.noise.add_noise``, levels relative to the test image's range):
Gaussian on all three, Rician on MR, Poisson-Gaussian on microscopy. Baselines get the noisy
image and estimate sigma with ``skimage.restoration.estimate_sigma`` (Gaussian assumption);
medidiff estimates its own noise with the matching noise model. BM3D needs ``pip install bm3d``
(``medidiff[benchmark]``); without it its column says "n/a".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from medidiff.core import noise as noise_lib
from medidiff.io import Scan, load_scan
from medidiff.io.scan import affine_from_spacing
from medidiff.core.metrics import psnr, ssim

LEVELS = (0.05, 0.10, 0.20)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- data --------------------------------------------------------------------------------------------
def mr_data() -> tuple[Scan, np.ndarray, float]:
    import nibabel as nib

    img = nib.load(Path(os.path.dirname(nib.__file__)) / "tests" / "data" / "example4d.nii.gz")
    vol = np.asarray(img.dataobj)[..., 0].astype(np.float32).T  # (z, y, x)
    spacing = tuple(float(z) for z in reversed(img.header.get_zooms()[:3]))
    train = Scan(vol[:16], spacing, img.affine, "MR")
    return train, vol[18:24], 2.0


def ct_data() -> tuple[Scan, np.ndarray, float]:
    from pydicom.data import get_testdata_file

    train = load_scan(get_testdata_file("693_J2KI.dcm"))
    test = load_scan(get_testdata_file("CT_small.dcm"))
    return train, test.array[None], test.spacing[0]


def cell_data() -> tuple[Scan, np.ndarray, float]:
    import skimage.data

    cell = skimage.data.cell().astype(np.float32)
    half = cell.shape[1] // 2
    train = Scan(cell[:, :half], (1.0, 1.0), affine_from_spacing((1.0, 1.0)), "SM")
    return train, cell[None, :, half:], 1.0


DATASETS = {"MR": (mr_data, ("gaussian", "rician")), "CT": (ct_data, ("gaussian",)),
            "microscopy": (cell_data, ("gaussian", "poisson-gaussian"))}
MODALITY = {"MR": "MR", "CT": "CT", "microscopy": "SM"}


def get_model(name: str, train: Scan, path: str | None, steps: int, out: Path):
    from medidiff.core.model import DiffusionModel
    from medidiff.tasks.train import train as train_model

    if path:
        return DiffusionModel.load(path), 0.0
    t0 = time.perf_counter()
    result = train_model([train], out / f"model_{name}", dims=2, preset="tiny", image_size=32, steps=steps,
                         batch_size=16, lr=2e-3, seed=0, device="cpu", checkpoint_every=0, overwrite=True)
    return result.model, time.perf_counter() - t0


# -- baselines ---------------------------------------------------------------------------------------
def nlm(img: np.ndarray) -> np.ndarray:
    from skimage.restoration import denoise_nl_means, estimate_sigma

    s = float(estimate_sigma(img))
    return denoise_nl_means(img, h=0.8 * s, sigma=s, fast_mode=True, patch_size=5, patch_distance=6)


def bm3d_fn():
    try:
        import bm3d
    except ImportError:
        return None

    def run(img: np.ndarray) -> np.ndarray:
        from skimage.restoration import estimate_sigma

        return bm3d.bm3d(img.astype(np.float64), sigma_psd=float(estimate_sigma(img)))

    return run


# -- one condition -----------------------------------------------------------------------------------
def score(clean: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    dr = float(clean.max() - clean.min())
    p = float(np.mean([psnr(c, o, data_range=dr) for c, o in zip(clean, out)]))
    s = float(np.mean([ssim(c, o, data_range=dr) for c, o in zip(clean, out)]))
    return p, s


def estimate_text(result, noise: str, level: float, span: float) -> str:
    if noise == "poisson-gaussian":
        gain, read = 0.8 * level * level * span, np.sqrt(0.2) * level * span
        return f"gain {result.gain:.3g}/{gain:.3g}, read {result.sigma_read:.3g}/{read:.3g}"
    return f"{float(np.median(result.sigma)):.3g}/{level * span:.3g}"


def run_condition(model, name, clean, spacing, noise, level, seed, args, bm3d_run):
    from medidiff.tasks.denoise import denoise

    span = float(clean.max() - clean.min())
    noisy = noise_lib.add_noise(clean, noise, level, np.random.default_rng(seed)).astype(np.float32)
    scan = Scan(noisy, (spacing, 1.0, 1.0), affine_from_spacing((spacing, 1.0, 1.0)), MODALITY[name])
    n = clean.shape[0]
    row: dict[str, tuple] = {"noisy": (*score(clean, noisy), 0.0)}
    est = ""
    for method in ("tweedie", "ddim", "posterior"):
        t0 = time.perf_counter()
        res = denoise(model, scan, method=method, noise=noise, steps=args.ddim_steps, samples=args.samples,
                      seed=seed, device="cpu")
        row[method] = (*score(clean, res.scan.array), (time.perf_counter() - t0) / n)
        est = estimate_text(res, noise, level, span)
    for label, fn in (("NLM", nlm), ("BM3D", bm3d_run)):
        if fn is None:
            row[label] = None
            continue
        t0 = time.perf_counter()
        out = np.stack([fn(s) for s in noisy])
        row[label] = (*score(clean, out), (time.perf_counter() - t0) / n)
    return est, row


COLUMNS = ("noisy", "tweedie", "ddim", "posterior", "NLM", "BM3D")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600, help="training steps per model (CPU)")
    ap.add_argument("--out", type=Path, default=Path("bench_denoise"), help="folder for models and the table")
    ap.add_argument("--mr-model"), ap.add_argument("--ct-model"), ap.add_argument("--cell-model")
    ap.add_argument("--levels", type=float, nargs="+", default=list(LEVELS))
    ap.add_argument("--samples", type=int, default=4, help="posterior samples")
    ap.add_argument("--ddim-steps", type=int, default=5)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    bm3d_run = bm3d_fn()
    paths = {"MR": args.mr_model, "CT": args.ct_model, "microscopy": args.cell_model}
    lines = ["| data | noise | level | sigma est/true | " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * (4 + len(COLUMNS))]
    for d_i, name in enumerate(args.datasets):
        loader, noises = DATASETS[name]
        train, clean, spacing = loader()
        model, secs = get_model(name, train, paths[name], args.steps, args.out)
        log(f"{name}: model ready ({secs:.0f} s training)")
        times: dict[str, list[float]] = {c: [] for c in COLUMNS}
        for n_i, noise in enumerate(noises):
            for l_i, level in enumerate(args.levels):
                est, row = run_condition(model, name, clean, spacing, noise, level, 1000 * d_i + 10 * n_i + l_i,
                                         args, bm3d_run)
                cells = []
                best = max(v[0] for k, v in row.items() if v is not None and k != "noisy")
                for c in COLUMNS:
                    v = row[c]
                    if v is None:
                        cells.append("n/a")
                        continue
                    times[c].append(v[2])
                    text = f"{v[0]:.2f} / {v[1]:.3f}"
                    cells.append(f"**{text}**" if v[0] == best else text)
                lines.append(f"| {name} | {noise} | {level:g} | {est} | " + " | ".join(cells) + " |")
                log(lines[-1])
        t_cells = [("n/a" if not times[c] or c == "noisy" else f"{np.mean(times[c]):.3g} s") for c in COLUMNS]
        lines.append(f"| {name} | s/image | | {clean.shape[1]}x{clean.shape[2]} | " + " | ".join(t_cells) + " |")
    table = "\n".join(lines)
    print(table)
    (args.out / "denoise_table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
