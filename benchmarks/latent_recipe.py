"""Generation recipe at equal compute (issue 14 section 3): which prior settings learn most per CPU minute.

    OMP_NUM_THREADS=1 python benchmarks/latent_recipe.py --out OUT [--ae-steps 1000] [--minutes 4]
        [--variants base lr1e-3 ...] [--samples 32]

Data: nibabel's example4d.nii.gz volume 0, whole axial slices 96 x 128 (the split of
``benchmarks/latent.py``): z < 16 train, z >= 18 held out.

1. One tiny autoencoder (4x per axis, 64 x 64 crops, batch 8, lr 2e-3) is trained once (``--ae-steps``)
   and shared by every latent row (its seconds are reported once: every latent row also pays them).
   ``--ae DIR`` reuses one.
2. Each variant trains a prior for the same wall-clock budget (``--minutes``): a 25-step probe
   measures its optimiser steps per second, then the run gets ``minutes * 60 * rate`` steps, so its
   learning-rate schedule still completes (a run stopped by the clock would end mid-schedule).
   The seconds actually spent are reported. The ``pixel`` row trains the same tiny network directly
   on the 96 x 128 slices for the same budget (no autoencoder).
3. Each model draws ``--samples`` samples twice (dpm++2m, 25 steps; euler for rflow): seeds from 100 (the
   **validation** draw, on which the recipe is chosen: KID against the 16 training slices, the
   distribution the prior is asked to match) and from 200 (the **test** draw: KID against the 6
   held-out slices, never used for a choice). KID on medidiff's hand-made features with a
   bootstrap interval; the real-vs-real floors are printed once.
4. Two numbers the features do not see: **symmetry** (NCC of a slice with its mirror image about the
   brain's own vertical centre line, inside the brain, smoothed by 2 px first so that it compares
   hemispheres, not grain; real slices read ~0.7) and the **structure-ncc** memorisation score
   (highest, and how many samples reach the rule's threshold).
5. ``--ae-variants``: other autoencoders (a longer L1 run; the patch-adversarial term for the same
   wall time), each measured (held-out PSNR, share of high-frequency power kept) and then given the
   ``--ae-prior`` prior (default ``base``), rows ``ae:NAME``.

Prints a Markdown table and writes OUT/results-VARIANTS.json and, per row, OUT/samples-NAME.png
(8 samples of the test draw beside real slices) and OUT/samples-NAME.npy (the whole test draw).
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

SAMPLER = "dpm++2m"
BASE = {"preset": "tiny", "batch_size": 16, "lr": 2e-3, "schedule": "ddpm", "prediction": None, "ema_decay": 0.999}
VARIANTS: dict[str, dict] = {
    "base": {},                                   # benchmarks/latent.py's prior recipe
    "lr1e-3": {"lr": 1e-3},                       # the library default
    "lr5e-3": {"lr": 5e-3},
    "batch8": {"batch_size": 8},
    "batch32": {"batch_size": 32},
    "v-prediction": {"prediction": "v_prediction"},
    "rflow": {"schedule": "rflow", "prediction": "flow"},
    "no-ema": {"ema_decay": 0.0},
    "small": {"preset": "small"},
    "small-v": {"preset": "small", "prediction": "v_prediction"},  # the two best single changes together
    "pixel": {"pixel": True},                     # the same tiny network on the 96 x 128 pixels
}


# autoencoder variants (each then gets the `base` prior); `adversarial` gets the wall time `l1-long` took
AE_VARIANTS: dict[str, dict] = {
    "l1-long": {"steps": 3000},
    "l1-long-cosine": {"steps": 3000, "lr_schedule": "cosine"},
    "l1-long-cosine-4e-3": {"steps": 3000, "lr_schedule": "cosine", "lr": 4e-3},
    "l1-9000-cosine": {"steps": 9000, "lr_schedule": "cosine"},
    "adversarial": {"steps": 10**6, "adversarial_weight": 0.01, "adversarial_start": 1000, "same_time_as": "l1-long"},
    "small-same-time": {"steps": 10**6, "preset": "small", "same_time_as": "l1-long"},  # a wider autoencoder, same wall time
}


def autoencoder_quality(ae_dir: Path, heldout: np.ndarray) -> dict:
    """Held-out round-trip PSNR and the share of high-frequency power kept (1 = all the texture)."""
    from medidiff.core.autoencoder import Autoencoder
    from medidiff.core.metrics import psnr

    ae = Autoencoder.load(ae_dir, device="cpu")
    db, kept = [], []
    for s in heldout:
        x = ae.normaliser.for_scan(s).forward(s)
        rec = ae.decode(ae.encode(torch.from_numpy(x)[None, None])).cpu().numpy()[0, 0]
        db.append(psnr(x, rec))
        fy, fx = np.meshgrid(np.fft.fftfreq(x.shape[0]), np.fft.fftfreq(x.shape[1]), indexing="ij")
        high = np.hypot(fy, fx) > 0.125  # above half the 4x latent grid's Nyquist frequency
        kept.append(float((np.abs(np.fft.fft2(rec))[high] ** 2).sum() / (np.abs(np.fft.fft2(x))[high] ** 2).sum()))
    return {"heldout_psnr_db": round(float(np.mean(db)), 2), "high_frequency_power_kept": round(float(np.mean(kept)), 3)}


def train_ae_variant(name: str, train, out: Path, seconds: dict) -> Path:
    from medidiff.tasks.autoencoder_train import train_autoencoder

    spec = dict(AE_VARIANTS[name])
    same = spec.pop("same_time_as", None)
    if same is not None:
        spec["minutes"] = seconds[same] / 60
    settings = {"batch_size": 8, "image_size": 64, "lr": 2e-3, "seed": 0, "device": "cpu", **spec}
    res = train_autoencoder([train], out / f"ae-{name}", overwrite=True, **settings)
    seconds[name] = res.seconds
    return out / f"ae-{name}"


def symmetry(img: np.ndarray, sigma: float = 2.0) -> float:
    """NCC of ``img`` with its mirror image about the brain's vertical centre line, inside the brain (Otsu).

    Smoothed first (Gaussian ``sigma`` pixels) so that it compares hemispheres and ventricles, not
    the scan's grain (raw EPI slices read 0.27-0.54, smoothed by 2 px 0.58-0.78)."""
    from scipy.ndimage import gaussian_filter, shift
    from skimage.filters import threshold_otsu

    x = gaussian_filter(np.asarray(img, np.float64), sigma)
    mask = x > threshold_otsu(x)
    if mask.sum() < 10:
        return float("nan")
    cx = float(np.nonzero(mask)[1].mean())
    offset = 2 * cx - (x.shape[1] - 1)  # the mirror of column c is 2 cx - c
    mirrored = shift(np.fliplr(x), (0, offset), order=1, mode="nearest")
    mmask = shift(np.fliplr(mask.astype(float)), (0, offset), order=0) > 0.5
    keep = mask | mmask
    a, b = x[keep] - x[keep].mean(), mirrored[keep] - mirrored[keep].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def _train(train, ae_dir: Path, settings: dict, steps: int, seed: int = 0):
    from medidiff.tasks.latent import train_latent
    from medidiff.tasks.train import train as train_pixel

    s = {k: v for k, v in {**BASE, **settings}.items() if k != "pixel"}
    if settings.get("pixel"):
        return train_pixel([train], None, dims=2, image_size=(96, 128), steps=steps, seed=seed, device="cpu",
                           checkpoint_every=0, checkpoint_minutes=0, **s)
    return train_latent([train], ae_dir, None, steps=steps, seed=seed, device="cpu", checkpoint_every=0,
                        checkpoint_minutes=0, **s)


def run_variant(name: str, train, ae_dir: Path, minutes: float) -> tuple[dict, object]:
    probe = _train(train, ae_dir, VARIANTS[name], 25)
    rate = 25 / probe.seconds
    steps = max(50, int(minutes * 60 * rate))
    res = _train(train, ae_dir, VARIANTS[name], steps)
    return {"steps": steps, "probe_steps_per_s": round(rate, 2), "train_seconds": round(res.seconds, 1),
            "final_loss": round(float(np.mean(res.losses[-50:])), 4)}, res.model


def draw(model, n: int, seed: int, settings: dict) -> np.ndarray:
    from medidiff.tasks.generate import generate

    sampler = "euler" if settings.get("schedule") == "rflow" else SAMPLER  # the one sampler rflow has
    res = generate(model, n, seed=seed, steps=25, sampler=sampler, device="cpu")
    return np.stack([np.asarray(s.array, np.float32) for s in res.scans])


def measure(samples: np.ndarray, real: np.ndarray) -> dict:
    from medidiff.core.metrics.distributions import kid_bootstrap
    from medidiff.core.metrics.features import image_features

    k = kid_bootstrap(image_features(samples), image_features(real))
    return {"kid": round(k.value, 4), "kid_std": round(k.std, 4), "kid_95": [round(k.low, 4), round(k.high, 4)]}


def memorisation(samples: np.ndarray, train_slices: np.ndarray) -> dict:
    from medidiff.core.metrics.memorisation import DEFAULT_RULE
    from medidiff.tasks.quality import nearest_training

    scores = [n.score for n in nearest_training(samples, list(train_slices))]
    return {"max_structure_ncc": round(float(max(scores)), 3),
            "flagged": int(sum(s >= DEFAULT_RULE.threshold for s in scores))}


def sheet(samples: np.ndarray, real: np.ndarray, train, path: Path, title: str) -> None:
    """8 test-draw samples (top) beside 8 real training slices (bottom), radiological view."""
    from medidiff.reporting.figures import radiological, save_grid

    show = [radiological(x, train.affine, "MR") for x in samples[:8]] + [radiological(r, train.affine, "MR")
                                                                         for r in real[::2][:8]]
    save_grid(show, path, titles=[f"sample {k}" for k in range(8)] + [f"real z={2 * k}" for k in range(8)], ncols=8,
              suptitle=f"{title}: samples (top) vs real training slices (bottom)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/medidiff-bench-latent-recipe"))
    ap.add_argument("--ae", type=Path, default=None, help="reuse this autoencoder folder instead of training one")
    ap.add_argument("--ae-steps", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=4.0, help="prior training budget per variant")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--ae-variants", nargs="*", default=[], choices=list(AE_VARIANTS),
                    help="also train these autoencoders and the --ae-prior prior on each (rows ae:NAME)")
    ap.add_argument("--ae-prior", default="base", choices=list(VARIANTS), help="the prior variant the ae rows use")
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    train, real, heldout = load()
    results: dict = {"minutes": args.minutes, "threads": torch.get_num_threads(), "rows": {}}
    ae_dir = args.ae
    if ae_dir is None:
        from medidiff.tasks.autoencoder_train import train_autoencoder

        ae_dir = args.out / "ae"
        t = time.perf_counter()
        train_autoencoder([train], ae_dir, steps=args.ae_steps, batch_size=8, image_size=64, lr=2e-3, seed=0,
                          device="cpu", overwrite=True)
        results["autoencoder"] = {"steps": args.ae_steps, "seconds": round(time.perf_counter() - t, 1), "dir": str(ae_dir)}
    from medidiff.core.metrics.distributions import kid_floor
    from medidiff.core.metrics.features import image_features

    fl_train, fl_held = kid_floor(image_features(real)), kid_floor(image_features(heldout))
    results["floors"] = {"training_halves": [round(fl_train.value, 4), round(fl_train.low, 4), round(fl_train.high, 4)],
                         "heldout_halves": [round(fl_held.value, 4), round(fl_held.low, 4), round(fl_held.high, 4)]}
    results["real_symmetry"] = {"training": round(float(np.mean([symmetry(r) for r in real])), 3),
                                "heldout": round(float(np.mean([symmetry(r) for r in heldout])), 3)}
    results["autoencoder_quality"] = {"shared": autoencoder_quality(ae_dir, heldout)}
    out_json = args.out / f"results-{'-'.join(args.variants + args.ae_variants)}.json"
    ae_seconds: dict[str, float] = {}
    jobs = [(name, name, ae_dir) for name in args.variants]
    for name in args.ae_variants:
        d = train_ae_variant(name, train, args.out, ae_seconds)
        results["autoencoder_quality"][name] = {**autoencoder_quality(d, heldout), "seconds": round(ae_seconds[name], 1),
                                               "steps": json.loads((d / "config.json").read_text())["training"]["steps_done"]}
        print(name, results["autoencoder_quality"][name], flush=True)
        jobs.append((f"ae:{name}", args.ae_prior, d))
    for name, variant, ae in jobs:
        print(f"== {name}", flush=True)
        row, model = run_variant(variant, train, ae, args.minutes)
        val, test = draw(model, args.samples, 100, VARIANTS[variant]), draw(model, args.samples, 200, VARIANTS[variant])
        np.save(args.out / f"samples-{name.replace(':', '-')}.npy", test)
        sheet(test, real, train, args.out / f"samples-{name.replace(':', '-')}.png", f"{name}: {row['steps']} prior steps, "
              f"{row['train_seconds']:.0f} s")
        row.update({"validation_kid_vs_training": measure(val, real), "test_kid_vs_heldout": measure(test, heldout),
                    "symmetry": round(float(np.nanmean([symmetry(s) for s in test])), 3), **memorisation(test, real),
                    "settings": {**BASE, **VARIANTS[variant]}, "autoencoder": str(ae)})
        results["rows"][name] = row
        print(json.dumps(row), flush=True)
        out_json.write_text(json.dumps(results, indent=2) + "\n")
    print("| variant | steps (s) | KID vs training (validation) | KID vs held-out (test) | symmetry | max structure-ncc (flagged) |")
    print("|---|---|---|---|---|---|")
    for name, r in results["rows"].items():
        v, t = r["validation_kid_vs_training"], r["test_kid_vs_heldout"]
        print(f"| {name} | {r['steps']} ({r['train_seconds']:.0f} s) | {v['kid']:.3f} [{v['kid_95'][0]:.3f}, {v['kid_95'][1]:.3f}] "
              f"| {t['kid']:.3f} [{t['kid_95'][0]:.3f}, {t['kid_95'][1]:.3f}] | {r['symmetry']:.3f} "
              f"| {r['max_structure_ncc']:.3f} ({r['flagged']}) |")
    print(json.dumps({k: results[k] for k in ("floors", "real_symmetry", "autoencoder_quality")} | {"autoencoder": results.get("autoencoder")}))


if __name__ == "__main__":
    main()
