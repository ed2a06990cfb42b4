"""Benchmark part 3: chosen anomaly option sets run end to end through the task API on one split.

Same data, splits, lesions and metrics as ``benchmarks/anomaly.py`` (whose functions this uses):
for each option set (a JSON object of :class:`~medidiff.tasks.anomaly.options.AnomalyOptions`
fields), ``calibrate_threshold`` on the calibration slab, then ``detect_anomalies`` on every slice
of the split. Used to check on test what the variant table of ``anomaly.py`` chose on validation.

    OMP_NUM_THREADS=1 python benchmarks/anomaly_task.py --split validation test \\
        --options '{"score": "zscore", "median_size": 0, "smooth_sigma": 2}' '{"median_size": 0, "smooth_sigma": 2}'

``--model FOLDER --label NAME`` runs a model trained elsewhere on the train slab under a short row
name; ``--baseline`` adds the intensity outlier map ``|x - healthy tissue mean|`` on each split.
Each row also gets the scan AUROC of other scan scores than the task's 99th percentile
(:data:`SCAN_SCORES` of the same maps: ``scan_auroc_by`` in ``results-SPLIT.json``, the last table
of ``table-SPLIT.md``) and the calibration's seconds (``calibration_sec``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from anomaly import (SLABS, _slice, evaluate, fdr_table, intensity_baseline, load_volumes, make_split,  # noqa: E402
                     table, timed_maps)

import numpy as np  # noqa: E402

from medidiff.core.metrics import auroc  # noqa: E402
from medidiff.io import Scan  # noqa: E402
from medidiff.tasks.anomaly import calibrate_threshold, detect_anomalies  # noqa: E402
from medidiff.tasks.anomaly.fdr import ADAPTIVE, bh_mask, calibration_tables, scan_level  # noqa: E402


def _fdr_size(m: np.ndarray, fg: np.ndarray, thr: float, tables: dict) -> float:
    return float(bh_mask(m, fg, tables[ADAPTIVE], 0.1, ADAPTIVE)[0].sum())


def _standardised(m: np.ndarray, fg: np.ndarray, p: float) -> float:
    loc, scale = scan_level(m[fg])
    return (float(np.percentile(m[fg], p)) - loc) / scale


def _largest_cluster(m: np.ndarray, fg: np.ndarray, thr: float, mass: bool) -> float:
    """Size (or excess mass) of the largest connected region of the map above ``thr`` in the foreground."""
    from scipy.ndimage import label

    above = (m > thr) & fg
    labels, n = label(above)
    if n == 0:
        return 0.0
    weights = np.clip(m - thr, 0, None)[above] if mass else np.ones(int(above.sum()))
    return float(np.bincount(labels[above], weights=weights).max())


def _disc_mean_max(m: np.ndarray, fg: np.ndarray, radius: int = 4) -> float:
    """Highest mean of the map over a disc of ``radius`` voxels inside the foreground (a lesion-sized filter)."""
    from scipy.ndimage import convolve

    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disc = (yy ** 2 + xx ** 2 <= radius ** 2).astype(float)
    total = convolve(np.where(fg, m, 0.0), disc, mode="constant")
    count = convolve(fg.astype(float), disc, mode="constant")
    full = count >= 0.9 * disc.sum()
    return float((total[full] / count[full]).max()) if full.any() else float(m[fg].max())


# scan scores from one map (``m``, foreground ``fg``), the calibrated threshold and the calibration's FDR tables
SCAN_SCORES = {
    "p99": lambda m, fg, thr, tab: float(np.percentile(m[fg], 99.0)),  # the task's (maps.scan_score)
    "p99.9": lambda m, fg, thr, tab: float(np.percentile(m[fg], 99.9)),
    "max": lambda m, fg, thr, tab: float(m[fg].max()),
    "p99.9 standardised": lambda m, fg, thr, tab: _standardised(m, fg, 99.9),
    "voxels above threshold": lambda m, fg, thr, tab: float((m[fg] > thr).sum()),
    "excess above threshold": lambda m, fg, thr, tab: float(np.clip(m[fg] - thr, 0, None).sum()),
    "FDR 0.1 mask size": _fdr_size,
    "largest cluster above threshold": lambda m, fg, thr, tab: _largest_cluster(m, fg, thr, mass=False),
    "largest cluster excess": lambda m, fg, thr, tab: _largest_cluster(m, fg, thr, mass=True),
    "disc-mean max (r 4)": lambda m, fg, thr, tab: _disc_mean_max(m, fg, 4),
    "top-50 mean": lambda m, fg, thr, tab: float(np.sort(m[fg])[-50:].mean()),
}


def scan_aurocs(maps: list, items: list, calib_maps: list, thr: float) -> dict:
    """Scan AUROC per lesion kind (that kind's scans vs the healthy ones) of each of :data:`SCAN_SCORES`."""
    tables = calibration_tables([m[fg] for m, fg in calib_maps], 8192, seed=0)
    out: dict = {}
    for name, fn in SCAN_SCORES.items():
        scores = [fn(m, fg, thr, tables) for m, fg in maps]
        out[name] = {kind: auroc(np.array([scores[k] for k, it in enumerate(items) if it[1] in ("healthy", kind)]),
                                 np.array([it[1] == kind for it in items if it[1] in ("healthy", kind)]))
                     for kind in ("bright", "iso")}
    return out


def task_row(model, name: str, calib: list[Scan], items: list, **options) -> dict:
    """The task API end to end (as ``anomaly.task_row``), plus the other scan scores' AUROC and calibration seconds."""
    t0 = time.perf_counter()
    thr = calibrate_threshold(model, calib, 99.0, save=False, device="cpu", **options)
    cal_secs = time.perf_counter() - t0

    def task_map(scan: Scan) -> tuple[np.ndarray, np.ndarray]:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            r = detect_anomalies(model, scan, threshold=thr, device="cpu", **options)
        return r.map.array, r.foreground.array > 0

    maps, secs = timed_maps(task_map, [it[2] for it in items])
    calib_maps = [task_map(s) for s in calib]
    row = evaluate(name, maps, items, calib_maps, secs, thr)
    row["calibration_sec"] = cal_secs
    row["scan_auroc_by"] = scan_aurocs(maps, items, calib_maps, thr)
    return row


def scan_table(rows: list[dict]) -> str:
    """Scan AUROC bright / iso of each scan score."""
    names = list(SCAN_SCORES)
    lines = ["| map | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for r in rows:
        if "scan_auroc_by" in r:
            by = r["scan_auroc_by"]
            cells = [f"{by[n]['bright']:.3f} / {by[n]['iso']:.3f}" for n in names]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mr2d", help="a built-in name or a model folder trained on the train slab")
    ap.add_argument("--label", default=None, help="short model name for the rows (default: --model)")
    ap.add_argument("--baseline", action="store_true", help="also the intensity outlier map on each split")
    ap.add_argument("--split", nargs="+", choices=("validation", "test"), default=["test"])
    ap.add_argument("--options", nargs="+", required=True, help="JSON objects of AnomalyOptions fields, one per row")
    ap.add_argument("--lesions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-anomaly-task"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    from medidiff.model_store.registry import resolve_model

    model = resolve_model(args.model, device="cpu")
    vols = load_volumes()
    calib = [_slice(v, z, name=f"v{vi}z{z}") for vi, v in enumerate(vols) for z in SLABS["calibration"]]
    for split in args.split:
        items = make_split(vols, SLABS[split], args.lesions, args.seed + (split == "test"))
        rows = []
        if args.baseline:
            train = Scan(vols[0].array[: len(SLABS["train"])], vols[0].spacing, vols[0].affine, "MR")
            fn = intensity_baseline(train.array)
            maps, secs = timed_maps(fn, [it[2] for it in items])
            rows.append(evaluate("intensity: abs(x - healthy tissue mean)", maps, items, [fn(s) for s in calib], secs))
        for text in args.options:
            opts = json.loads(text)
            name = f"medidiff {args.label or args.model}, " + (", ".join(f"{k}={v}" for k, v in opts.items()) or "defaults")
            rows.append(task_row(model, name, calib, items, **opts))
        out = (f"{split}:\n\n{table(rows)}\n\nFDR masks, plain vs scan-adaptive (lesioned FDP / healthy scans flagged; "
               f"lesion voxels found):\n\n{fdr_table(rows)}\n\n"
               f"Scan AUROC bright / iso by scan score:\n\n{scan_table(rows)}\n\n"
               f"whole run so far {time.perf_counter() - t0:.0f} s\n")
        print(out, flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"table-{split}.md").write_text(out)
        (args.out / f"results-{split}.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")

if __name__ == "__main__":
    main()
