"""``train --noise simplex|coarse`` and ``--timestep-sampling``: structured training noise on real MR.

A model trained with simplex noise records it, ``anomaly --method simplex`` runs on it (and is
refused on a white-noise model), ``denoise`` refuses it (it is no Gaussian denoising prior), and
bad values are one line, exit 2. The noise draws themselves are checked for what the maths needs:
unit variance, seeded, and low-frequency (neighbouring pixels correlated, unlike white noise).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_runner import call
from medidiff.core.model import DiffusionModel
from medidiff.core.schedule import NoiseSchedule, ScheduleConfig
from medidiff.errors import MedidiffError, ModelError
from medidiff.io import Scan, save_scan
from medidiff.tasks.denoise import denoise
from medidiff.tasks.train import train
from medidiff.tasks.train_noise import LOW_FRACTION, structured_eps, training_timesteps


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _neighbour_correlation(x: torch.Tensor) -> float:
    a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.mark.parametrize("kind", ["simplex", "coarse"])
def test_structured_noise_is_seeded_unit_variance_and_smooth(kind):
    shape = (4, 1, 32, 32)
    a, b = structured_eps(kind, shape, _gen(1)), structured_eps(kind, shape, _gen(1))
    c = structured_eps(kind, shape, _gen(2))
    assert a.shape == shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    per_image = a.flatten(1)
    assert torch.allclose(per_image.std(dim=1), torch.ones(4), atol=0.02)
    assert per_image.mean(dim=1).abs().max() < 1e-4
    white = structured_eps("white", shape, _gen(1))
    assert abs(_neighbour_correlation(white)) < 0.1
    assert _neighbour_correlation(a) > 0.3  # low-frequency noise (white: ~0): it hides blobs, not pixels


def test_timestep_sampling_shapes_the_levels():
    sched = NoiseSchedule(ScheduleConfig())
    n = 20000
    uniform = training_timesteps("uniform", sched, n, _gen(0))
    assert torch.equal(uniform, sched.sample_training_timesteps(n, generator=_gen(0)))  # the default is unchanged
    low = training_timesteps("low-noise", sched, n, _gen(0))
    lognormal = training_timesteps("log-normal", sched, n, _gen(0))
    cut = int(LOW_FRACTION * sched.T)
    share = lambda t: float((t < cut).float().mean())  # noqa: E731
    assert abs(share(uniform) - 0.3) < 0.02
    assert abs(share(low) - (0.5 + 0.5 * 0.3)) < 0.02  # half from the low end, half uniform
    assert int(low.max()) > 900 and int(low.min()) >= 0  # every level still trained: generation works
    assert share(lognormal) > 0.7 and int(lognormal.min()) >= 0 and int(lognormal.max()) <= sched.T - 1
    for t in (low, lognormal):
        assert t.dtype == torch.long


def test_simplex_model_records_its_noise_runs_simplex_and_cannot_denoise(capsys, tmp_path, mr_train_scan,
                                                                        mr_heldout_slices, tiny_mr_model):
    data = tmp_path / "train.nii.gz"
    save_scan(mr_train_scan, data)
    code, out, err = call(capsys, "train", data, "--out", tmp_path / "run", "--noise", "simplex", "--steps", "3",
                          "--image-size", "32", "--batch-size", "4", "--device", "cpu", "--timestep-sampling", "low-noise")
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["training"]["noise"] == "simplex" and config["training"]["timestep_sampling"] == "low-noise"
    state = json.loads((tmp_path / "run" / "state" / "train.json").read_text())
    assert state["config"]["noise"] == "simplex"  # a resume must keep it (SAME_ON_RESUME)
    scan = tmp_path / "slice.nii.gz"
    save_scan(Scan(mr_heldout_slices[2], (2.0, 2.0), np.eye(4), "MR"), scan)
    code, out, err = call(capsys, "anomaly", tmp_path / "run" / "model", scan, tmp_path / "map.nii.gz",
                          "--method", "simplex", "--threshold", "1e9", "--timesteps", "300", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "map.nii.gz").is_file()
    # the white-noise model refuses simplex in one line
    code, out, err = call(capsys, "anomaly", tiny_mr_model.path, scan, tmp_path / "map2.nii.gz",
                          "--method", "simplex", "--device", "cpu")
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert code == 2 and len(lines) == 1 and "trained with simplex noise" in lines[0], err
    assert not (tmp_path / "map2.nii.gz").exists()
    # ... and the simplex model is no Gaussian denoiser: denoise refuses it, one line, no output
    code, out, err = call(capsys, "denoise", tmp_path / "run" / "model", scan, tmp_path / "den.nii.gz",
                          "--device", "cpu")
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert code == 2 and len(lines) == 1 and "simplex noise" in lines[0] and "cannot denoise" in lines[0], err
    assert not (tmp_path / "den.nii.gz").exists()
    with pytest.raises(ModelError, match="trained with simplex noise"):
        denoise(DiffusionModel.load(tmp_path / "run" / "model"), Scan(mr_heldout_slices[2], (2.0, 2.0), np.eye(4), "MR"),
                device="cpu")


def test_coarse_noise_trains_and_is_recorded(mr_train_scan):
    result = train([mr_train_scan], None, steps=2, image_size=32, batch_size=4, noise="coarse", device="cpu")
    assert result.model.config.training["noise"] == "coarse"
    assert all(np.isfinite(result.losses))


@pytest.mark.parametrize("option, value", [("--noise", "pink"), ("--noise", ""), ("--timestep-sampling", "edm"),
                                           ("--ema-decay", "1.5")])
def test_bad_training_noise_options_are_one_line(capsys, tmp_path, mr_train_scan, option, value):
    data = tmp_path / "train.nii.gz"
    save_scan(mr_train_scan, data)
    code, out, err = call(capsys, "train", data, "--out", tmp_path / "run", option, value, "--steps", "2")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], err
    assert not (tmp_path / "run" / "model").exists()


def test_api_refuses_unknown_noise_before_reading_data():
    with pytest.raises(MedidiffError, match="--noise 'pink'"):
        train(["/no/such/file.nii.gz"], None, noise="pink")


@pytest.fixture(scope="module")
def simplex_mr_model(mr_train_scan, tmp_path_factory):
    """A tiny model trained 150 steps with simplex noise on the real MR training slices (~22 CPU s)."""
    import os
    from pathlib import Path

    cache = os.environ.get("MEDIDIFF_TEST_MODEL_CACHE")
    run = Path(cache) / "tiny_mr_simplex" if cache else tmp_path_factory.mktemp("simplex_run")
    if not (run / "model" / "config.json").is_file():
        train([mr_train_scan], run, preset="tiny", image_size=32, steps=150, batch_size=16, lr=2e-3, seed=0,
              device="cpu", checkpoint_every=0, noise="simplex", overwrite=True)
    return DiffusionModel.load(run / "model")


def test_simplex_on_a_simplex_model_scores_a_planted_lesion_above_healthy_tissue(simplex_mr_model,
                                                                                 mr_heldout_slices):
    from medidiff.core.lesions import plant_lesion
    from medidiff.tasks.anomaly import detect_anomalies

    ratios = []
    for k, img in enumerate(mr_heldout_slices[1:4]):
        les = plant_lesion(img, seed=1 + k, kind="ellipse", radius=7, contrast=0.8)
        scan = Scan(les.image, (2.0, 2.0), np.diag([-2.0, 2.0, 2.2, 1.0]), "MR")
        # t = 100: the default 30%/45% of the schedule buries everything under simplex noise after
        # so short a training (lesion/healthy ~1.0); measured at t = 100: 1.08, 2.12, 1.78
        res = detect_anomalies(simplex_mr_model, scan, method="simplex", threshold=1e9, device="cpu",
                               timesteps=(100,))
        fg = res.foreground.array > 0
        ratios.append(float(res.map.array[les.mask].mean() / res.map.array[fg & ~les.mask].mean()))
    assert min(ratios) > 1.0 and np.mean(ratios) > 1.3, ratios
