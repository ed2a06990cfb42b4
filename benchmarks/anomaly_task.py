"""Benchmark part 3: chosen anomaly option sets run end to end through the task API on one split.

Same data, splits, lesions and metrics as ``benchmarks/anomaly.py`` (whose functions this uses):
for each option set (a JSON object of :class:`~medidiff.tasks.anomaly.options.AnomalyOptions`
fields), ``calibrate_threshold`` on the calibration slab, then ``detect_anomalies`` on every slice
of the split. Used to check on test what the variant table of ``anomaly.py`` chose on validation.

    OMP_NUM_THREADS=1 python benchmarks/anomaly_task.py --split test \\
        --options '{"score": "zscore", "median_size": 0, "smooth_sigma": 2}' '{"median_size": 0, "smooth_sigma": 2}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from anomaly import SLABS, _slice, load_volumes, make_split, table, task_row  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mr2d")
    ap.add_argument("--split", choices=("validation", "test"), default="test")
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
    items = make_split(vols, SLABS[args.split], args.lesions, args.seed + (args.split == "test"))
    rows = []
    for text in args.options:
        opts = json.loads(text)
        name = f"medidiff {args.model}, " + ", ".join(f"{k}={v}" for k, v in opts.items())
        rows.append(task_row(model, name, calib, items, [], **opts))
    out = f"{args.split}:\n\n{table(rows)}\n\nwhole run {time.perf_counter() - t0:.0f} s\n"
    print(out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"table-{args.split}.md").write_text(out)
    (args.out / f"results-{args.split}.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
