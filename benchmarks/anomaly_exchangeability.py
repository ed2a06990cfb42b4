"""Are healthy slices of other slabs exchangeable with the calibration slab? (why ``--score ssim`` breaks FDR)

The ``--fdr`` masks promise an FDR of at most q *if* a new scan's healthy voxel scores are
distributed like the calibration scans' (exchangeability). This measures that promise directly on
healthy slices, with no lesion involved: for each slice of the calibration, validation and test
slabs of ``benchmarks/anomaly.py`` (nibabel ``example4d``, both volumes), the share of its
foreground voxels whose scan-adaptive conformal p-value (the task's own
:func:`~medidiff.tasks.anomaly.fdr.conformal_pvalues` against the calibration's standardised
sample) is at most 0.01 and 0.001, divided by that level. Exchangeable slices give ~1 on average
(in-sample calibration slices do by construction); a slice far above 1 has a healthy tail the
calibration never saw, which is what lets BH flag healthy voxels. Also the standardised scores'
99.9th percentile and maximum per slice next to the calibration's.

    OMP_NUM_THREADS=1 python benchmarks/anomaly_exchangeability.py [--model mr2d] [--out OUT]

Options compared: the ``mr2d`` default (t = 150, 300 x 3 draws, zscore, Gaussian sigma 3) and the
same with ``--score ssim``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from anomaly import SLABS, _slice, load_volumes  # noqa: E402

from medidiff.model_store.registry import resolve_model  # noqa: E402
from medidiff.tasks.anomaly import calibrate_threshold, detect_anomalies  # noqa: E402
from medidiff.tasks.anomaly.fdr import ADAPTIVE, calibration_tables, conformal_pvalues, standardise  # noqa: E402

BASE = {"timesteps": [150, 150, 150, 300, 300, 300], "median_size": 0, "smooth_sigma": 3}
OPTIONS = {"zscore": {**BASE, "score": "zscore"}, "ssim": {**BASE, "score": "ssim"}}
LEVELS = (0.01, 0.001)


def slab_rows(model, options: dict, vols) -> dict:
    """Per slice of each slab: observed / nominal share at each p level, standardised q99.9 and max."""
    calib = [_slice(v, z, name=f"v{i}z{z}") for i, v in enumerate(vols) for z in SLABS["calibration"]]
    thr = calibrate_threshold(model, calib, 99.0, save=False, device="cpu", **options)

    def score(scan):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = detect_anomalies(model, scan, threshold=thr, device="cpu", **options)
        return r.map.array[r.foreground.array > 0]

    table = calibration_tables([score(s) for s in calib], 8192, seed=0)[ADAPTIVE]
    out: dict = {"calibration sample": {"q99.9": float(np.quantile(table, 0.999)), "max": float(table.max())}}
    for slab in ("calibration", "validation", "test"):
        rows = []
        for i, v in enumerate(vols):
            for z in SLABS[slab]:
                s = standardise(score(_slice(v, z, name=f"v{i}z{z}")))
                p = conformal_pvalues(s, table)
                rows.append({"slice": f"v{i}z{z}", **{f"{a:g}": float((p <= a).mean() / a) for a in LEVELS},
                             "q99.9": float(np.quantile(s, 0.999)), "max": float(s.max())})
        out[slab] = rows
    return out


def markdown(results: dict) -> str:
    lines = ["| score | slab | observed / nominal at p <= 0.01 (per slice) | at p <= 0.001 | slices above 1.2x at 0.01 "
             "| standardised max per slice (calibration sample: q99.9 / max) |", "|---|---|---|---|---|---|"]
    for name, out in results.items():
        cs = out["calibration sample"]
        for slab in ("calibration", "validation", "test"):
            rows = out[slab]
            r01 = " ".join(f"{r['0.01']:.2f}" for r in rows)
            r001 = " ".join(f"{r['0.001']:.1f}" for r in rows)
            high = sum(r["0.01"] > 1.2 for r in rows)
            mx = " ".join(f"{r['max']:.1f}" for r in rows)
            lines.append(f"| {name} | {slab} | {r01} | {r001} | {high} of {len(rows)} | {mx} ({cs['q99.9']:.2f} / {cs['max']:.2f}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mr2d")
    ap.add_argument("--out", type=Path, default=Path("bench_exchangeability"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, vols = resolve_model(args.model, device="cpu"), load_volumes()
    results = {name: slab_rows(model, opts, vols) for name, opts in OPTIONS.items()}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
