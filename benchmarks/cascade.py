"""A super-resolution cascade against one latent model at the same training budget (issue 14 §2).

    OMP_NUM_THREADS=1 python benchmarks/cascade.py --out OUT --arm latent-sr  # and, at the same time,
    OMP_NUM_THREADS=1 python benchmarks/cascade.py --out OUT2 --arm cascade

Data: nibabel's example4d.nii.gz volume 0, whole axial slices 96 x 128 (the split of
``benchmarks/latent.py``): z < 16 train, z >= 18 held out. Both arms spend the same two budgets:

* **latent** (the recipe `benchmarks/latent_recipe.py` measured best at CPU budgets): the tiny
  autoencoder, 4x per axis, L1, 3000 steps (its seconds are the first budget), then the tiny
  v-prediction prior on the 24 x 32 latents for ``--minutes`` (the second budget).
* **cascade**: a tiny v-prediction *pixel* prior on the training slices block-averaged 4x
  (24 x 32 images at 8 mm, the same grid as the latents) for ``--minutes``, then a tiny
  v-prediction super-resolution model (``train(..., super_resolution=4)``, ``--sr-crop`` crops)
  for the seconds the autoencoder took in the latent arm (``--sr-seconds``; default 285, the
  3000-step autoencoder's time on these machines). A low-resolution sample is upsampled by
  :func:`medidiff.tasks.super_resolution.upsample` (25 dpm++2m steps, windows of the crop, 1/2 overlap).
  The same low-resolution samples are also upsampled bicubically (row ``cascade, bicubic``: what the
  super-resolution model adds). The prior trains on axial slices (``slice_axis=0``: after the block
  mean the in-plane voxels are coarser than the slices, and the default would cut coronal strips).
* **latent-sr**: the latent arm (row ``latent``; ``--latent DIR`` reuses a trained one), and its samples
  block-averaged ``--factor`` times and upsampled by a super-resolution model trained for
  ``--sr-seconds`` more (row ``latent + sr``): the stage as a refiner of a latent model.

Steps per budget come from a 25-step probe (as ``latent_recipe.py``), so each learning-rate schedule
completes. Scores (``latent_recipe.py``'s): 32 samples drawn twice, seeds from 100 (**validation**:
KID against the 16 training slices) and from 200 (**test**: KID against the 6 held-out slices),
symmetry, structure-ncc memorisation; for the cascade also the consistency of its output with the
low-resolution sample it was given (PSNR of the output's block mean against it, in network units of
the sample) and the window seam (``seam_ratio`` at the window borders; 1 = none).

Writes OUT/NAME.json, OUT/samples-NAME.png and .npy per row, and the models under OUT/models/ARM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from latent import load  # noqa: E402
from latent_recipe import measure, memorisation, sheet, symmetry  # noqa: E402

SAMPLER = "dpm++2m"
PRIOR = {"preset": "tiny", "batch_size": 16, "lr": 2e-3, "prediction": "v_prediction", "ema_decay": 0.999}
FACTOR = 4


def _budgeted(make, seconds: float):
    """Train ``make(steps)`` for about ``seconds``: a 25-step probe sets the step count."""
    probe = make(25)
    rate = 25 / probe.seconds
    steps = max(50, int(seconds * rate))
    res = make(steps)
    return res, {"steps": steps, "train_seconds": round(res.seconds, 1), "probe_steps_per_s": round(rate, 2)}


COMMON = dict(dims=2, device="cpu", checkpoint_every=0, checkpoint_minutes=0, seed=0, **PRIOR)


def train_sr(train, sr_seconds: float, sr_crop: int, factor: int):
    from medidiff.tasks.train import train as train_pixel

    sr, srow = _budgeted(lambda s: train_pixel([train], None, image_size=sr_crop, steps=s, super_resolution=factor,
                                               **COMMON), sr_seconds)
    return sr.model, {**srow, "crop": sr_crop, "factor": factor}


def train_cascade(train, minutes: float, sr_seconds: float, sr_crop: int, factor: int):
    from medidiff.core.data import block_mean
    from medidiff.tasks.train import train as train_pixel

    low = block_mean_slices(train, factor) if train.ndim == 3 else block_mean(train, factor)  # in-plane only
    # axial slices: after the block mean the in-plane voxels (8 mm) are coarser than the slices (2.2 mm),
    # so the default (slice along the coarsest axis) would cut coronal strips
    prior, prow = _budgeted(lambda s: train_pixel([low], None, image_size=tuple(low.shape[1:]), steps=s, slice_axis=0,
                                                  **COMMON),
                            minutes * 60)
    sr, srow = train_sr(train, sr_seconds, sr_crop, factor)
    return prior.model, sr, {"prior": prow, "super_resolution": srow}


def block_mean_slices(volume, factor: int):
    """Each axial slice of ``volume`` block-averaged in-plane (the slices themselves are kept)."""
    from medidiff.core.data import block_mean
    from medidiff.io.scan import Scan

    one = block_mean(Scan(volume.array[0], volume.spacing[1:], volume.affine, volume.modality), factor)
    arr = np.stack([block_mean(Scan(z, volume.spacing[1:], volume.affine, volume.modality), factor).array
                    for z in volume.array])
    affine = volume.affine.copy()
    affine[:, :2] = one.affine[:, :2]
    affine[:3, 3] = one.affine[:3, 3]
    return Scan(arr, (volume.spacing[0], *one.spacing), affine, volume.modality, volume.meta)


def train_latent_arm(train, out: Path, minutes: float, ae_steps: int = 3000):
    from medidiff.tasks.autoencoder_train import train_autoencoder
    from medidiff.tasks.latent import train_latent

    ae_dir = out / f"ae-{ae_steps}"
    ae = train_autoencoder([train], ae_dir, steps=ae_steps, batch_size=8, image_size=64, lr=2e-3, seed=0, device="cpu",
                           overwrite=True)
    prior, prow = _budgeted(lambda s: train_latent([train], ae_dir, None, steps=s, seed=0, device="cpu",
                                                   checkpoint_every=0, checkpoint_minutes=0, **PRIOR), minutes * 60)
    return prior.model, {"autoencoder": {"steps": ae_steps, "train_seconds": round(ae.seconds, 1)}, "prior": prow}


def draw_cascade(low_samples, sr, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """``n`` cascade samples (96 x 128) of ``low_samples(n, seed)`` (low-resolution Scans), their bicubic twins,
    and the consistency / seam / time numbers."""
    from skimage.transform import resize

    from medidiff.core.latent_model import seam_ratio, window_borders
    from medidiff.core.metrics import psnr
    from medidiff.tasks.generate import generate
    from medidiff.tasks.super_resolution import upsample

    t0 = time.perf_counter()
    low = low_samples(n, seed)
    t1 = time.perf_counter()
    up = upsample(sr, low, seed=seed, steps=25, sampler=SAMPLER)
    t2 = time.perf_counter()
    out = np.stack([s.array for s in up])
    bicubic = np.stack([resize(s.array, out.shape[1:], order=3, mode="edge") for s in low]).astype(np.float32)
    consistency = []
    f = sr.config.lowres_factor
    for s, u in zip(low, out):
        norm = sr.normaliser.for_scan(s.array)
        d = u.reshape(u.shape[0] // f, f, u.shape[1] // f, f).mean(axis=(1, 3))
        consistency.append(psnr(norm.forward(s.array), norm.forward(d)))
    roi = sr.config.image_size
    borders = [window_borders(out.shape[1], roi[0], 0.5), window_borders(out.shape[2], roi[1], 0.5)]
    return out, bicubic, {"consistency_psnr": round(float(np.mean(consistency)), 2),
                          "seam_ratio": round(float(seam_ratio(out, borders)), 3),
                          "seconds_per_sample": {"low": round((t1 - t0) / n, 3), "upsample": round((t2 - t1) / n, 3)}}


def draw_latent(model, n: int, seed: int) -> tuple[np.ndarray, dict]:
    from medidiff.tasks.generate import generate

    t0 = time.perf_counter()
    res = generate(model, n, seed=seed, steps=25, sampler=SAMPLER, device="cpu")
    return np.stack([np.asarray(s.array, np.float32) for s in res.scans]), {
        "seconds_per_sample": round((time.perf_counter() - t0) / n, 3)}


def scores(val: np.ndarray, test: np.ndarray, real: np.ndarray, heldout: np.ndarray) -> dict:
    return {"validation_kid_vs_training": measure(val, real), "test_kid_vs_heldout": measure(test, heldout),
            "symmetry": round(float(np.nanmean([symmetry(s) for s in test])), 3), **memorisation(test, real)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/medidiff-bench-cascade"))
    ap.add_argument("--arm", choices=("latent", "cascade", "latent-sr"), required=True,
                    help="latent-sr: the latent arm, and its samples block-averaged and upsampled by a "
                         "super-resolution model trained for --sr-seconds more (rows latent and latent + sr)")
    ap.add_argument("--factor", type=int, default=FACTOR, help="the upsampling factor (cascade and latent-sr arms)")
    ap.add_argument("--latent", type=Path, default=None,
                    help="latent-sr: reuse this latent model folder (e.g. OUT/models/latent-sr/latent) instead of "
                         "training one; its budget is then not re-measured")
    ap.add_argument("--minutes", type=float, default=4.0, help="the prior's budget (both arms)")
    ap.add_argument("--sr-seconds", type=float, default=285.0, help="the super-resolution model's budget (cascade)")
    ap.add_argument("--sr-crop", type=int, default=32, help="training crop of the super-resolution model")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--ae-steps", type=int, default=3000, help="the latent arm's autoencoder steps")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    train, real, heldout = load()
    result: dict = {"arm": args.arm, "minutes": args.minutes, "threads": torch.get_num_threads(), "rows": {}}
    from medidiff.core.data import block_mean
    from medidiff.tasks.generate import generate

    name = {"latent": "latent", "latent-sr": f"latent + sr x{args.factor}, {args.sr_seconds:.0f} s",
            "cascade": f"cascade x{args.factor}, sr{args.sr_crop}"}[args.arm]
    models = args.out / "models" / args.arm
    shown = {}
    if args.arm == "latent-sr" and args.latent is not None:
        from medidiff.core.latent_model import LatentModel

        model, budget = LatentModel.load(args.latent), {"latent": str(args.latent)}
    elif args.arm in ("latent", "latent-sr"):
        model, budget = train_latent_arm(train, args.out, args.minutes, args.ae_steps)
        model.save(models / "latent", overwrite=True)
        val, _ = draw_latent(model, args.samples, 100)
        test, extra = draw_latent(model, args.samples, 200)
        result["rows"]["latent"] = {**budget, **extra, **scores(val, test, real, heldout)}
        shown["latent"] = test
    if args.arm == "latent-sr":
        sr, srow = train_sr(train, args.sr_seconds, args.sr_crop, args.factor)
        sr.save(models / "sr", overwrite=True)
        budget = {**budget, "super_resolution": srow}

        def low_samples(n: int, seed: int) -> list:
            scans = generate(model, n, seed=seed, steps=25, sampler=SAMPLER, device="cpu").scans
            return [block_mean(sc, args.factor) for sc in scans]
    elif args.arm == "cascade":
        prior, sr, budget = train_cascade(train, args.minutes, args.sr_seconds, args.sr_crop, args.factor)
        prior.save(models / "prior", overwrite=True)
        sr.save(models / "sr", overwrite=True)

        def low_samples(n: int, seed: int) -> list:
            return generate(prior, n, seed=seed, steps=25, sampler=SAMPLER, device="cpu").scans
    if args.arm != "latent":
        val, val_bic, _ = draw_cascade(low_samples, sr, args.samples, 100)
        test, test_bic, extra = draw_cascade(low_samples, sr, args.samples, 200)
        result["rows"][name] = {**budget, **extra, **scores(val, test, real, heldout)}
        result["rows"][f"{name}, bicubic"] = {"prior": budget.get("prior", budget.get("latent")), **scores(val_bic, test_bic, real, heldout)}
        shown.update({name: test, f"{name}, bicubic": test_bic})
    for key, samples in shown.items():
        safe = "".join(c if c.isalnum() else "-" for c in key)
        np.save(args.out / f"samples-{safe}.npy", samples)
        sheet(samples, real, train, args.out / f"samples-{safe}.png", key)
    (args.out / f"{''.join(c if c.isalnum() else '-' for c in name)}.json").write_text(json.dumps(result, indent=2) + "\n")
    for key, r in result["rows"].items():
        v, t = r["validation_kid_vs_training"], r["test_kid_vs_heldout"]
        print(f"| {key} | {v['kid']:.3f} [{v['kid_95'][0]:.3f}, {v['kid_95'][1]:.3f}] | {t['kid']:.3f} "
              f"[{t['kid_95'][0]:.3f}, {t['kid_95'][1]:.3f}] | {r['symmetry']:.3f} | {r['max_structure_ncc']:.3f} "
              f"({r['flagged']}) |")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
