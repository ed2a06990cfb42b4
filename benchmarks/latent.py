"""Latent diffusion on the CPU: autoencoder PSNR vs training time, prior speed vs a pixel model,
and a contact sheet of samples beside real slices.

    OMP_NUM_THREADS=1 python benchmarks/latent.py [--out OUT] [--ae-steps 600] [--eval-every 100]
        [--prior-steps 1500] [--speed-steps 20] [--kid-samples 32] [--reuse] [--device cpu]

``--reuse`` skips steps 1-2 and the prior's training of step 3 when OUT holds the models of an
earlier run (OUT/ae, OUT/run/model), and measures steps 3-5 on them.

Data: nibabel's example4d.nii.gz, volume 0, whole axial slices of 96 x 128 (2 mm); slices z < 16
train, z >= 18 are held out (the split every medidiff test uses).

1. a tiny autoencoder (4x per axis) on 64x64 crops; every ``--eval-every`` steps the clock is
   paused and the round-trip PSNR of the held-out whole slices is measured (network units, data
   range of each reference), next to two references: 4x area-downsampling + bicubic upsampling
   (what a 24x32 image keeps), and the untrained autoencoder;
2. training speed (optimiser steps/s, batch 16, tiny preset) of the latent prior on 24x32 latents
   and of a pixel-space model on the same 96x128 slices; sampling time per image (dpm++2m, 20 steps);
3. a latent prior trained for ``--prior-steps`` steps; 8 samples beside 8 real training slices in
   OUT/latent-samples.png, and each sample's nearest training slice (NCC; 1 = a copy);
4. ``--kid-samples`` samples written as a data set by the shared path (OUT/synth: manifest, data
   card, quality report without real pixels), KID with its bootstrap interval against the held-out
   slices and against the training slices, each next to its real-vs-real floor (two halves of that
   real set), the training-vs-held-out KID, the memorisation check, and the evaluate report's
   contact sheet (samples beside real slices, OUT/latent-evaluate.png: not in the data set);
5. the seam at 2x the training field (192 x 256, one latent, decoded whole): ``seam_ratio`` at
   the borders windows of the training field would have, 16 samples, next to the same measure at
   that grid shifted by 4..40 pixels (what anatomy alone does to it); OUT/latent-2x.png.

Prints a Markdown summary and writes OUT/results.json.
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

SAMPLER = "dpm++2m"  # named, so the numbers do not move when the library's default sampler does


def load() -> tuple[Scan, np.ndarray, np.ndarray]:
    path = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data" / "example4d.nii.gz"
    img = nibabel.load(path)
    vol = np.asarray(img.dataobj)[..., 0].astype(np.float32).T  # (z, y, x) = (24, 96, 128)
    zooms = tuple(float(z) for z in reversed(img.header.get_zooms()[:3]))
    return Scan(vol[:16], zooms, img.affine, "MR", {"source_path": str(path)}), vol[:16], vol[18:]


def roundtrip_psnr(ae, slices) -> float:
    from medidiff.core.metrics import psnr

    out = []
    for s in slices:
        norm = ae.normaliser.for_scan(s)
        x = norm.forward(s)
        rec = ae.decode(ae.encode(torch.from_numpy(x)[None, None])).cpu().numpy()[0, 0]
        out.append(psnr(x, rec))
    return float(np.mean(out))


def bicubic_psnr(ae, slices, factor: int = 4) -> float:
    from skimage.transform import resize

    from medidiff.core.metrics import psnr

    out = []
    for s in slices:
        x = ae.normaliser.for_scan(s).forward(s)
        small = x.reshape(x.shape[0] // factor, factor, x.shape[1] // factor, factor).mean(axis=(1, 3))
        out.append(psnr(x, resize(small, x.shape, order=3, mode="edge").astype(np.float32)))
    return float(np.mean(out))


def autoencoder_curve(train: Scan, heldout, out: Path, steps: int, every: int, device: str) -> tuple[list[dict], object]:
    """Train once; at every ``every`` steps pause the clock and measure the held-out PSNR."""
    import medidiff.tasks.autoencoder_train as at
    from medidiff.core.autoencoder import Autoencoder

    captured = {}
    original = at.Autoencoder.create

    def create(*args, **kwargs):  # keep a handle on the network being trained
        ae = original(*args, **kwargs)
        captured["ae"] = ae
        return ae

    at.Autoencoder.create = create  # type: ignore[method-assign]
    try:
        gen = at.train_autoencoder_steps([train], out / "ae", steps=steps, batch_size=8, image_size=64, lr=2e-3,
                                         seed=0, device=device, overwrite=True)
        rows, timer = [], {"clock": 0.0, "last": time.perf_counter()}

        def evaluate(event) -> None:  # between training steps; evaluation time is not training time
            if event.step and event.step % every == 0:
                timer["clock"] += time.perf_counter() - timer["last"]
                ae = captured["ae"]
                ae.network.eval()
                rows.append({"step": event.step, "train_seconds": round(timer["clock"], 1),
                             "heldout_psnr_db": round(roundtrip_psnr(ae, heldout), 2)})
                ae.network.train()
                print(rows[-1], flush=True)
                timer["last"] = time.perf_counter()

        result = run_to_end(gen, callback=evaluate)
    finally:
        at.Autoencoder.create = original  # type: ignore[method-assign]
    untrained = Autoencoder.create(2, 64, normaliser=result.autoencoder.normaliser, seed=0)
    refs = {"untrained_psnr_db": round(roundtrip_psnr(untrained, heldout), 2),
            "bicubic_4x_psnr_db": round(bicubic_psnr(result.autoencoder, heldout), 2),
            "parameters": result.autoencoder.num_parameters()}
    return rows, result, refs


def speed(train: Scan, ae_dir: Path, steps: int, device: str) -> dict:
    from medidiff.core.sampling import generate_batch
    from medidiff.tasks.latent import generate_latent, train_latent
    from medidiff.tasks.train import train as train_pixel

    lat = train_latent([train], ae_dir, None, steps=steps, batch_size=16, seed=0, device=device, checkpoint_every=0)
    pix = train_pixel([train], None, dims=2, image_size=(96, 128), steps=steps, batch_size=16, seed=0, device=device,
                      checkpoint_every=0)
    t = time.perf_counter()
    generate_latent(lat.model, 4, seed=0, steps=20, sampler=SAMPLER, batch_size=4, device=device)
    lat_sample = (time.perf_counter() - t) / 4
    t = time.perf_counter()
    run_to_end(generate_batch(pix.model, [0, 1, 2, 3], steps=20, sampler=SAMPLER))
    pix_sample = (time.perf_counter() - t) / 4
    return {"latent_steps_per_s": round(steps / lat.seconds, 2), "pixel_steps_per_s": round(steps / pix.seconds, 2),
            "latent_s_per_sample": round(lat_sample, 3), "pixel_s_per_sample": round(pix_sample, 3),
            "latent_prior_parameters": lat.model.prior.num_parameters(), "pixel_parameters": pix.model.num_parameters()}


def contact_sheet(train: Scan, real: np.ndarray, ae_dir: Path, out: Path, steps: int, device: str,
                  reuse: bool = False) -> dict:
    from medidiff.core.metrics.distributions import nearest_neighbours
    from medidiff.reporting.figures import radiological, save_grid
    from medidiff.tasks.latent import generate_latent, train_latent

    if reuse and (out / "run" / "model" / "latent.json").is_file():
        from types import SimpleNamespace

        from medidiff.core.latent_model import LatentModel

        record = LatentModel.load(out / "run" / "model").prior.config.training
        steps = int(record["steps_done"])
        lat = SimpleNamespace(seconds=float(record["seconds_this_session"]), losses=[float(record["final_loss"])])
    else:
        lat = train_latent([train], ae_dir, out / "run", steps=steps, batch_size=16, lr=2e-3, seed=0, device=device,
                           checkpoint_every=0, overwrite=True)
    samples = generate_latent(out / "run" / "model", 8, seed=0, steps=25, sampler=SAMPLER, device=device)
    imgs = [s.array for s in samples.scans]
    idx, ncc = nearest_neighbours(np.stack(imgs), real, metric="ncc")
    aff, mod = samples.scans[0].affine, "MR"
    show = [radiological(i, aff, mod) for i in imgs] + [radiological(r, train.affine, mod) for r in real[::2][:8]]
    titles = [f"sample {k} (NN {ncc[k]:.2f})" for k in range(8)] + [f"real z={2 * k}" for k in range(8)]
    save_grid(show, out / "latent-samples.png", titles=titles, ncols=8,
              suptitle=f"latent diffusion (tiny AE + tiny prior, {steps} steps, {lat.seconds:.0f} s CPU): "
                       "samples (top) vs real training slices (bottom)")
    return {"prior_steps": steps, "prior_seconds": round(lat.seconds, 1), "nearest_ncc": [round(float(v), 3) for v in ncc],
            "nearest_index": [int(i) for i in idx], "final_loss": round(float(np.mean(lat.losses[-50:])), 4)}


def quality(train: Scan, real: np.ndarray, heldout: np.ndarray, out: Path, n: int, device: str) -> dict:
    from medidiff.core.latent_model import LatentModel, seam_ratio, window_borders
    from medidiff.reporting.figures import radiological, save_grid
    from medidiff.tasks.dataset import generate_dataset
    from medidiff.tasks.latent import generate_latent
    from medidiff.tasks.quality import evaluate_generated

    model_dir = out / "run" / "model"
    t = time.perf_counter()
    res = generate_dataset(model_dir, out / "synth", n, seed=100, steps=25, sampler=SAMPLER, device=device,
                           overwrite=True,
                           real=list(heldout), training=[train])
    gen_s = time.perf_counter() - t
    q = res.quality
    # the evaluate report may show real pixels (it is not shared): samples beside real slices
    evaluate_generated(out / "synth", list(heldout), [train], report=out / "latent-evaluate.png", real_pixels=True)
    q_train = evaluate_generated(out / "synth", list(real))

    def kid(r) -> dict:
        return {"kid": round(r.kid, 4), "kid_std": round(r.kid_std, 4), "kid_95": [round(r.kid_low, 4), round(r.kid_high, 4)],
                "floor": round(r.kid_floor, 4), "floor_std": round(r.kid_floor_std, 4),
                "floor_95": [round(r.kid_floor_low, 4), round(r.kid_floor_high, 4)], "n_samples": r.n_samples, "n_real": r.n_real}

    lm = LatentModel.load(model_dir)
    f, lat = lm.autoencoder.factor, tuple(lm.prior.config.image_size)
    big = generate_latent(lm, 16, seed=0, steps=25, sampler=SAMPLER, image_size=tuple(2 * f * s for s in lat), device=device)
    imgs = np.stack([s.array for s in big.scans])
    borders = [[b * f for b in window_borders(2 * s, s, 0.25)] for s in lat]
    # the same measure at the grid shifted by 4..40 pixels: how much anatomy alone moves it
    null = [seam_ratio(imgs, [[b + sh for b in ax] for ax in borders], period=f)
            for sh in range(-40, 41, 4) if sh != 0]
    true = seam_ratio(imgs, borders, period=f)
    same = generate_latent(lm, 4, seed=0, steps=25, sampler=SAMPLER, device=device)
    save_grid([radiological(i, big.scans[0].affine, "MR") for i in imgs[:8]], out / "latent-2x.png", ncols=4,
              suptitle="2x the training field (192 x 256), one latent, decoded whole")
    return {"n": n, "generate_seconds": round(gen_s, 1), "vs_heldout": kid(q), "vs_training": kid(q_train),
            "training_vs_heldout_kid": round(q.kid_training, 4), "training_vs_heldout_std": round(q.kid_training_std, 4),
            "max_nearest_training_score": round(q.max_similarity, 3), "memorisation_rule": q.rule, "flagged": len(q.flagged),
            "diversity_samples": round(q.diversity_samples, 3), "diversity_real": round(q.diversity_real, 3),
            "seam_ratio_2x": round(true, 3), "seam_ratio_2x_4_samples": round(seam_ratio(imgs[:4], borders, period=f), 3),
            "seam_shifted_grids_min_median_max": [round(float(v), 3) for v in (min(null), np.median(null), max(null))],
            "seam_true_grid_rank": f"{1 + sum(v > true for v in null)} of {len(null) + 1}",
            "seam_per_line": {f"{'yx'[a]}={b}": round(seam_ratio(imgs, [[b] if k == a else [] for k in range(2)], period=f), 3)
                              for a in range(2) for b in borders[a]},
            "seam_ratio_1x_fake_borders": round(seam_ratio(np.stack([s.array for s in same.scans]),
                                                           [[lat[0] * f // 2], [lat[1] * f // 2]], period=f), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/medidiff-bench-latent"))
    ap.add_argument("--ae-steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--prior-steps", type=int, default=1500)
    ap.add_argument("--speed-steps", type=int, default=20)
    ap.add_argument("--kid-samples", type=int, default=32)
    ap.add_argument("--reuse", action="store_true", help="measure the models an earlier run left in --out")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    train, real, heldout = load()
    reuse = args.reuse and (args.out / "run" / "model" / "latent.json").is_file()
    if reuse:
        rows, refs, sp = [], {}, {}
    else:
        rows, ae_result, refs = autoencoder_curve(train, list(heldout), args.out, args.ae_steps, args.eval_every,
                                                  args.device)
        sp = speed(train, args.out / "ae", args.speed_steps, args.device)
    print(sp, flush=True)
    sheet = contact_sheet(train, real, args.out / "ae", args.out, args.prior_steps, args.device, reuse=reuse)
    qual = quality(train, real, heldout, args.out, args.kid_samples, args.device)
    results = {"autoencoder_curve": rows, "autoencoder_refs": refs, "speed": sp, "contact_sheet": sheet,
               "quality": qual, "threads": torch.get_num_threads()}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| AE steps | train s | held-out PSNR dB |\n|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['train_seconds']} | {r['heldout_psnr_db']} |")
    print(json.dumps({"refs": refs, "speed": sp, "sheet": sheet, "quality": qual}, indent=2))


if __name__ == "__main__":
    main()
