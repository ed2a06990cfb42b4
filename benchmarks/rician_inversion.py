"""Rician MR: which domain to denoise in, the magnitude (then invert the Rician mean) or the VST.

    OMP_NUM_THREADS=1 python benchmarks/rician_inversion.py --out /tmp/bench_rician

The built-in ``mr2d`` on its shipped held-out sample (``medidiff/builtin/samples/mr_heldout.nii.gz``,
nibabel ``example4d`` volume 0, z 18-23, never trained on) with Rician noise at 5 / 10 / 20 % of the
range. Validation: noise seed 1; test: noise seed 0 (the same slices, independent noise -- the
choices made here are two: the transform and the method, both picked on seed 1). Columns: PSNR over
the whole image and inside ``x > 0.1 max``, the mean of the output on the clean background
(``x == 0``), for medidiff ``tweedie`` / ``ddim`` / ``posterior`` with ``transform`` ``mean``
(denoise the magnitude, invert ``E[m]``) and ``vst`` (:mod:`medidiff.core.noise.rician_vst`), beside
BM3D+Rician (``benchmarks/denoise.py``'s ``bm3d_rician``: BM3D at the same sigma estimate, then the
mean inversion), BM3D+VST-MMSE (``bm3d_rician_vst`` there, its "BM3D+VST" on Rician rows: BM3D in
the same default domain as medidiff, to see how much of
the gain is the domain rather than the prior) and the noisy input. Writes OUT/rician_table.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from denoise import bm3d_rician, bm3d_rician_vst, have_bm3d  # noqa: E402  (the peers of benchmarks/denoise.py, reused)

import medidiff.core.noise.rician as rician  # noqa: E402
from medidiff.core import noise as noise_lib  # noqa: E402
from medidiff.io import Scan, load_scan  # noqa: E402

LEVELS = (0.05, 0.10, 0.20)
METHODS = {"tweedie": {}, "ddim": {"method": "ddim"}, "posterior": {"method": "posterior"}}
SAMPLE = Path(__file__).resolve().parents[1] / "medidiff" / "builtin" / "samples" / "mr_heldout.nii.gz"


def scores(clean: np.ndarray, out: np.ndarray) -> tuple[float, float, float]:
    """(PSNR whole image, PSNR inside x > 0.1 max, mean output on the clean background)."""
    dr = float(clean.max() - clean.min())
    fg = clean > 0.1 * clean.max()
    whole = 10 * np.log10(dr * dr / np.mean((clean - out) ** 2))
    inside = 10 * np.log10(dr * dr / np.mean((clean[fg] - out[fg]) ** 2))
    return float(whole), float(inside), float(out[clean <= 0].mean())


def run(model, sample: Scan, level: float, seed: int) -> dict[str, tuple[float, float, float, float]]:
    """Every column at one (level, noise seed): (whole, inside, background mean, seconds)."""
    from medidiff.tasks.denoise import denoise

    clean = sample.array.astype(np.float32)
    noisy = noise_lib.add_noise(clean, "rician", level, np.random.default_rng(seed)).astype(np.float32)
    scan = Scan(noisy, sample.spacing, sample.affine, "MR")
    row = {"noisy": (*scores(clean, noisy), 0.0)}
    if have_bm3d():
        t0 = time.perf_counter()
        row["BM3D+Rician"] = (*scores(clean, np.stack([bm3d_rician(s) for s in noisy])), time.perf_counter() - t0)
        t0 = time.perf_counter()
        row["BM3D+VST-MMSE"] = (*scores(clean, np.stack([bm3d_rician_vst(s) for s in noisy])),
                                 time.perf_counter() - t0)
    for transform in rician.TRANSFORMS:
        rician.DEFAULT_TRANSFORM = transform
        for name, kw in METHODS.items():
            t0 = time.perf_counter()
            res = denoise(model, scan, noise="rician", seed=seed, device="cpu", self_check=False, **kw)
            row[f"{name} {transform}"] = (*scores(clean, res.scan.array), time.perf_counter() - t0)
    return row


def main() -> None:
    from medidiff.model_store.registry import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_rician"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    default = rician.DEFAULT_TRANSFORM
    model = resolve_model("mr2d")
    sample = load_scan(SAMPLE)
    lines = ["| level | split | column | PSNR whole | PSNR x > 0.1 max | background mean | s |",
             "|---|---|---|---|---|---|---|"]
    picks = []
    for level in LEVELS:
        for split, seed in (("val", 1), ("test", 0)):
            row = run(model, sample, level, seed)
            for col, (w, f, b, s) in row.items():
                lines.append(f"| {level:g} | {split} | {col} | {w:.2f} | {f:.2f} | {b:.1f} | {s:.1f} |")
            print("\n".join(lines[-len(row):]), flush=True)
            if split == "val":
                pick = max((c for c in row if " " in c and not c.startswith("BM3D")), key=lambda c: row[c][0])
            else:
                picks.append(f"| {level:g} | {pick} | {row[pick][0]:.2f} / {row[pick][1]:.2f} | "
                             + (f"{row['BM3D+Rician'][0]:.2f} / {row['BM3D+Rician'][1]:.2f} |" if "BM3D+Rician" in row
                                else "n/a |"))
    rician.DEFAULT_TRANSFORM = default
    lines += ["", "| level | val pick (whole PSNR) | test: pick whole / inside | BM3D+Rician whole / inside |",
              "|---|---|---|---|", *picks]  # BM3D+VST-MMSE: in the full table
    text = "\n".join(lines)
    (args.out / "rician_table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
