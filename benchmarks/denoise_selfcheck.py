"""Does the denoise self-check (SURE, no clean data) predict the true gain?  (issue 12 §1)

    OMP_NUM_THREADS=1 python benchmarks/denoise_selfcheck.py [NAME ...]

For each built-in model (``mr2d``, ``micro2d``, ``ct2d``: whatever ``medidiff/builtin`` holds at
run time; its training steps and weights hash are printed), ``medidiff denoise`` defaults
(tweedie, the model card's noise model, noise estimated) at the cards' levels (2.5 / 5 / 10 % of
the range), and compares the self-check's estimated gain with the true PSNR gain.

Splits (nothing tuned on the test rows):

* **test**: exactly the model cards' "Units and noise levels" images (``builtin_units.IMAGES``:
  each model's held-out sample and its foreign image), noise seed 0, scale x 1;
* **validation**: images in no card and no training set -- scikit-image's ``camera`` (a
  photograph) and ``moon`` for every model, the held-out sample with noise seed 1 (another noise
  draw of a test image: the only in-domain image there is to validate on), and for ``micro2d``
  ``hubble_deep_field`` (gray). The region and the warning threshold are chosen here: the region
  whose estimate is closest (mean absolute error) to the true whole-image gain, and the threshold
  (from 0, 0.5, ... 2 dB) that best separates rows with a true gain under +1 dB (the warning's
  target: "the model is unlikely to help") from the rest. The region criterion is each estimate's
  error against the true gain *on the voxels it measures* (a first version compared every region
  with the whole-image gain; it picked ``signal`` with the first ``mr2d`` and ``all`` with the
  retrained one, by 0.07 dB, because for Rician noise the whole-image gain includes the dark
  background that SURE's Gaussian identity cannot see).

True gain: PSNR(denoised) - PSNR(noisy) over the whole image (the cards' number) and over exactly
the voxels each region of the check measures (``foreground``: ``D - p0.1 > 0.1 (p99.9 - p0.1)`` of
the denoised scan ``D``, and above 2 sigma for Rician noise; ``signal``: above 2 sigma for Rician
noise, every voxel otherwise).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from builtin_units import BUILTIN, IMAGES, LEVELS, NOISE  # the cards' images (benchmarks/ is the script's folder)
from medidiff.core.metrics import psnr
from medidiff.core.noise import add_noise
from medidiff.io import Scan, affine_from_spacing

SMALL_DB = 1.0  # a true gain below this is "the model does not help"
THRESHOLDS = (0.0, 0.5, 1.0, 1.5, 2.0)


def _skimage(name: str, modality: str):
    def load() -> Scan:
        import skimage.data

        arr = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
        if arr.ndim == 3:
            arr = arr.mean(axis=2)
        scan = Scan(arr, (1.0, 1.0), affine_from_spacing((1.0, 1.0)), modality)
        return _ct_window(scan) if modality == "CT" else scan
    return load


MODALITY = {"mr2d": "MR", "micro2d": "microscopy", "ct2d": "CT"}


def validation_images(name: str) -> list[tuple[str, object, int]]:
    """``(label, loader, noise seed)`` rows of the validation split."""
    held_label, held_load = IMAGES[name][0]
    rows = [(f"{held_label}, noise seed 1", held_load, 1),
            ("camera (skimage photo)", _skimage("camera", MODALITY[name]), 0),
            ("moon (skimage)", _skimage("moon", MODALITY[name]), 0)]
    if name == "micro2d":
        rows.append(("hubble_deep_field (gray)", _skimage("hubble_deep_field", MODALITY[name]), 0))
    return rows


def test_images(name: str) -> list[tuple[str, object, int]]:
    return [(label, load, 0) for label, load in IMAGES[name]]


def _ct_window(scan: Scan) -> Scan:
    """A photo shown to the CT model: mapped into its HU window (else it is refused as not HU)."""
    from medidiff.core.intensity import Normaliser
    from medidiff.model_store.registry import resolve_model

    norm: Normaliser = resolve_model("ct2d", device="cpu").normaliser
    a = scan.array.astype(np.float64)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-9)
    return scan.with_array((norm.low + a * (norm.high - norm.low)).astype(np.float32))


def measure(name: str, rows: list[tuple[str, object, int]], timed: bool = False) -> list[dict]:
    from medidiff.tasks.denoise import denoise

    out = []
    for label, load, seed in rows:
        clean = load()
        x = clean.array.astype(np.float64)
        span = float(x.max() - x.min())
        for level in LEVELS:
            y = add_noise(x, NOISE[name], level, np.random.default_rng(seed)).astype(np.float32)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = denoise(name, clean.with_array(y, meta={"source_path": label}), noise=NOISE[name],
                              device="cpu", seed=0)
            seconds = time.perf_counter() - t0
            d = res.scan.array.astype(np.float64)
            check = res.self_check
            # the voxels each region of the check measures (as denoise_selfcheck.region_mask builds them)
            same = d > 2 * res.sigma_median if res.noise_model == "rician" else np.ones(x.shape, bool)
            low, high = np.percentile(d, [0.1, 99.9])
            fg_mask = same & (d - low > 0.1 * (high - low))
            # the noise rms the check assumed over its region, against the noise actually added there
            rms_ratio = float(np.sqrt(check.noise_var / np.mean((y - x)[fg_mask] ** 2)))
            row = {"image": label, "level": level, "sigma_ratio": rms_ratio,
                   "true_all": psnr(x, d, span) - psnr(x, y, span),
                   "true_same": 10 * np.log10(np.mean((y - x)[same] ** 2) / np.mean((d - x)[same] ** 2)),
                   "true_fg": 10 * np.log10(np.mean((y - x)[fg_mask] ** 2) / np.mean((d - x)[fg_mask] ** 2)),
                   "est": dict(check.by_region), "consistent": check.consistent, "resolved": check.resolved,
                   "mse_ratio": check.mse / check.noise_var,
                   "warned": any("unlikely to help" in str(w.message) for w in caught),
                   "inconsistent_warned": any("inconsistent" in str(w.message) for w in caught), "seconds": seconds}
            if timed:  # the same denoising without the check: what the check costs
                t0 = time.perf_counter()
                denoise(name, clean.with_array(y, meta={"source_path": label}), noise=NOISE[name], device="cpu", seed=0,
                        self_check=False)
                row["seconds_plain"] = time.perf_counter() - t0
            out.append(row)
            print(name, json.dumps(row), flush=True)
    return out


TRUTH = {"signal": "true_same", "all": "true_all", "foreground": "true_fg"}  # each region's own true gain


def choose(rows: list[dict]) -> tuple[str, float, dict]:
    """The region (MAE to the true gain on that region) and the threshold (fewest misclassified rows).

    Only resolved rows count for the region (an unresolved SURE says "about +10 dB or more").
    """
    mae = {r: float(np.nanmean([abs(row["est"].get(r, np.nan) - row[TRUTH[r]]) for row in rows if row["resolved"]]))
           for r in TRUTH}
    region = min(mae, key=mae.get)

    def errors(th: float) -> int:
        return sum((row["resolved"] and row["est"][region] < th) != (row["true_all"] < SMALL_DB)
                   for row in rows if row["consistent"])
    best = min(THRESHOLDS, key=lambda th: (errors(th), abs(th - SMALL_DB)))
    return region, best, {"mae": mae, "errors": {th: errors(th) for th in THRESHOLDS}}


def table(name: str, rows: list[dict], region: str, threshold: float) -> str:
    truth = TRUTH[region]
    lines = [f"| image | level | noise rms est/true | true gain (whole) | true gain ({region}) | estimated ({region}) | "
             f"error (vs whole / vs region) | warns (< {threshold:+.1f}) | should (true whole < {SMALL_DB:+.1f}) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        est = r["est"][region]
        warn = "inconsistent" if not r["consistent"] else ("yes" if r["resolved"] and est < threshold else "no")
        shown = f"{est:+.2f}" if r["resolved"] else ("> +10" if r["consistent"] else f"(SURE {r['mse_ratio']:+.2f} v)")
        err = f"{est - r['true_all']:+.2f} / {est - r[truth]:+.2f}" if r["resolved"] else "-"
        lines.append(f"| {name}: {r['image']} | {r['level']:g} | {r['sigma_ratio']:.2f} | {r['true_all']:+.2f} | "
                     f"{r[truth]:+.2f} | {shown} | {err} | {warn} | {'yes' if r['true_all'] < SMALL_DB else 'no'} |")
    return "\n".join(lines)


def _provenance(name: str) -> str:
    cfg = json.loads((BUILTIN / name / "config.json").read_text())
    sha = hashlib.sha256((BUILTIN / name / "weights.safetensors").read_bytes()).hexdigest()[:12]
    return f"{name}: {cfg['training']['steps']} training steps, weights sha256 {sha}"


def main(argv: list[str]) -> None:
    names = [a for a in argv if not a.startswith("--")] or [n for n in IMAGES if (BUILTIN / n).is_dir()]
    val, test = {}, {}
    for name in names:
        print(_provenance(name), flush=True)
        val[name] = measure(name, validation_images(name))
    region, threshold, why = choose([r for rows in val.values() for r in rows])
    print(f"validation: region {region}, threshold {threshold:+.1f} dB; {why}")
    for name in names:
        test[name] = measure(name, test_images(name), timed=True)
    for split, data in (("validation", val), ("test", test)):
        print(f"\n### {split}\n")
        for name in names:
            print(table(name, data[name], region, threshold))
        rows = [r for rs in data.values() for r in rs]
        ok = [r for r in rows if r["resolved"]]
        err = np.array([r["est"][region] - r["true_all"] for r in ok])
        truth = TRUTH[region]
        err_same = np.array([r["est"][region] - r[truth] for r in ok])
        low = [r for r in ok if r[truth] < 5.0]
        err_low = np.array([r["est"][region] - r[truth] for r in low]) if low else np.zeros(1)
        wrong = sum((r["consistent"] and r["resolved"] and r["est"][region] < threshold) != (r["true_all"] < SMALL_DB)
                    for r in rows)
        big = [r for r in rows if r["consistent"] and not r["resolved"]]
        bad = [r for r in rows if not r["consistent"]]
        ratios = ", ".join(f"{r['sigma_ratio']:.2f}" for r in bad) or "-"
        print(f"\n{split}: {len(ok)} of {len(rows)} rows resolved (<= +10 dB), {len(big)} reported as about +10 dB or more "
              f"(true gain {min([r['true_all'] for r in big], default=float('nan')):+.1f} dB at least), "
              f"{len(bad)} inconsistent (sigma est/true {ratios}); |error| vs whole-image gain mean "
              f"{np.mean(np.abs(err)):.2f} dB (max {np.max(np.abs(err)):.2f}), vs the true gain on its region mean "
              f"{np.mean(np.abs(err_same)):.2f} dB (max {np.max(np.abs(err_same)):.2f}; where that gain < +5 dB: "
              f"max {np.max(np.abs(err_low)):.2f} over {len(low)} rows); 'unlikely to help' wrong on {wrong} of "
              f"{len(rows)} rows; seconds per scan with the check {np.mean([r['seconds'] for r in rows]):.2f}"
              + (f", without {np.mean([r['seconds_plain'] for r in rows]):.2f}" if "seconds_plain" in rows[0] else ""))
    for name in names:
        print(_provenance(name))


if __name__ == "__main__":
    main(sys.argv[1:])
