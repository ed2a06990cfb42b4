"""Benchmark: diffusion anomaly detection vs an intensity baseline and a denoising autoencoder.

Healthy training data: real EPI brain slices z < 16 of volume 0 of nibabel's example4d.nii.gz
(the same slices the test fixture trains on). Calibration: healthy slices z = 16, 17 of both
volumes (never trained on, never tested). Test: slices z >= 18 of both volumes, each once healthy
and ``--lesions`` times with a synthetic lesion from ``medidiff.core.lesions.random_lesion`` (ellipses
and blobs, radius 3-10 voxels, contrast 30-80% of median tissue, 30% of them dark, texture 0-30%);
see data_cards/benchmark-anomaly.md.

Every method's map is median filtered (3x3) and scored inside the Otsu foreground; metrics are
pooled over the test slices' foreground voxels; the calibrated threshold is the 99th percentile
of the method's map over the calibration slices' foreground voxels.

Run (CPU, about 10 minutes on 2 shared cores):

    python benchmarks/anomaly.py --steps 1500 --out /tmp/bench-anomaly
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import nibabel
import numpy as np
import torch
from scipy import ndimage as ndi

from medidiff.io import Scan
from medidiff.core.lesions import foreground, random_lesion
from medidiff.core.metrics import auprc, auroc, best_dice, dice
from medidiff.tasks.anomaly import SCORE_PERCENTILE, calibrate_threshold, detect_anomalies, trained_noise

DATA = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"
# the noise times of the previous default; the other diffusion variants are compared at these
OLD_T = [150.0, 300.0]


def load_volumes() -> list[Scan]:
    img = nibabel.load(DATA)
    zooms = tuple(float(z) for z in reversed(img.header.get_zooms()[:3]))
    data = np.asarray(img.dataobj, dtype=np.float32)
    return [Scan(data[..., v].T, zooms, img.affine, "MR", {"source_path": f"nibabel:example4d.nii.gz[{v}]"}) for v in range(2)]


def slice_scan(vol: Scan, z: int) -> Scan:
    return Scan(vol.array[z], vol.spacing[1:], vol.affine, "MR")


def make_sets(vols: list[Scan], n_lesions: int, seed: int):
    train = Scan(vols[0].array[:16], vols[0].spacing, vols[0].affine, "MR", vols[0].meta)
    calib = [slice_scan(v, z) for v in vols for z in (16, 17)]
    test: list[tuple[str, Scan, np.ndarray]] = []
    for vi, v in enumerate(vols):
        for z in range(18, v.shape[0]):
            img = v.array[z]
            test.append((f"v{vi}z{z}", slice_scan(v, z), np.zeros(img.shape, bool)))
            for k in range(n_lesions):
                les = random_lesion(img, seed=seed * 1000 + vi * 100 + z * 10 + k)
                test.append((f"v{vi}z{z}l{k}", Scan(les.image, v.spacing[1:], v.affine, "MR"), les.mask))
    return train, calib, test


# -- baselines ------------------------------------------------------------------------------------------
def post(m: np.ndarray, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fg = foreground(img)
    return np.where(fg, ndi.median_filter(m, size=3, mode="nearest"), 0.0).astype(np.float32), fg


def zscore_baseline(train: Scan) -> Callable[[Scan], tuple[np.ndarray, np.ndarray]]:
    """|x - mean| of healthy tissue intensities (a global intensity-outlier detector)."""
    vals = np.concatenate([s[foreground(s)] for s in train.array])
    mu = float(np.mean(vals))
    return lambda scan: post(np.abs(scan.array - mu), scan.array)


def local_median_baseline(size: int = 9) -> Callable[[Scan], tuple[np.ndarray, np.ndarray]]:
    """|x - median filter(x)|: intensity outliers against their neighbourhood."""
    return lambda scan: post(np.abs(scan.array - ndi.median_filter(scan.array, size=size, mode="nearest")), scan.array)


def train_autoencoder(train: Scan, normaliser, steps: int, seed: int, image_size: int, target_params: int, noise: str = "pixel"):
    """A MONAI AutoEncoder (no skips) trained to remove Gaussian noise from the same crops as the diffusion model.

    noise: ``"pixel"`` (white, std 0.2 in network units) or ``"coarse"`` (white noise at a quarter
    of the resolution, upsampled, std 0.5: hides blobs, as in Kascenas et al. 2022).
    """
    from monai.networks.nets import AutoEncoder

    from medidiff.core.data import prepare_training_data

    td = prepare_training_data(train, spatial_dims=2, image_size=image_size, normaliser=normaliser)
    torch.manual_seed(seed)
    best = None
    for ch in ((16, 32, 64), (16, 32, 64, 64), (32, 64, 64), (32, 64, 128)):  # closest to the diffusion size
        net = AutoEncoder(spatial_dims=2, in_channels=1, out_channels=1, channels=ch, strides=(2,) * len(ch), num_res_units=2)
        n = sum(p.numel() for p in net.parameters())
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (ch, n)
    torch.manual_seed(seed)
    net = AutoEncoder(spatial_dims=2, in_channels=1, out_channels=1, channels=best[0], strides=(2,) * len(best[0]), num_res_units=2)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(steps):
        x = torch.from_numpy(td.batch(seed, step, 16)["images"])
        if noise == "coarse":
            low = torch.randn((x.shape[0], 1, x.shape[2] // 4, x.shape[3] // 4), generator=gen)
            noisy = x + 0.5 * torch.nn.functional.interpolate(low, size=x.shape[2:], mode="bilinear", align_corners=False)
        else:
            noisy = x + 0.2 * torch.randn(x.shape, generator=gen)
        loss = torch.nn.functional.mse_loss(net(noisy), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    def run(scan: Scan) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(normaliser.forward(scan.array))[None, None]
        pad = [(-s) % (2 ** len(best[0])) for s in x.shape[2:]]
        xp = torch.nn.functional.pad(x, (0, pad[1], 0, pad[0]), mode="replicate")
        with torch.inference_mode():
            rec = net(xp)[0, 0, : x.shape[2], : x.shape[3]].numpy()
        return post(np.abs(x[0, 0].numpy() - rec) * normaliser.half_range, scan.array)

    return run, best[1], float(loss.detach())


# -- evaluation -------------------------------------------------------------------------------------------
FDR_LEVELS = (0.05, 0.1)


def evaluate(name: str, fn: Callable[[Scan], tuple[np.ndarray, np.ndarray]], calib, test, calibrated: float | None = None,
             healthy_scores: np.ndarray | None = None) -> dict:
    """Pooled voxel and scan metrics; with ``healthy_scores`` (a calibration's sample) also the false-discovery
    proportion of the ``--fdr q`` masks, averaged over scans (the FDR), on all test scans and on the healthy ones."""
    from medidiff.tasks.anomaly.fdr import bh_mask

    if calibrated is None:
        vals = []
        for s in calib:
            m, fg = fn(s)
            vals.append(m[fg])
        calibrated = float(np.percentile(np.concatenate(vals), 99.0))
    scores, labels, preds, scan_s, scan_y = [], [], [], [], []
    fdp: dict[float, list[float]] = {q: [] for q in FDR_LEVELS}
    found: dict[float, list[float]] = {q: [] for q in FDR_LEVELS}
    t0 = time.perf_counter()
    for _, s, truth in test:
        m, fg = fn(s)
        if healthy_scores is not None:
            for q in FDR_LEVELS:
                mask, _ = bh_mask(m, fg, healthy_scores, q)
                fdp[q].append(float((mask & ~truth).sum() / max(int(mask.sum()), 1)))
                if truth.any():
                    found[q].append(float((mask & truth).sum() / truth.sum()))
        scores.append(m[fg])
        labels.append(truth[fg])
        preds.append(m[fg] > calibrated)
        scan_s.append(float(np.percentile(m[fg], SCORE_PERCENTILE)))
        scan_y.append(bool(truth.any()))
    secs = (time.perf_counter() - t0) / len(test)
    s, y, p = np.concatenate(scores), np.concatenate(labels), np.concatenate(preds)
    row = {"method": name, "voxel_auroc": auroc(s, y), "voxel_auprc": auprc(s, y), "best_dice": best_dice(s, y, None)[0],
           "dice_at_calibrated": dice(p, y), "scan_auroc": auroc(np.array(scan_s), np.array(scan_y)),
           "sec_per_slice": secs, "threshold": calibrated}
    if healthy_scores is not None:
        healthy = [not t[2].any() for t in test]
        for q in FDR_LEVELS:
            row[f"fdr@{q:g}"] = float(np.mean(fdp[q]))  # achieved FDR: mean false-discovery proportion
            row[f"fdr@{q:g}_healthy"] = float(np.mean([f for f, h in zip(fdp[q], healthy) if h]))
            row[f"lesion_found@{q:g}"] = float(np.mean(found[q]))
    print(f"  {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "method"), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500, help="training steps of the diffusion model and the autoencoder")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--lesions", type=int, default=3, help="lesioned copies of each test slice")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-anomaly"), help="run folder, table.md, results.json")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--model", type=Path, default=None, help="reuse a trained model folder instead of training")
    args = ap.parse_args()
    # one thread: on a shared CPU, torch's default thread pool oversubscribes and runs ~20x slower
    torch.set_num_threads(args.threads)
    vols = load_volumes()
    train, calib, test = make_sets(vols, args.lesions, args.seed)
    print(f"train {train.shape[0]} slices, calibration {len(calib)} healthy slices, test {len(test)} slices "
          f"({sum(t[2].any() for t in test)} with a lesion)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)

    from medidiff.core.model import DiffusionModel
    from medidiff.tasks.train import train as train_model

    t0 = time.perf_counter()
    if args.model is None:
        res = train_model([train], args.out / "run", dims=2, preset="tiny", image_size=args.image_size, steps=args.steps,
                          batch_size=16, lr=2e-3, seed=args.seed, device="cpu", checkpoint_every=0, overwrite=True)
        model = res.model
    else:
        model = DiffusionModel.load(args.model)
    model.to("cpu")
    t_diff = time.perf_counter() - t0
    print(f"diffusion model: {model.num_parameters():,} parameters, trained in {t_diff:.0f} s", flush=True)
    aes = {}
    for noise in ("pixel", "coarse"):
        t0 = time.perf_counter()
        aes[noise], ae_params, ae_loss = train_autoencoder(train, model.normaliser, args.steps, args.seed, args.image_size,
                                                           model.num_parameters(), noise)
        print(f"autoencoder ({noise} noise): {ae_params:,} parameters, trained in {time.perf_counter() - t0:.0f} s "
              f"(last loss {ae_loss:.4f})", flush=True)

    rows = [
        evaluate("intensity: abs(x - healthy tissue mean)", zscore_baseline(train), calib, test),
        evaluate("intensity: abs(x - 9x9 median)", local_median_baseline(9), calib, test),
        evaluate("denoising autoencoder, pixel noise 0.2", aes["pixel"], calib, test),
        evaluate("denoising autoencoder, coarse noise 0.5", aes["coarse"], calib, test),
    ]
    for label, opts in [
        ("diffusion ddpm (Tweedie, t=300,450, 3 draws each) — default", {"method": "ddpm"}),
        ("diffusion ddpm (Tweedie, t=150,300) — previous default", {"method": "ddpm", "timesteps": OLD_T}),
        ("diffusion ddpm (DDIM 3 steps, t=150,300)", {"method": "ddpm", "recon": "ddim", "ddim_steps": 3, "timesteps": OLD_T}),
        ("diffusion simplex (AnoDDPM noise, t=150,300)", {"method": "simplex", "timesteps": OLD_T}),
        ("diffusion patched (pDDPM, t=150,300)", {"method": "patched", "batch_size": 64, "timesteps": OLD_T}),
    ]:
        if opts["method"] == "simplex" and trained_noise(model) != "simplex":
            print(f"  skipped {label}: the model was trained with {trained_noise(model)} noise, simplex needs simplex training")
            continue
        thr = calibrate_threshold(model, [s for s in calib], 99.0, save=False, device="cpu", **opts)
        from medidiff.tasks.anomaly.fdr import decode_scores

        healthy_table = decode_scores(model.config.anomaly["healthy_scores"])

        def fn(scan: Scan, opts=opts) -> tuple[np.ndarray, np.ndarray]:
            r = detect_anomalies(model, scan, threshold=thr, device="cpu", **opts)
            return r.map.array, r.foreground.array > 0

        rows.append(evaluate(label, fn, calib, test, calibrated=thr, healthy_scores=healthy_table))

    lines = ["| method | voxel AUROC | voxel AUPRC | best Dice | Dice @ calibrated (p99 healthy) | scan AUROC | s / slice |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['voxel_auroc']:.3f} | {r['voxel_auprc']:.3f} | {r['best_dice']:.3f} | "
                     f"{r['dice_at_calibrated']:.3f} | {r['scan_auroc']:.3f} | {r['sec_per_slice']:.3f} |")
    fdr_rows = [r for r in rows if "fdr@0.05" in r]
    if fdr_rows:
        lines += ["", "| method | " + " | ".join(f"FDR @ q={q:g} (all / healthy scans) | lesion voxels found @ {q:g}" for q in FDR_LEVELS) + " |",
                  "|---|" + "---|---|" * len(FDR_LEVELS)]
        for r in fdr_rows:
            lines.append(f"| {r['method']} | " + " | ".join(
                f"{r[f'fdr@{q:g}']:.3f} / {r[f'fdr@{q:g}_healthy']:.3f} | {r[f'lesion_found@{q:g}']:.3f}" for q in FDR_LEVELS) + " |")
    table = "\n".join(lines)
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "diffusion_params": model.num_parameters(),
                                                       "ae_params": ae_params, "steps": args.steps}, indent=2) + "\n")


if __name__ == "__main__":
    main()
