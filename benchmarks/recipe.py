"""Training-recipe study (#12 section 2): which recipe gives the best held-out denoising per CPU second.

    OMP_NUM_THREADS=1 python benchmarks/recipe.py --budget 150 --out /tmp/h5/recipe.json

Data: the built-in ``mr2d``'s own split of nibabel's ``example4d.nii.gz`` (volume 0): slices
z < 16 train (as ``benchmarks/prepare_builtin_data.py`` writes ``mr_train.nii.gz``), z 16-17
are the **validation** slices (used by neither the training file nor the shipped sample), and
the shipped held-out sample ``medidiff/builtin/samples/mr_heldout.nii.gz`` (z 18-23) is the
**test** split. Every variant trains for the same CPU budget (``time.process_time`` at one
thread: the machine is shared, so wall time is not a fair unit): a short probe measures its
CPU seconds per step and the run gets ``budget / cost`` steps, so its learning-rate schedule
ends inside the budget. One factor at a time against the baseline (the recipe ``mr2d`` was
trained with). Score: ``tweedie`` denoising PSNR inside ``x > 0.1 max`` at Gaussian noise of
2.5, 5 and 10% of the range (the same noise draws for every variant); the winner is chosen on
the validation mean, and the test numbers are reported for every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from medidiff.core.data import prepare_training_data  # noqa: E402
from medidiff.core.progress import run_to_end  # noqa: E402
from medidiff.io import Scan, load_scan  # noqa: E402
from medidiff.tasks.denoise import denoise  # noqa: E402
from medidiff.tasks.train import TrainConfig, train_steps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (0.025, 0.05, 0.10)
# the mr2d recipe (medidiff/builtin/mr2d/MODEL_CARD.md) and one change each
BASE = dict(preset="tiny", image_size=32, batch_size=32, lr=2e-3, ema_decay=0.999, prediction="epsilon",
            timestep_sampling="uniform")
VARIANTS = {
    "baseline (mr2d recipe)": {},
    "timesteps low-noise": {"timestep_sampling": "low-noise"},
    "timesteps log-normal": {"timestep_sampling": "log-normal"},
    "v-prediction": {"prediction": "v_prediction"},
    "crop 64": {"image_size": 64},
    "preset small": {"preset": "small"},
    "EMA 0.99": {"ema_decay": 0.99},
    "lr 1e-3": {"lr": 1e-3},
}


def slab(z0: int, z1: int) -> Scan:
    """Slices ``z0:z1`` of example4d volume 0 as a Scan (as prepare_builtin_data.py writes them)."""
    img = nib.load(Path(os.path.dirname(nib.__file__)) / "tests" / "data" / "example4d.nii.gz")
    vol = np.asarray(img.dataobj)[..., 0][:, :, z0:z1].astype(np.int16)
    affine = img.affine.copy()
    affine[:3, 3] = (img.affine @ np.array([0, 0, z0, 1.0]))[:3]
    spacing = tuple(float(z) for z in reversed(img.header.get_zooms()[:3]))
    return Scan(vol.T.astype(np.float32), spacing, affine, "MR", {})


def psnr(x: np.ndarray, a: np.ndarray) -> float:
    mask = x > 0.1 * x.max()
    r = float(x.max() - x.min())
    return float(10 * np.log10(r * r / np.mean((a[mask] - x[mask]) ** 2)))


def score(model, clean: Scan, seed: int) -> dict[str, float]:
    """Tweedie PSNR at each noise level (fixed noise draws)."""
    x = clean.array
    out = {}
    for k, level in enumerate(LEVELS):
        sigma = level * float(x.max() - x.min())
        noisy = x + sigma * np.random.default_rng([seed, k]).standard_normal(x.shape).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = denoise(model, clean.with_array(noisy.astype(np.float32)), method="tweedie", noise="gaussian",
                        sigma=sigma, device="cpu", seed=0)
        out[f"{level:g}"] = round(psnr(x, d.scan.array), 3)
        out[f"noisy {level:g}"] = round(psnr(x, noisy), 3)
    return out


def run(name: str, change: dict, train: Scan, budget: float, seed: int) -> dict:
    cfg = TrainConfig(**{**BASE, **change}, seed=seed, device="cpu", checkpoint_every=0, checkpoint_minutes=0)
    td = prepare_training_data([train], spatial_dims=2, image_size=cfg.image_size, augment=cfg.augment)
    probe = 8
    run_to_end(train_steps(td, None, cfg, steps=2))  # warm-up
    c0 = time.process_time()
    run_to_end(train_steps(td, None, cfg, steps=probe))
    per_step = (time.process_time() - c0) / probe
    steps = max(10, int(budget / per_step))
    c0, w0 = time.process_time(), time.perf_counter()
    result = run_to_end(train_steps(td, None, cfg, steps=steps))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {"variant": name, "change": change, "steps": steps, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
            "cpu_s_per_step_probe": round(per_step, 4), "final_loss": round(float(np.mean(result.losses[-50:])), 5),
            "_model": result.model}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=150.0, help="CPU seconds of training per variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    ap.add_argument("--out", type=Path, default=Path("recipe.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, val = slab(0, 16), slab(16, 18)
    test = load_scan(ROOT / "medidiff" / "builtin" / "samples" / "mr_heldout.nii.gz")
    rows = []
    for name, change in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        r = run(name, change, train, args.budget, args.seed)
        model = r.pop("_model")
        r["val"], r["test"] = score(model, val, 1), score(model, test, 2)
        r["val_mean"] = round(float(np.mean([r["val"][f"{v:g}"] for v in LEVELS])), 3)
        r["test_mean"] = round(float(np.mean([r["test"][f"{v:g}"] for v in LEVELS])), 3)
        rows.append(r)
        print(json.dumps(r), flush=True)
        args.out.write_text(json.dumps(rows, indent=1))
    best = max(rows, key=lambda r: r["val_mean"])
    print(f"chosen on validation: {best['variant']} (val {best['val_mean']} dB, test {best['test_mean']} dB)")
    head = "| variant | steps | CPU s | val mean | test " + " | test ".join(f"{v:g}" for v in LEVELS) + " | test mean |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(f"| {r['variant']} | {r['steps']} | {r['cpu_s']} | {r['val_mean']:.2f} | "
              + " | ".join(f"{r['test'][f'{v:g}']:.2f}" for v in LEVELS) + f" | {r['test_mean']:.2f} |")
    print("noisy test: " + ", ".join(f"{v:g}: {rows[0]['test'][f'noisy {v:g}']:.2f}" for v in LEVELS))


if __name__ == "__main__":
    main()
