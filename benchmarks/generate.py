"""Train on synthetic, test on real: is a mask-conditioned diffusion model's data good enough
to train a segmentation network?

    python benchmarks/generate.py [--out OUT] [--diffusion-steps 400] [--seg-iters 300] [--device cpu] [--model DIR]

``--model DIR`` reuses a mask-conditioned model trained with the same recipe (e.g. the test
fixture's, ``$MEDIDIFF_TEST_MODEL_CACHE/gen_mask/model``) instead of training one.

Data (see data_cards/benchmark-generate.md): nibabel's example4d.nii.gz, volume 0. Slices z < 16
are the real training pairs, slices z >= 18 the held-out test pairs (the split every medidiff
test and built-in model uses). The mask of a slice is its Otsu threshold (brain = 1), a
reproducible stand-in for a manual segmentation.

1. train a tiny mask-conditioned diffusion model on the 16 real (slice, mask) pairs (32x32 crops);
2. generate synthetic slices at full size (96 x 128, sliding window) conditioned on the *real
   training masks* (one or two per mask), time it (samples per second);
3. train the same small MONAI UNet (fixed seed, fixed iterations) on real pairs, on synthetic pairs,
   and on both, and test each on the held-out real pairs: Dice (mean over test slices);
4. quality of the synthetic set (KID, histogram distance, MS-SSIM diversity) against the real
   slices, and memorisation (the structure-ncc score of each synthetic slice with every training slice).

Prints a Markdown table (pasted in benchmarks/README.md) and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import nibabel
import numpy as np
import torch

from medidiff.io import Scan


def load_pairs() -> tuple[Scan, list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    from skimage.filters import threshold_otsu

    path = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data" / "example4d.nii.gz"
    img = nibabel.load(path)
    vol = np.asarray(img.dataobj)[..., 0].astype(np.float32).T  # (z, y, x) = (24, 96, 128)
    zooms = tuple(float(z) for z in reversed(img.header.get_zooms()[:3]))
    masks = [(s > threshold_otsu(s)).astype(np.float32) for s in vol]
    train = Scan(vol[:16], zooms, img.affine, "MR", {"source_path": str(path)})
    return train, list(vol[:16]), masks[:16], list(vol[18:]), masks[18:]


def train_segmenter(images: list[np.ndarray], masks: list[np.ndarray], scale: tuple[float, float], iters: int,
                    seed: int = 0, device: str = "cpu") -> torch.nn.Module:
    """A small MONAI UNet, Dice+CE loss, flips; everything seeded so runs differ only by their data."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64), strides=(2, 2),
               num_res_units=1).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = DiceCELoss(sigmoid=True)
    lo, hi = scale
    x_all = torch.from_numpy((np.stack(images) - lo) / (hi - lo)).float()[:, None]
    y_all = torch.from_numpy(np.stack(masks)).float()[:, None]
    rng = np.random.default_rng(seed)
    net.train()
    for _ in range(iters):
        idx = rng.integers(0, len(x_all), size=8)
        x, y = x_all[idx].clone(), y_all[idx].clone()
        flip = rng.random(8) < 0.5
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        opt.zero_grad()
        loss = loss_fn(net(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
    return net.eval()


def test_dice(net: torch.nn.Module, images: list[np.ndarray], masks: list[np.ndarray], scale: tuple[float, float],
              device: str = "cpu") -> float:
    from medidiff.core.metrics import dice

    lo, hi = scale
    with torch.inference_mode():
        x = torch.from_numpy((np.stack(images) - lo) / (hi - lo)).float()[:, None].to(device)
        pred = (net(x) > 0).cpu().numpy()[:, 0]
    return float(np.mean([dice(p, m) for p, m in zip(pred, masks)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-generate"))
    parser.add_argument("--diffusion-steps", type=int, default=400)
    parser.add_argument("--model", type=Path, default=None, help="reuse this mask-conditioned model (skip training)")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--seg-iters", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from medidiff.tasks.generate import generate
    from medidiff.tasks.quality import evaluate_generated
    from medidiff.tasks.train import train

    args.out.mkdir(parents=True, exist_ok=True)
    train_scan, tr_img, tr_msk, te_img, te_msk = load_pairs()
    slices = [Scan(a, train_scan.spacing[1:], train_scan.affine, "MR", {"source_path": train_scan.meta["source_path"]}) for a in tr_img]
    mask_scans = [s.with_array(m) for s, m in zip(slices, tr_msk)]

    t0 = time.perf_counter()
    if args.model is not None:
        from medidiff.core.model import DiffusionModel

        model = DiffusionModel.load(args.model, device=args.device)
        if not model.config.mask_classes:
            raise SystemExit(f"{args.model}: not a mask-conditioned model")
    else:
        model = train(slices, args.out / "diffusion", dims=2, preset="tiny", image_size=32, steps=args.diffusion_steps,
                      batch_size=16, lr=2e-3, seed=0, device=args.device, masks=mask_scans, mask_classes=1,
                      checkpoint_every=0, overwrite=True, data_card="data_cards/benchmark-generate.md",
                      command="python benchmarks/generate.py").model
    train_s = time.perf_counter() - t0 if args.model is None else float("nan")

    t0 = time.perf_counter()
    synth = generate(model, 2 * len(tr_msk), masks=tr_msk, seed=0, steps=args.sample_steps, sampler="dpm++2m",
                     device=args.device)
    gen_s = time.perf_counter() - t0
    syn_img = [s.array for s in synth.scans]
    syn_msk = [m.array for m in synth.masks]
    n = len(tr_img)

    scale = (model.normaliser.low, model.normaliser.high)
    runs = {
        f"real ({n})": (tr_img, tr_msk),
        f"synthetic ({n}, 1 per real mask)": (syn_img[:n], syn_msk[:n]),
        f"synthetic ({2 * n}, 2 per real mask)": (syn_img, syn_msk),
        f"real + synthetic ({3 * n})": (tr_img + syn_img, tr_msk + syn_msk),
    }
    dices = {}
    seg_s = {}
    for name, (imgs, msks) in runs.items():
        t0 = time.perf_counter()
        net = train_segmenter(imgs, msks, scale, args.seg_iters, device=args.device)
        seg_s[name] = time.perf_counter() - t0
        dices[name] = test_dice(net, te_img, te_msk, scale, device=args.device)
    q = evaluate_generated(syn_img, tr_img + te_img, [train_scan], report=args.out / "contact_sheet.png")
    # a reference for the memorisation numbers: how alike, by the same rule, are held-out real slices
    # (other slices of the same brain) to their nearest training slice?
    from medidiff.core.metrics.memorisation import structure_scores

    real_nn = np.array([m.score for m in structure_scores(te_img, tr_img)])

    base = dices[f"real ({n})"]
    print("| training data for the UNet | test Dice (6 held-out real slices) | ratio to real |")
    print("|---|---|---|")
    for name, d in dices.items():
        print(f"| {name} | {d:.4f} | {d / base:.3f} |")
    print()
    print("| synthetic set (32 slices, 96 x 128) | value |")
    print("|---|---|")
    for k, v in q.lines():
        print(f"| {k} | {v} |")
    print(f"| reference: held-out real slice vs nearest training slice, {q.rule} (mean / max) | "
          f"{real_nn.mean():.4f} / {real_nn.max():.4f} |")
    print(f"| generation speed ({args.sample_steps} dpm++2m steps, 96 x 128, {args.device}) | {len(syn_img) / gen_s:.3f} samples/s |")
    print(f"| diffusion training ({args.diffusion_steps} steps) / UNet training per run | {train_s:.0f} s / {np.mean(list(seg_s.values())):.0f} s |")
    results = {"dice": dices, "quality": q.to_dict(), "samples_per_s": len(syn_img) / gen_s, "train_s": train_s,
               "seg_s": seg_s, "real_heldout_vs_train_score": real_nn.tolist(), "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
