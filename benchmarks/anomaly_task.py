"""Benchmark part 3: chosen anomaly option sets run end to end through the task API on one split.

Same data, splits, lesions and metrics as ``benchmarks/anomaly.py`` (whose functions this uses):
for each option set (a JSON object of :class:`~medidiff.tasks.anomaly.options.AnomalyOptions`
fields), ``calibrate_threshold`` on the calibration slab, then ``detect_anomalies`` on every slice
of the split. Used to check on test what the variant table of ``anomaly.py`` chose on validation.

    OMP_NUM_THREADS=1 python benchmarks/anomaly_task.py --split validation test \\
        --options '{"score": "zscore", "median_size": 0, "smooth_sigma": 2}' '{"median_size": 0, "smooth_sigma": 2}'

``--model FOLDER --label NAME`` runs a model trained elsewhere on the train slab under a short row
name; ``--baseline`` adds the intensity outlier map ``|x - healthy tissue mean|`` on each split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from anomaly import (SLABS, _slice, evaluate, fdr_table, intensity_baseline, load_volumes, make_split,  # noqa: E402
                     table, task_row, timed_maps)

from medidiff.io import Scan  # noqa: E402


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
            rows.append(task_row(model, name, calib, items, [], **opts))
        out = (f"{split}:\n\n{table(rows)}\n\nFDR masks, plain vs scan-adaptive (lesioned FDP / healthy scans flagged; "
               f"lesion voxels found):\n\n{fdr_table(rows)}\n\nwhole run so far {time.perf_counter() - t0:.0f} s\n")
        print(out, flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"table-{split}.md").write_text(out)
        (args.out / f"results-{split}.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")

if __name__ == "__main__":
    main()
