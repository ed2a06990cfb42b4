"""The quickstart: run the three jobs on real sample scans that ship with medidiff.

``demo_steps`` denoises a held-out MR scan (Rician noise added, so PSNR against the clean
scan is known), denoises a held-out microscopy image (Poisson-Gaussian noise), generates a
few synthetic MR images, and detects a planted lesion in a held-out MR slice, all with the
built-in models. It writes ``OUT/index.html`` with the pictures, the numbers, and the
command that does each step by hand.
"""

from __future__ import annotations

import html
import json
import shlex
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medidiff.io import Scan, save_scan
from medidiff.io.atomic import atomic_dir
from medidiff.core.progress import Progress, plain_twin, relay, run_to_end
from medidiff.builtin.sample_scans import microscopy_sample, mr_sample


@dataclass
class DemoResult:
    """Where the report is and the numbers it shows."""

    out_dir: Path
    report: Path
    numbers: dict[str, float] = field(default_factory=dict)


def demo_steps(out: str | Path, *, quick: bool = False, device: str = "auto", seed: int = 0,
               overwrite: bool = False) -> Generator[Progress, None, DemoResult]:
    """Run the quickstart into ``out`` (a new folder, written atomically)."""
    from medidiff.core.metrics import auroc, psnr
    from medidiff.core.noise import add_noise
    from medidiff.reporting.figures import radiological, save_grid
    from medidiff.model_store.registry import resolve_model
    from medidiff.core.lesions import plant_lesion
    from medidiff.tasks.anomaly import detect_anomalies_steps
    from medidiff.tasks.denoise import denoise_steps
    from medidiff.tasks.generate import generate_steps

    out = Path(out)
    d = shlex.quote(str(out))  # the "by hand" commands work from any folder and name only files written here
    total = 4
    numbers: dict[str, float] = {}
    sections: list[tuple[str, str, str, str]] = []  # title, image, text, command
    mr_model = resolve_model("mr2d", device="cpu")
    cell_model = resolve_model("micro2d", device="cpu")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        # 1. MR denoising: a held-out real scan with Rician noise (5% of its range)
        clean = mr_sample()
        if quick:
            clean = Scan(clean.array[2:4], clean.spacing, clean.affine, clean.modality, clean.meta)
        noisy_arr = add_noise(clean.array, "rician", 0.05, np.random.default_rng(seed)).astype(np.float32)
        noisy = clean.with_array(noisy_arr, meta={"source_path": ""})
        save_scan(noisy, tmp / "mr_noisy.nii.gz")
        res = yield from relay(denoise_steps(mr_model, noisy, device=device, seed=seed), message="denoise MR")
        save_scan(res.scan, tmp / "mr_denoised.nii.gz")
        rng_ = float(clean.array.max() - clean.array.min())
        numbers["mr_psnr_noisy"] = psnr(clean.array, noisy.array, data_range=rng_)
        numbers["mr_psnr_denoised"] = psnr(clean.array, res.scan.array, data_range=rng_)
        numbers["mr_sigma_estimated"] = res.sigma_median
        numbers["mr_sigma_true"] = 0.05 * rng_
        z = clean.shape[0] // 2
        def shown(a: np.ndarray) -> np.ndarray:  # anterior up, patient's right on the left
            return radiological(a, clean.affine, clean.modality)

        save_grid([shown(noisy.array[z]), shown(res.scan.array[z]), shown(clean.array[z]),
                   shown(noisy.array[z] - res.scan.array[z])],
                  tmp / "mr_denoise.png", titles=["noisy (Rician)", "medidiff", "clean (held out)", "removed noise"],
                  ncols=4, suptitle=f"sigma estimated {numbers['mr_sigma_estimated']:.1f} (true {numbers['mr_sigma_true']:.1f}); "
                  f"PSNR {numbers['mr_psnr_noisy']:.1f} -> {numbers['mr_psnr_denoised']:.1f} dB")
        sections.append(("Denoising an MR scan (mr2d)", "mr_denoise.png",
                         f"PSNR {numbers['mr_psnr_noisy']:.2f} dB (noisy) → {numbers['mr_psnr_denoised']:.2f} dB (denoised); "
                         f"noise sigma estimated {numbers['mr_sigma_estimated']:.2f}, true {numbers['mr_sigma_true']:.2f}; "
                         f"noise model {res.noise_model} ({res.reason}).",
                         f"medidiff denoise mr2d {d}/mr_noisy.nii.gz {d}/mr_denoised_by_hand.nii.gz --report {d}/mr_report_by_hand.png"))

        # 2. microscopy denoising: held-out half of a real microscopy image, Poisson-Gaussian noise
        cell = microscopy_sample()
        if quick:
            cell = cell.with_array(cell.array) if cell.shape[0] <= 128 else Scan(cell.array[:128, :128], cell.spacing, cell.affine, cell.modality, cell.meta)
        noisy_cell = cell.with_array(add_noise(cell.array, "poisson-gaussian", 0.1, np.random.default_rng(seed + 1)).astype(np.float32),
                                     meta={"source_path": ""}, modality="microscopy")
        save_scan(noisy_cell, tmp / "cell_noisy.tif")
        res_c = yield from relay(denoise_steps(cell_model, noisy_cell, noise="poisson-gaussian", device=device, seed=seed), message="denoise microscopy")
        save_scan(res_c.scan, tmp / "cell_denoised.tif")
        crange = float(cell.array.max() - cell.array.min())
        numbers["cell_psnr_noisy"] = psnr(cell.array, noisy_cell.array, data_range=crange)
        numbers["cell_psnr_denoised"] = psnr(cell.array, res_c.scan.array, data_range=crange)
        save_grid([noisy_cell.array, res_c.scan.array, cell.array], tmp / "cell_denoise.png",
                  titles=["noisy (Poisson-Gaussian)", "medidiff", "clean (held out)"], ncols=3,
                  suptitle=f"PSNR {numbers['cell_psnr_noisy']:.1f} -> {numbers['cell_psnr_denoised']:.1f} dB")
        sections.append(("Denoising a microscopy image (micro2d)", "cell_denoise.png",
                         f"PSNR {numbers['cell_psnr_noisy']:.2f} dB → {numbers['cell_psnr_denoised']:.2f} dB.",
                         f"medidiff denoise micro2d {d}/cell_noisy.tif {d}/cell_denoised_by_hand.tif --noise poisson-gaussian"))

        # 3. synthetic images at the model's training size
        n = 4 if quick else 8
        gen = yield from relay(generate_steps(mr_model, n, seed=seed, steps=10 if quick else 25, device=device), message="generate")
        save_grid([shown(s.array) for s in gen.scans], tmp / "generated.png", titles=[f"seed {s}" for s in range(n)], ncols=min(n, 8),
                  suptitle=f"{n} synthetic MR images at the training size {mr_model.config.image_size}")
        sections.append(("Generating synthetic images (mr2d)", "generated.png",
                         f"{n} samples at the model's training size; a full run also writes a manifest and a data card.",
                         f"medidiff generate mr2d --n {n} --out {d}/synthetic_by_hand --seed {seed}"))

        # 4. anomaly detection: a planted lesion in a held-out slice vs the same slice healthy
        full = mr_sample()
        healthy = Scan(full.array[3], full.spacing[1:], full.affine, full.modality, {})
        lesion = plant_lesion(healthy.array, seed, kind="blob", radius=7.0, contrast=0.6)
        sick = healthy.with_array(lesion.image)
        save_scan(sick, tmp / "mr_lesion.nii.gz")
        save_scan(healthy.with_array(lesion.mask.astype(np.float32)), tmp / "mr_lesion_truth.nii.gz")
        thr = "auto" if mr_model.config.anomaly.get("threshold") is not None else 0.0
        an = yield from relay(detect_anomalies_steps(mr_model, sick, threshold=thr, device=device, seed=seed), message="anomaly")
        an_h = run_to_end(detect_anomalies_steps(mr_model, healthy, threshold=thr, device=device, seed=seed))
        save_scan(an.map, tmp / "mr_lesion_map.nii.gz")
        numbers["anomaly_score_lesion"] = an.score
        numbers["anomaly_score_healthy"] = an_h.score
        numbers["anomaly_voxel_auroc"] = auroc(an.map.array.ravel(), lesion.mask.ravel())
        # the map is signed (healthy z-scores, mirror dips); shown from 0 up, where lesions are
        save_grid([shown(sick.array), shown(np.maximum(an.map.array, 0)), shown(an.mask.array)], tmp / "anomaly.png",
                  titles=["held-out slice + planted lesion", "anomaly map", "mask (red: truth)"], ncols=3,
                  cmaps=["gray", "inferno", "gray"], overlays=[None, None, shown(lesion.mask.astype(np.float32))],
                  suptitle=f"score {an.score:.3g} (same slice healthy: {an_h.score:.3g}); voxel AUROC {numbers['anomaly_voxel_auroc']:.3f}")
        sections.append(("Detecting an anomaly (mr2d)", "anomaly.png",
                         f"Scan score with the lesion {an.score:.4g} vs healthy {an_h.score:.4g}; "
                         f"voxel AUROC {numbers['anomaly_voxel_auroc']:.3f}.",
                         f"medidiff anomaly mr2d {d}/mr_lesion.nii.gz {d}/mr_lesion_map_by_hand.nii.gz --mask {d}/mr_lesion_mask_by_hand.nii.gz"))
        (tmp / "numbers.json").write_text(json.dumps(numbers, indent=2))
        (tmp / "index.html").write_text(_html(sections, numbers, quick))
    yield Progress(step=total, total=total, message="report written")
    return DemoResult(out, out / "index.html", numbers)


demo = plain_twin(demo_steps, "demo")


def _html(sections, numbers, quick: bool) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>medidiff demo</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
             "pre{background:#f4f4f4;padding:.6em}</style>",
             "<h1>medidiff quickstart</h1>",
             "<p>Real scans that ship with medidiff, held out from the built-in models' training data. "
             "Noise and lesions were added here, so the clean truth is known." + (" (quick mode)" if quick else "") + "</p>"]
    for title, img, text, cmd in sections:
        parts += [f"<h2>{html.escape(title)}</h2>", f"<img src='{img}' alt='{html.escape(title)}'>",
                  f"<p>{html.escape(text)}</p>", f"<pre>{html.escape(cmd)}</pre>"]
    parts.append("<h2>Numbers</h2><table>" + "".join(f"<tr><td>{k}</td><td>{v:.4g}</td></tr>" for k, v in numbers.items()) + "</table>")
    return "\n".join(parts) + "\n"
