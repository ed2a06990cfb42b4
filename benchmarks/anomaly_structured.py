"""Benchmark part 2 (issue 13 section 2): does training with structured noise find iso-intense lesions?

Same data, splits, lesions and metrics as ``benchmarks/anomaly.py`` (whose functions this uses).
Two tiny 2D DDPMs are trained here with the same recipe on the training slab (z 0-15 of volume 0):
one with white noise (``medidiff train`` default) and one with AnoDDPM's simplex noise
(``medidiff train --noise simplex``); each is then run through the task API end to end with its
matching method (``ddpm`` for the white model, ``simplex`` for the simplex model), calibrated on the
calibration slab, on the validation and the test split. The white model at the same budget is the
fair comparison for the simplex one (``mr2d`` was trained 2x longer with 2x the batch).

Run (CPU, 1 torch thread):

    OMP_NUM_THREADS=1 python benchmarks/anomaly_structured.py --out /tmp/bench-anomaly-structured
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

from medidiff.core.model import DiffusionModel  # noqa: E402
from medidiff.io import Scan  # noqa: E402
from medidiff.tasks.train import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500, help="training steps of each model")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lesions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scores", nargs="*", default=["residual", "zscore"], help="task --score options per model")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-anomaly-structured"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    vols = load_volumes()
    calib = [_slice(v, z, name=f"v{vi}z{z}") for vi, v in enumerate(vols) for z in SLABS["calibration"]]
    train_scan = Scan(vols[0].array[: len(SLABS["train"])], vols[0].spacing, vols[0].affine, "MR")
    splits = {s: make_split(vols, SLABS[s], args.lesions, args.seed + (s == "test")) for s in ("validation", "test")}
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {"validation": [], "test": []}
    info = {}
    for noise, method in (("simplex", "simplex"), ("white", "ddpm")):
        t0 = time.perf_counter()
        run = args.out / f"model-{noise}"
        train([train_scan], run, dims=2, preset="tiny", image_size=32, steps=args.steps, batch_size=args.batch_size,
              lr=2e-3, seed=args.seed, device="cpu", checkpoint_every=0, overwrite=True, noise=noise)
        model = DiffusionModel.load(run / "model", device="cpu")
        info[noise] = {"train_seconds": time.perf_counter() - t0, "parameters": model.num_parameters()}
        print(f"{noise}: trained {args.steps} steps in {info[noise]['train_seconds']:.0f} s", flush=True)
        for score in args.scores:
            for split in ("validation", "test"):
                name = (f"tiny {noise}-noise model ({args.steps} steps), --method {method} --score {score}")
                rows[split].append(task_row(model, name, calib, splits[split], [], method=method, score=score))
    text = "\n\n".join(f"{s}:\n\n{table(r)}" for s, r in rows.items())
    text += f"\n\ntraining: {info}; whole run {time.perf_counter() - t_start:.0f} s\n"
    print(text)
    (args.out / "table.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "models": info, "steps": args.steps}, indent=2,
                                                      default=float) + "\n")


if __name__ == "__main__":
    main()
