"""Denoising at a voxel size other than the model's: direct, or resampled to its spacing and back.

    OMP_NUM_THREADS=1 python benchmarks/voxel_size.py [--model mr2d] [--level 0.05] [--seeds 0 1]

The built-in model's held-out sample (2 mm in-plane for ``mr2d``) is resampled in-plane to 1 mm and
4 mm (cubic spline, anti-aliased when shrinking): that is the clean scan at the new voxel size.
Gaussian noise at ``level`` of its range is added, then it is denoised two ways: **direct** (the
model sees the 1 or 4 mm voxels; medidiff warns about the voxel size) and **resampled** (noisy scan
to the model's spacing, denoised, back to the scan's grid). PSNR is inside ``x > 0.1 max`` of the
clean scan at its own voxel size, averaged over the noise seeds. The finer scan is the 2 mm sample
upsampled, so it holds no detail finer than 2 mm: that favours the resampled path there (a real
1 mm scan has detail the round trip would blur). The numbers feed the voxel-size
warning of ``medidiff.tasks.denoise_checks``, which says what to expect instead of resampling.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from skimage.transform import resize

ROOT = Path(__file__).resolve().parents[1]


def _resample(scan, spacing: tuple[float, float]):
    """The scan with its last two axes resampled to ``spacing`` (mm); slices untouched."""
    from medidiff.io.scan import affine_from_spacing

    zoom = [s / t for s, t in zip(scan.spacing[-2:], spacing)]
    shape = (*scan.shape[:-2], *(max(1, round(n * z)) for n, z in zip(scan.shape[-2:], zoom)))
    arr = resize(scan.array, shape, order=3, anti_aliasing=min(zoom) < 1, preserve_range=True).astype(np.float32)
    new = (*scan.spacing[:-2], *spacing)
    return replace(scan, array=arr, spacing=new, affine=affine_from_spacing(new))


def _to_shape(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return resize(arr, shape, order=3, anti_aliasing=arr.shape[-1] > shape[-1], preserve_range=True).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mr2d")
    ap.add_argument("--sample", default="mr_heldout.nii.gz")
    ap.add_argument("--level", type=float, default=0.05)
    ap.add_argument("--spacings", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()

    from medidiff.core.metrics import psnr
    from medidiff.core.noise import add_noise
    from medidiff.io import load_scan
    from medidiff.model_store.registry import resolve_model
    from medidiff.tasks.denoise import denoise
    import warnings

    model = resolve_model(args.model)
    trained = tuple(float(s) for s in model.config.spacing[-2:])
    base = load_scan(ROOT / "medidiff" / "builtin" / "samples" / args.sample)
    print(f"model {args.model} (trained at {trained} mm, {model.config.training.get('steps_done') or model.config.training.get('steps')} steps, "
          f"window {model.config.image_size}); sample {args.sample} {base.shape} at {base.spacing} mm; "
          f"Gaussian noise {args.level:g} of the range; PSNR in x > 0.1 max\n")
    print("| voxel size | noisy | direct | resampled to the model's spacing and back | direct - resampled |")
    print("|---|---|---|---|---|")
    for mm in args.spacings:
        own = bool(np.allclose((mm, mm), trained, rtol=1e-3))
        clean = base if np.allclose((mm, mm), base.spacing[-2:], rtol=1e-3) else _resample(base, (mm, mm))
        c = clean.array
        region = c > 0.1 * c.max()
        rng_ = float(c.max() - c.min())
        rows = []
        for seed in args.seeds:
            noisy = clean.with_array(add_noise(c, "gaussian", args.level, np.random.default_rng(seed)).astype(np.float32),
                                     meta={"source_path": ""})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                direct = denoise(model, noisy, noise="gaussian", device="cpu", seed=seed, self_check=False).scan.array
                if own:
                    back = direct
                else:
                    at_model = _resample(noisy, trained)
                    out = denoise(model, at_model, noise="gaussian", device="cpu", seed=seed, self_check=False).scan.array
                    back = _to_shape(out, c.shape)
            rows.append([psnr(c[region], x[region], data_range=rng_) for x in (noisy.array, direct, back)])
        n, d, r = np.mean(rows, axis=0)
        same = "(the model's own)" if own else f"{r:.2f} (+{r - n:.2f})"
        print(f"| {mm:g} mm | {n:.2f} | {d:.2f} (+{d - n:.2f}) | {same} | {'-' if own else f'{d - r:+.2f}'} |")


if __name__ == "__main__":
    main()
