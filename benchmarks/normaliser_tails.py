"""Noise-aware tails of the per-scan normaliser: how far noise moves the map, and what it costs.

    OMP_NUM_THREADS=1 python benchmarks/normaliser_tails.py [--out FILE.csv] [--no-denoise]

For each built-in model's held-out sample (``mr2d``: ``mr_heldout.nii.gz``; ``micro2d``:
``cell_heldout.tif``) and each noise model and level, the per-scan normaliser is fitted on the
noisy scan as ``denoise`` does (noise estimated, ``signal_of_mean``) without and with the noise
std (``noise_std``), and its ``low``/``high`` are compared with the fit on the clean scan, in % of
the clean fit's range. Unless ``--no-denoise``, the built-in model then denoises the noisy scan
(``tweedie``, the library's current rule) and the PSNR inside ``clean > 0.1 * max`` is printed, so
a run on the code before and after the change compares the two rules on the same noise.
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

from medidiff.builtin.sample_scans import microscopy_sample, mr_sample
from medidiff.core.metrics import psnr
from medidiff.core.noise import add_noise, noise_domain
from medidiff.model_store.registry import resolve_model

CASES = {
    "mr2d": (mr_sample, "MR", ("gaussian", "rician")),
    "micro2d": (microscopy_sample, "microscopy", ("gaussian", "poisson-gaussian")),
}
LEVELS = (0.025, 0.05, 0.1, 0.2)


def _shift(fit: tuple[float, float], ref: tuple[float, float]) -> tuple[float, float]:
    span = ref[1] - ref[0]
    return 100 * (fit[0] - ref[0]) / span, 100 * (fit[1] - ref[1]) / span


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="also write the rows to this CSV")
    ap.add_argument("--no-denoise", action="store_true", help="only the normaliser shifts")
    args = ap.parse_args(argv)
    from medidiff.tasks.denoise import denoise

    rows = []
    for name, (sample, modality, noises) in CASES.items():
        model = resolve_model(name, device="cpu")
        clean = sample()
        arr = clean.array.astype(np.float64)
        ref = model.normaliser.for_scan(arr)
        ref_fit = (ref.low, ref.high)
        mask = arr > 0.1 * arr.max()
        span = float(arr.max() - arr.min())
        for noise in noises:
            for level in LEVELS:
                noisy = add_noise(arr, noise, level, np.random.default_rng(0)).astype(np.float32)
                dom, _ = noise_domain(noisy, noisy, noise, modality=modality)
                plain = model.normaliser.for_scan(noisy, signal_of_mean=dom.signal_of_mean)
                row = {"model": name, "noise": noise, "level": level}
                row["low_plain"], row["high_plain"] = (round(v, 2) for v in _shift((plain.low, plain.high), ref_fit))
                try:
                    aware = model.normaliser.for_scan(noisy, signal_of_mean=dom.signal_of_mean, noise_std=dom.std_at)
                    row["low_aware"], row["high_aware"] = (round(v, 2) for v in
                                                           _shift((aware.low, aware.high), ref_fit))
                except (TypeError, AttributeError):  # the code before the change has no noise_std
                    row["low_aware"] = row["high_aware"] = "n/a"
                if not args.no_denoise:
                    scan = clean.with_array(noisy, meta={"source_path": ""})
                    out = denoise(model, scan, noise=noise, device="cpu", seed=0).scan.array
                    row["psnr_noisy"] = round(psnr(arr[mask], noisy[mask], data_range=span), 2)
                    row["psnr_tweedie"] = round(psnr(arr[mask], out[mask], data_range=span), 2)
                rows.append(row)
                print(row, flush=True)
    if args.out:
        with open(args.out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
