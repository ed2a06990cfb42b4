"""A 3D latent model on the CPU: a whole 64 x 96 x 128 volume generated in one piece.

    OMP_NUM_THREADS=1 python benchmarks/latent3d.py [--out OUT] [--ae-minutes 4] [--prior-steps 600]
        [--samples 4] [--figure docs/images/latent3d-samples.png] [--device cpu]

Data (``data_cards/benchmark-latent3d.md``): nibabel's example4d.nii.gz, the only real volume
with an axis of 64 or more that ships with an installed package here (pydicom's, scikit-image's
and MONAI's bundled images are 2D or smaller; ``anatomical.nii`` is 33 x 41 x 25). Its two time
points (frames) of (z, y, x) = (24, 96, 128) voxels at 2.2 x 2 x 2 mm are resampled along z
(trilinear, 24 -> 64 slices of 0.825 mm: interpolated, no new detail), so a volume is 64 x 96 x 128.

Split: frame 0 trains, frame 1 is held out. The frames are one scan 2 s apart (correlation 0.9995),
so for the autoencoder a held-out *slab* is used as well: it trains on 32^3 crops of frame 0's
slices z < 40 only and is measured on frame 1's slices z >= 44 (20 slices of upper brain it never
saw), on the whole frame 1, and on another subject (nibabel's anatomical.nii, a T1 volume, 2 mm).
No setting was tuned in this script (the 2D benchmark's lr and presets are taken as they are),
so no validation split is needed; every number below is measured once, on the held-out parts.

1. a tiny 3D autoencoder (4x per axis) for ``--ae-minutes`` of wall time (batch 4); round-trip
   PSNR (network units, data range of the reference) next to 4x block-mean downsampling +
   trilinear upsampling (what a 16 x 24 x 32 grid keeps);
2. a tiny latent prior on the whole 16 x 24 x 32 latent of frame 0 (and its mirror image),
   ``--prior-steps`` steps of batch 2: optimiser steps/s;
3. ``--samples`` volumes of 64 x 96 x 128 in one piece (the generator reports 0 latent windows),
   25 dpm++2m steps: seconds per sample, NCC of each with the training volume and frame 1,
   KID on axial slices (every 3rd of 64) with its bootstrap, the real-vs-real floor, and the
   training-vs-held-out KID, the data-set path's memorisation check (``structure-ncc`` on the same
   axial slices against every training slice; the held-out frame, the same brain 2 s later, as the
   reference); a picture of three orthogonal mid-slices of each sample beside the
   real frames (``--figure``, drawn at the true voxel aspect).

Prints a JSON summary and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel
import numpy as np
import torch

from medidiff.core.progress import run_to_end
from medidiff.io import Scan

SAMPLER = "dpm++2m"
DEPTH = 64  # slices after resampling
AE_TRAIN_Z, HELDOUT_Z = 40, 44  # the autoencoder trains on z < 40 of frame 0; the held-out slab is z >= 44


def _nib_data(name: str) -> Path:
    return Path(os.path.dirname(nibabel.__file__)) / "tests" / "data" / name


def load() -> tuple[Scan, Scan, Scan]:
    """Frame 0 (training) and frame 1 (held out) of example4d, resampled to 64 slices; anatomical.nii."""
    from scipy import ndimage

    img = nibabel.load(_nib_data("example4d.nii.gz"))
    data = np.asarray(img.dataobj).astype(np.float32)
    zoom = DEPTH / data.shape[2]
    aff = np.array(img.affine, dtype=float)
    # reversed index (x, y, z): column 2 steps along z; voxel centres keep the slab's extent
    aff[:3, 3] += aff[:3, 2] * (0.5 / zoom - 0.5)
    aff[:3, 2] /= zoom
    spacing = tuple(float(s) for s in reversed(nibabel.affines.voxel_sizes(aff)))
    frames = [Scan(np.ascontiguousarray(ndimage.zoom(data[..., t].T, (zoom, 1, 1), order=1)), spacing, aff, "MR",
                   {"source_path": f"example4d.nii.gz frame {t}"}) for t in range(2)]
    anat = nibabel.load(_nib_data("anatomical.nii"))
    a = np.asarray(anat.dataobj).astype(np.float32).T  # (25, 41, 33)
    a = np.pad(a, [(0, (-s) % 4) for s in a.shape], mode="edge")  # sizes divisible by 4
    other = Scan(a, tuple(float(s) for s in reversed(anat.header.get_zooms()[:3])), anat.affine, "MR",
                 {"source_path": "anatomical.nii"})
    return frames[0], frames[1], other


def _roundtrip(ae, vol: np.ndarray) -> tuple[float, float]:
    """(autoencoder PSNR, block-mean 4x down + trilinear up PSNR), network units."""
    from medidiff.core.metrics import psnr

    x = ae.normaliser.for_scan(vol).forward(vol).astype(np.float32)
    t = torch.from_numpy(x)[None, None]
    rec = ae.decode(ae.encode(t)).cpu().numpy()[0, 0]
    small = torch.nn.functional.avg_pool3d(t, 4)
    up = torch.nn.functional.interpolate(small, size=x.shape, mode="trilinear", align_corners=False).numpy()[0, 0]
    return psnr(x, rec), psnr(x, up)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def views(vol: np.ndarray, affine: np.ndarray, spacing) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid-slices, turned as radiologists view them, at the true aspect."""
    from scipy import ndimage

    from medidiff.reporting.figures import radiological

    z, y, x = (s // 2 for s in vol.shape)
    sz, sy, sx = spacing

    def plane(img: np.ndarray, rows: int, cols: int, row_mm: float, col_mm: float) -> np.ndarray:
        a = np.eye(4)
        a[:3, 0], a[:3, 1] = affine[:3, cols], affine[:3, rows]  # the slice's column and row directions
        img = ndimage.zoom(img, (row_mm / col_mm, 1.0), order=1)  # square pixels
        return radiological(img, a, "MR")

    # affine columns: 0 = x, 1 = y, 2 = z (reversed array order)
    return [plane(vol[z], 1, 0, sy, sx), plane(vol[:, y, :], 2, 0, sz, sx), plane(vol[:, :, x], 2, 1, sz, sy)]


def _kid(samples: list[np.ndarray], train: np.ndarray, held: np.ndarray) -> dict:
    from medidiff.core.metrics.distributions import image_features, kid_bootstrap, kid_floor

    def feats(vols) -> np.ndarray:
        return image_features([s for v in vols for s in v[::3]])

    fs, ft, fh = feats(samples), feats([train]), feats([held])
    k, floor, tr = kid_bootstrap(fs, fh), kid_floor(fh), kid_bootstrap(ft, fh)
    return {"samples_vs_heldout": k.text(), "floor_heldout_halves": floor.text(), "training_vs_heldout": tr.text(),
            "n_sample_slices": int(fs.shape[0]), "n_heldout_slices": int(fh.shape[0])}


def _memorisation(vols: list[np.ndarray], train: np.ndarray, held: np.ndarray) -> dict:
    """The data-set path's ``structure-ncc`` check on axial slices (every 3rd of 64): each sample slice
    against every training slice (every shift, flipped too), as ``medidiff evaluate generated`` runs it;
    the held-out frame's slices as the reference for what an unseen-but-same-brain slice scores."""
    from medidiff.core.metrics.memorisation import DEFAULT_RULE
    from medidiff.tasks.quality import nearest_training

    refs = [train[z] for z in range(train.shape[0])]
    pick = range(0, train.shape[0], 3)
    per_sample = [[n.score for n in nearest_training(np.stack([v[z] for z in pick]), refs)] for v in vols]
    held_scores = [n.score for n in nearest_training(np.stack([held[z] for z in pick]), refs)]
    thr = float(DEFAULT_RULE.threshold)
    return {"rule": "structure-ncc", "threshold": thr,
            "max_score_per_sample": [round(max(p), 3) for p in per_sample],
            "median_score_per_sample": [round(float(np.median(p)), 3) for p in per_sample],
            "slices_flagged_per_sample": [int(sum(x >= thr for x in p)) for p in per_sample],
            "slices_per_sample": len(pick),
            "heldout_frame": {"max": round(max(held_scores), 3), "median": round(float(np.median(held_scores)), 3),
                              "flagged": int(sum(x >= thr for x in held_scores))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/medidiff-bench-latent3d"))
    ap.add_argument("--ae-minutes", type=float, default=4.0)
    ap.add_argument("--prior-steps", type=int, default=600)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--figure", type=Path, default=None, help="where the picture goes (default OUT/latent3d-samples.png)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from medidiff.core.autoencoder import Autoencoder
    from medidiff.reporting.figures import save_grid
    from medidiff.tasks.latent import generate_latent_steps, train_autoencoder, train_latent

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    train, held, other = load()
    ae_data = Scan(train.array[:AE_TRAIN_Z], train.spacing, train.affine, "MR", train.meta)
    ae_res = train_autoencoder([ae_data], args.out / "ae", dims=3, image_size=(32, 32, 32), steps=100000,
                               batch_size=4, lr=2e-3, minutes=args.ae_minutes, seed=0, device=args.device,
                               overwrite=True)
    ae = ae_res.autoencoder.to(args.device)
    ae.network.eval()
    untrained = Autoencoder.create(3, 32, normaliser=ae.normaliser, seed=0)
    rt = {}
    for name, vol in (("heldout_slab", held.array[HELDOUT_Z:]), ("heldout_frame", held.array),
                      ("other_subject", other.array)):
        got, ref = _roundtrip(ae, vol)
        rt[name] = {"autoencoder_db": round(got, 2), "trilinear_4x_db": round(ref, 2),
                    "untrained_db": round(_roundtrip(untrained, vol)[0], 2)}
    ae_summary = {"steps": len(ae_res.losses), "seconds": round(ae_res.seconds, 1),
                  "steps_per_s": round(len(ae_res.losses) / ae_res.seconds, 3), "parameters": ae.num_parameters(),
                  "roundtrip_psnr": rt}
    print(json.dumps(ae_summary), flush=True)

    lat = train_latent([train], ae, args.out / "run", steps=args.prior_steps, batch_size=2, lr=2e-3, seed=0,
                       device=args.device, checkpoint_every=0, overwrite=True)
    model = lat.model
    prior_summary = {"steps": args.prior_steps, "seconds": round(lat.seconds, 1),
                     "steps_per_s": round(args.prior_steps / lat.seconds, 3),
                     "parameters": model.prior.num_parameters(), "latent": list(model.prior.config.image_size),
                     "field": list(model.field_size), "scale_factor": round(model.scale_factor, 5),
                     "final_loss": round(float(np.mean(lat.losses[-50:])), 4)}
    print(json.dumps(prior_summary), flush=True)

    gen = generate_latent_steps(args.out / "run" / "model", args.samples, seed=0, steps=25, sampler=SAMPLER,
                                batch_size=1, device=args.device)
    windows = None
    t = time.perf_counter()
    result = None
    try:
        while True:
            event = next(gen)
            if windows is None and event.values and "latent windows" in event.values:
                windows = int(event.values["latent windows"])
    except StopIteration as stop:
        result = stop.value
    s_per_sample = (time.perf_counter() - t) / args.samples
    vols = [s.array for s in result.scans]
    assert windows == 0 and all(v.shape == train.shape for v in vols), (windows, [v.shape for v in vols])
    gen_summary = {"n": args.samples, "shape": list(vols[0].shape), "latent_windows": windows,
                   "s_per_sample": round(s_per_sample, 1),
                   "ncc_training": [round(ncc(v, train.array), 3) for v in vols],
                   "ncc_heldout": [round(ncc(v, held.array), 3) for v in vols],
                   "ncc_training_vs_heldout": round(ncc(train.array, held.array), 4),
                   "ncc_training_vs_mirror": round(ncc(train.array, train.array[..., ::-1]), 3),
                   "kid_axial_slices": _kid(vols, train.array, held.array)}
    gen_summary["memorisation"] = _memorisation(vols, train.array, held.array)
    print(json.dumps(gen_summary), flush=True)

    rows = [("real frame 0 (train)", train.array), ("real frame 1 (held out)", held.array)]
    rows += [(f"sample {k} (NCC {gen_summary['ncc_training'][k]:.2f})", v) for k, v in enumerate(vols)]
    images, titles = [], []
    for name, vol in rows:
        for view, img in zip(("axial", "coronal", "sagittal"), views(vol, train.affine, train.spacing)):
            images.append(img)
            titles.append(f"{name}: {view}")
    real_range = tuple(float(v) for v in np.percentile(train.array, [0.5, 99.5]))
    figure = args.figure or args.out / "latent3d-samples.png"
    save_grid(images, figure, titles=titles, ncols=3, value_range=real_range, cell_inches=2.4,
              suptitle=f"3D latent diffusion, 64x96x128 in one piece (tiny AE {ae_summary['steps']} steps + tiny "
                       f"prior {args.prior_steps} steps, CPU): mid-slices")
    results = {"autoencoder": ae_summary, "prior": prior_summary, "generation": gen_summary,
               "wall_seconds": round(time.perf_counter() - t_all, 1), "threads": torch.get_num_threads(),
               "figure": str(figure)}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
