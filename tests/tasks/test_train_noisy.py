"""``medidiff train --noisy``: a model trained on a folder of noisy real images, no clean data anywhere.

Two crops of the held-out microscopy sample with Poisson-Gaussian noise (10%, as in test_fit.py)
are the whole training set; the clean crops are only used to score. The objective is --fit's
(``fit_train``), each image at its own estimated noise level.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cli_runner import call
from medidiff.builtin.sample_scans import microscopy_sample
from medidiff.core import noise as noise_lib
from medidiff.core.metrics import psnr
from medidiff.core.model import DiffusionModel
from medidiff.io import Scan, load_scan, save_scan
from medidiff.tasks.denoise import denoise

LEVEL = 0.1
STEPS = 150


@pytest.fixture(scope="module")
def noisy_folder(tmp_path_factory):
    """A folder of two noisy TIFF crops of a real cell image, and their clean versions (for scoring only)."""
    root = tmp_path_factory.mktemp("noisy_train")
    sample = microscopy_sample()
    cleans = [sample.array[200:328, 60:188].copy(), sample.array[40:168, 100:228].copy()]
    folder = root / "scans"
    folder.mkdir()
    for k, clean in enumerate(cleans):
        y = noise_lib.add_noise(clean, "poisson-gaussian", LEVEL, rng=k + 1).astype(np.float32)
        save_scan(Scan(y, sample.spacing, sample.affine, "microscopy", {}), folder / f"cell{k}.tif")
    return folder, cleans


@pytest.fixture(scope="module")
def noisy_run(noisy_folder, tmp_path_factory):
    folder, _ = noisy_folder
    run = tmp_path_factory.mktemp("noisy_run") / "run"
    from medidiff.cli import main

    try:
        main(["train", str(folder), "--out", str(run), "--noisy", "--steps", str(STEPS), "--batch-size", "8",
              "--image-size", "32", "--ema-decay", "0.995", "--device", "cpu", "--seed", "0"])
    except SystemExit as exc:
        assert not exc.code, exc
    return run


def test_noisy_training_denoises_better_than_the_noisy_input(noisy_folder, noisy_run):
    folder, cleans = noisy_folder
    model = DiffusionModel.load(noisy_run / "model")
    for k, clean in enumerate(cleans):
        scan = load_scan(folder / f"cell{k}.tif")
        span = float(clean.max() - clean.min())
        out = denoise(model, scan, method="tweedie", device="cpu")
        noisy_db, den_db = psnr(clean, scan.array, span), psnr(clean, out.scan.array, span)
        assert den_db > noisy_db + 4.0, (k, noisy_db, den_db)  # measured +6.6 and +10.1 dB at 250 steps


def test_noisy_model_records_each_scans_noise_and_the_objective(noisy_run):
    training = json.loads((noisy_run / "model" / "config.json").read_text())["training"]
    assert training["noisy"] is True and training["noise"] == "white" and training["steps"] == STEPS
    scans = training["per_scan"]
    assert [s["source"] for s in scans] == ["cell0.tif", "cell1.tif"]
    assert all(s["noise_model"] == "poisson-gaussian" and s["sigma_network_units"] > 0 for s in scans)
    assert scans[0]["sigma_network_units"] != scans[1]["sigma_network_units"]  # each at its own level
    with open(noisy_run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == STEPS and all(np.isfinite(float(r["loss"])) for r in rows)


@pytest.mark.parametrize("extra", [["--noise", "simplex"], ["--dims", "3", "--image-size", "16"],
                                   ["--prediction", "v_prediction"]])
def test_noisy_refuses_what_its_objective_cannot_train(capsys, tmp_path, noisy_folder, extra):
    folder, _ = noisy_folder
    code, out, err = call(capsys, "train", folder, "--out", tmp_path / "run", "--noisy", "--steps", "2", *extra)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--noisy" in lines[0], err
    assert not (tmp_path / "run" / "model").exists()


def test_noisy_refuses_images_smaller_than_the_crop(capsys, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    rng = np.random.default_rng(0)
    save_scan(Scan((100 + 10 * rng.standard_normal((24, 24))).astype(np.float32), (1.0, 1.0), np.eye(4),
                   "microscopy", {}), small / "a.tif")
    code, out, err = call(capsys, "train", small, "--out", tmp_path / "run", "--noisy", "--steps", "2",
                          "--image-size", "32", "--device", "cpu")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "32x32" in lines[0], err
