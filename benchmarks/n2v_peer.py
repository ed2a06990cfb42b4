"""CAREamics Noise2Void on one noisy image, the peer column of ``benchmarks/denoise.py``.

Run with the Python of the careamics venv (it needs its own; see benchmarks/README.md, Denoising):

    /work/venvs/careamics/bin/python benchmarks/n2v_peer.py --input noisy.npy --output n2v.npy --minutes 1

Noise2Void (Krull, Buchholz & Jug, CVPR 2019) trains a UNet on the noisy image itself: random
pixels of each patch are replaced by a neighbour and the loss is the squared error at those
pixels only, so the network cannot learn the identity. With pixel-wise independent, zero-mean
noise the minimiser of that blind-spot loss is ``E[x | neighbourhood]``, a denoiser learnt with
no clean data -- the same promise as medidiff's ``--fit``.

Settings are CAREamics' documented defaults for a 2D array (``create_n2v_config``: patch 64 x 64,
batch 16 as in its quick start, flips and 90-degree rotations, 8 validation patches taken from the
image (fewer only when the image has under 32 patches), Adam + ReduceLROnPlateau), with one
change: training runs until Lightning's ``max_time`` (``--minutes``, the same wall-clock budget as
``--fit-minutes``) instead of the default 30 epochs. An epoch is one pass over the image's
non-overlapping 64 x 64 patches, so on one 532 x 275 image the default would stop after ~60
optimiser steps, well inside the budget and far from converged; the budget is the fairer limit. Prediction is one pass over the whole image, reflect-padded to sides divisible by 4 (CAREamics'
UNet refuses others) and cropped back. The input is
an ``.npy`` of shape (Y, X) or (S, Y, X) (slices trained on together, axes ``SYX``); the output
has the same shape, float32. The last line on stdout is a JSON report (seconds, epochs, steps).

torchvision: careamics 0.3.5 pins ``torchvision<=0.26`` (torch 2.11), while the only CPU torch
this machine installs is 2.13, and PyPI's torchvision 0.28 is a CUDA build whose ops library does
not load on CPU torch. CAREamics imports torchvision only for its LVAE models and the BioImage
export's environment text, never on the N2V path, so :func:`_torchvision_stub` puts an empty
module in its place when no working torchvision is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np

EPOCHS = 100_000  # so that the wall-clock budget, not the epoch count, ends training (see the docstring)

def _torchvision_stub() -> str:
    """Import torchvision, or (after torchmetrics/lightning decided it is absent) register an empty stub."""
    try:
        import torchvision

        return str(torchvision.__version__)
    except Exception:  # absent, or a build whose C++ ops do not load with this torch
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
    import lightning.pytorch  # noqa: F401  (they cache "torchvision not available" before the stub exists)
    import torchmetrics  # noqa: F401

    root = types.ModuleType("torchvision")
    root.__version__ = "0+stub"
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    root.transforms, transforms.functional = transforms, functional
    sys.modules.update({"torchvision": root, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})
    return "stub"


def run(noisy: np.ndarray, minutes: float, seed: int, workdir: Path) -> tuple[np.ndarray, dict]:
    """Train N2V on ``noisy`` ((Y, X) or (S, Y, X)) for at most ``minutes``, then predict it."""
    tv = _torchvision_stub()
    from lightning.pytorch import seed_everything

    import careamics
    from careamics import CAREamist
    from careamics.config import create_n2v_config

    seed_everything(seed, workers=True)
    axes = "YX" if noisy.ndim == 2 else "SYX"
    stack = noisy.reshape((-1, *noisy.shape[-2:]))
    patches = stack.shape[0] * (stack.shape[1] // 64) * (stack.shape[2] // 64)
    n_val = 8 if patches >= 32 else max(1, patches // 4)  # the default 8, unless the image is too small
    config = create_n2v_config(experiment_name="n2v_peer", data_type="array", axes=axes, patch_size=[64, 64],
                               batch_size=16, num_epochs=EPOCHS, n_val_patches=n_val)
    params = dict(config.training_config.trainer_params or {})
    params.update(max_time={"seconds": int(round(60 * minutes))}, accelerator="cpu", devices=1)
    config.training_config.trainer_params = params
    careamist = CAREamist(config, work_dir=workdir, enable_progress_bar=False)
    t0 = time.perf_counter()
    careamist.train(train_data=noisy.astype(np.float32))
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    # CAREamics' UNet (depth 2) needs sides divisible by 4: reflect-pad the few missing pixels, crop after
    pad = [(0, 0)] * (noisy.ndim - 2) + [(0, (-n) % 4) for n in noisy.shape[-2:]]
    preds, _ = careamist.predict(np.pad(noisy.astype(np.float32), pad, mode="reflect"))
    t_pred = time.perf_counter() - t0
    out = np.asarray(preds[0] if len(preds) == 1 else np.stack(preds), dtype=np.float32)
    out = out.reshape(np.pad(noisy, pad).shape)[..., : noisy.shape[-2], : noisy.shape[-1]]
    trainer = careamist.trainer
    report = {"careamics": careamics.__version__, "torchvision": tv, "train_s": round(t_train, 1),
              "predict_s": round(t_pred, 1), "epochs": int(trainer.current_epoch), "steps": int(trainer.global_step),
              "max_epochs": params.get("max_epochs"), "patch": 64, "batch": 16, "val_patches": n_val}
    return out, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", type=Path, required=True, help=".npy, (Y, X) or (S, Y, X)")
    ap.add_argument("--output", type=Path, required=True, help=".npy (or .tif) for the prediction")
    ap.add_argument("--minutes", type=float, default=1.0, help="wall-clock training budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--workdir", type=Path, default=Path("n2v_work"), help="CAREamics' working directory")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    noisy = np.load(args.input)
    if noisy.ndim not in (2, 3):
        sys.exit(f"--input {args.input}: expected a 2D image or a stack of 2D slices, got shape {noisy.shape}")
    out, report = run(noisy, args.minutes, args.seed, args.workdir)
    if args.output.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(args.output, out)
    else:
        np.save(args.output, out)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
