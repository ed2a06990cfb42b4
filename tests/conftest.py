"""Shared fixtures: real scans that ship with installed packages, and tiny models trained here.

The models are trained once per test session on CPU (a minute or so) on real MRI slices
from nibabel's bundled ``example4d.nii.gz``. Slices z < 16 of volume 0 are for training;
slices z >= 18 are held out for tests that need an image the model never saw.
"""

from __future__ import annotations

import os

# Tiny networks on a 2-core machine: one thread per process is 10-30x faster than two
# when several test processes (torchrun, CLI subprocesses) share the cores. Set before
# torch is imported so subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
from pathlib import Path

import nibabel
import numpy as np
import pytest

import torch

from medidiff.io import Scan

torch.set_num_threads(1)

NIBABEL_DATA = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data"
TRAIN_SLICES = slice(0, 16)
HELDOUT_SLICES = slice(18, 24)


def _example4d_volume(index: int = 0) -> Scan:
    img = nibabel.load(NIBABEL_DATA / "example4d.nii.gz")
    data = np.asarray(img.dataobj)[..., index].astype(np.float32)
    affine = img.affine.copy()
    zooms = img.header.get_zooms()[:3]
    return Scan(data.T, tuple(float(z) for z in reversed(zooms)), affine, "MR", {"source_path": "nibabel:example4d.nii.gz"})


@pytest.fixture(scope="session")
def mr_volume() -> Scan:
    """A real brain EPI volume (z, y, x) = (24, 96, 128), 2.2 x 2 x 2 mm, from nibabel's test data."""
    return _example4d_volume(0)


@pytest.fixture(scope="session")
def mr_train_scan(mr_volume: Scan) -> Scan:
    """The training part of ``mr_volume`` (slices z < 16) as its own volume."""
    return Scan(mr_volume.array[TRAIN_SLICES], mr_volume.spacing, mr_volume.affine, "MR", mr_volume.meta)


@pytest.fixture(scope="session")
def mr_heldout_slices(mr_volume: Scan) -> list[np.ndarray]:
    """Held-out real MR slices (never seen in training), (96, 128) each, in scan units."""
    return [mr_volume.array[z] for z in range(mr_volume.shape[0])[HELDOUT_SLICES]]


@pytest.fixture(scope="session")
def tiny_mr_model(mr_train_scan: Scan, tmp_path_factory: pytest.TempPathFactory):
    """A tiny 2D DDPM (epsilon) trained on 32x32 crops of real MR slices; saved to a folder.

    Returns the loaded ``DiffusionModel`` (its ``.path`` is the model folder).
    """
    from medidiff.core.model import DiffusionModel
    from medidiff.tasks.train import train

    # developers may set MEDIDIFF_TEST_MODEL_CACHE to a folder to train once and reuse the
    # model across pytest sessions; CI never sets it, so there it is trained fresh
    cache = os.environ.get("MEDIDIFF_TEST_MODEL_CACHE")
    if cache and (Path(cache) / "tiny_mr" / "model" / "config.json").is_file():
        return DiffusionModel.load(Path(cache) / "tiny_mr" / "model")
    run = Path(cache) / "tiny_mr" if cache else tmp_path_factory.mktemp("tiny_mr_run")
    train([mr_train_scan], run, dims=2, preset="tiny", image_size=32, steps=400, batch_size=16,
          lr=2e-3, seed=0, device="cpu", checkpoint_every=0, overwrite=True)
    return DiffusionModel.load(run / "model")
