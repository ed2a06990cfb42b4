"""What contrast augmentation does to generation: the per-sample spread of generated patches.

    OMP_NUM_THREADS=1 python benchmarks/contrast_generation.py NAME=FOLDER [NAME=FOLDER ...] [--n 64]

A model trained with ``medidiff train --contrast-augment F`` learnt its images *and* fainter copies
of them (half the crops squeezed by a factor in [F, 1]). Denoising wants that; generation draws
from the same prior, so its samples should come out at lower contrast too. Each model generates
``--n`` patches (seed 0, the default sampler); printed: quantiles of each patch's standard deviation
in the model's normalised units (where the training images span about [-1, 1]), so models with
different stored normaliser ranges compare. ``--real FILE ...`` adds the same figure for random
crops of real images (each normalised on its own by the first model's rule, no augmentation).
"""

from __future__ import annotations

import argparse

import numpy as np


def spreads(folder: str, n: int) -> np.ndarray:
    """Standard deviation of each generated patch, in the model's normalised units."""
    from medidiff.core.model import DiffusionModel
    from medidiff.tasks.generate import generate

    model = DiffusionModel.load(folder)
    result = generate(model, n, seed=0, device="cpu", batch_size=32)
    return np.array([float(model.normaliser.scale_sigma(float(np.std(s.array)))) for s in result.scans])


def real_spreads(files: list[str], folder: str, n: int) -> np.ndarray:
    """Standard deviation of ``n`` random crops (the models' size) of real images, normalised per scan."""
    from medidiff.core.data import prepare_training_data
    from medidiff.core.model import DiffusionModel

    model = DiffusionModel.load(folder)
    td = prepare_training_data(files, image_size=tuple(model.config.image_size), normaliser=model.normaliser,
                               augment=False, modality=model.config.modality)
    return np.array([float(np.std(x)) for x in td.batch(seed=0, step=0, batch_size=n)["images"]])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=FOLDER")
    ap.add_argument("--n", type=int, default=64, help="patches per model")
    ap.add_argument("--real", nargs="*", default=[], help="real images: the same figure for their crops")
    args = ap.parse_args(argv)
    print("| model | median | 10th percentile | 90th percentile |\n|---|---|---|---|")
    if args.real:
        q = np.percentile(real_spreads(args.real, args.models[0].partition("=")[2], args.n), [50, 10, 90])
        print(f"| real crops ({', '.join(args.real)}) | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} |")
    for item in args.models:
        name, _, folder = item.partition("=")
        q = np.percentile(spreads(folder, args.n), [50, 10, 90])
        print(f"| {name} | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} |")


if __name__ == "__main__":
    main()
