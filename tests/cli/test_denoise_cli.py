"""``medidiff denoise``: NIfTI in/out, report PNG, folders, one-line errors, inputs never overwritten."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medidiff.core import noise as noise_lib
from cli_runner import call
from medidiff.io import Scan, load_scan, save_scan
from medidiff.core.metrics import psnr


@pytest.fixture(scope="module")
def clean_slices(mr_volume) -> np.ndarray:
    return mr_volume.array[19:21]  # two held-out slices


@pytest.fixture
def noisy_nifti(tmp_path, mr_volume, clean_slices) -> Path:
    span = float(clean_slices.max() - clean_slices.min())
    noisy = noise_lib.add_gaussian(clean_slices, 0.1 * span, np.random.default_rng(0))
    scan = Scan(noisy, mr_volume.spacing, mr_volume.affine, "MR")
    return save_scan(scan, tmp_path / "noisy.nii.gz")


def test_nifti_in_out_with_report(capsys, tmp_path, tiny_mr_model, noisy_nifti, clean_slices):
    out, report, unc = tmp_path / "clean.nii.gz", tmp_path / "report.png", tmp_path / "unc.nii.gz"
    code, stdout, err = call(capsys, "denoise", tiny_mr_model.path, noisy_nifti, out, "--noise", "gaussian",
                             "--report", report, "--uncertainty", unc, "--samples", "2", "--steps", "2",
                             "--device", "cpu")
    assert code == 0, err
    assert "noise model gaussian" in stdout and "sigma" in stdout and "timestep" in stdout
    denoised, noisy = load_scan(out), load_scan(noisy_nifti)
    assert denoised.shape == noisy.shape and denoised.spacing == pytest.approx(noisy.spacing)
    np.testing.assert_allclose(denoised.affine, noisy.affine, atol=1e-5)
    span = float(clean_slices.max() - clean_slices.min())
    assert psnr(clean_slices, denoised.array, span) > psnr(clean_slices, noisy.array, span) + 5
    assert load_scan(unc).array.max() > 0
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_input_exits_2_with_one_line(tmp_path, tiny_mr_model):
    result = subprocess.run([sys.executable, "-m", "medidiff", "denoise", str(tiny_mr_model.path),
                             str(tmp_path / "missing.nii.gz"), str(tmp_path / "out.nii.gz")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.nii.gz: no such file or folder" in lines[0]


def test_refuses_to_overwrite_input_or_existing_output(capsys, tmp_path, tiny_mr_model, noisy_nifti):
    before = noisy_nifti.read_bytes()
    code, _, err = call(capsys, "denoise", tiny_mr_model.path, noisy_nifti, noisy_nifti, "--overwrite", "--device", "cpu")
    assert code == 2 and "input" in err and len(err.strip().splitlines()) == 1
    assert noisy_nifti.read_bytes() == before
    existing = tmp_path / "exists.nii.gz"
    existing.write_bytes(b"keep")
    code, _, err = call(capsys, "denoise", tiny_mr_model.path, noisy_nifti, existing, "--device", "cpu")
    assert code == 2 and "already exists" in err
    assert existing.read_bytes() == b"keep"


def test_folder_in_folder_out(capsys, tmp_path, tiny_mr_model, mr_volume):
    src = tmp_path / "in"
    src.mkdir()
    for z in (19, 21):
        s = Scan(mr_volume.array[z] + 0.0, mr_volume.spacing[1:], mr_volume.affine, "MR")
        save_scan(s, src / f"slice{z}.nii.gz")
    dst = tmp_path / "out"
    code, stdout, err = call(capsys, "denoise", tiny_mr_model.path, src, dst, "--noise", "gaussian",
                             "--report", tmp_path / "reports", "--device", "cpu")
    assert code == 0, err
    assert sorted(p.name for p in dst.iterdir()) == ["slice19.denoise.json", "slice19.nii.gz", "slice21.denoise.json",
                                                     "slice21.nii.gz"]  # each scan with its self-check sidecar
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["slice19.png", "slice21.png"]
    assert load_scan(dst / "slice19.nii.gz").shape == (96, 128)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind


def test_help_has_example():
    result = subprocess.run([sys.executable, "-m", "medidiff", "denoise", "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Example:" in result.stdout


def _dicom(name: str) -> str:
    from pydicom.data import get_testdata_file

    return str(get_testdata_file(name))


@pytest.mark.parametrize("args, understood", [
    (["mr2d", "CT_small.dcm"], "understood MODEL=mr2d IN=.*CT_small.dcm but no OUT"),
    (["MR_small.dcm"], "understood IN=.*MR_small.dcm but no OUT"),
    (["mr2d"], "understood MODEL=mr2d but no IN and OUT"),
    (["CT_small.dcm", "MR_small.dcm", "out.nii.gz"], "CT_small.dcm is a scan, not a model"),
    (["no-such-model", "MR_small.dcm"], "no-such-model: no such scan, model folder or model name"),
    (["MR_small.dcm", "out.nii.gz", "--model", "mr2d", "--model", "mr2d"], None),  # repeated option: last wins
    (["--model", "mr2d", "MR_small.dcm"], "understood --model mr2d and IN=.*MR_small.dcm but no OUT"),
    (["mr2d", "MR_small.dcm", "out.nii.gz", "--model", "mr2d"], "--model mr2d and three arguments"),
    ([], "name the noisy scan and the output"),
])
def test_misread_forms_say_what_was_understood(capsys, tmp_path, args, understood):
    argv = [_dicom(a) if a.endswith(".dcm") else (str(tmp_path / a) if a == "out.nii.gz" else a) for a in args]
    if understood is None:  # a valid form: it runs (mr2d on a real MR slice)
        code, _, err = call(capsys, "denoise", *argv, "--device", "cpu")
        assert code == 0, err
        assert (tmp_path / "out.nii.gz").is_file()
        return
    code, _, err = call(capsys, "denoise", *argv, "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert re.search(understood, lines[0]), lines[0]
    assert not (tmp_path / "out.nii.gz").exists()


def test_model_option_and_ensemble(capsys, tmp_path, tiny_mr_model, noisy_nifti, clean_slices):
    out = tmp_path / "ens.nii.gz"
    code, stdout, err = call(capsys, "denoise", noisy_nifti, out, "--model", tiny_mr_model.path, "--noise", "gaussian",
                             "--ensemble", "4", "--device", "cpu")
    assert code == 0, err
    span = float(clean_slices.max() - clean_slices.min())
    assert psnr(clean_slices, load_scan(out).array, span) > psnr(clean_slices, load_scan(noisy_nifti).array, span) + 5
    code, _, err = call(capsys, "denoise", noisy_nifti, tmp_path / "bad.nii.gz", "--model", tiny_mr_model.path,
                        "--ensemble", "3", "--device", "cpu")
    assert code == 2 and "--ensemble" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.nii.gz").exists()


@pytest.mark.parametrize("kind, message", [("constant", "constant"), ("noise only", "no foreground above the noise")])
def test_unusable_scan_exits_2_with_one_line_and_no_output(capsys, tmp_path, tiny_mr_model, mr_volume, kind, message):
    array = np.full((96, 128), 7.0) if kind == "constant" else np.random.default_rng(0).normal(100.0, 10.0, (96, 128))
    src = save_scan(Scan(array.astype(np.float32), mr_volume.spacing[1:], mr_volume.affine, "MR"), tmp_path / "bad.nii.gz")
    out = tmp_path / "out.nii.gz"
    code, _, err = call(capsys, "denoise", tiny_mr_model.path, src, out, "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "bad.nii.gz" in lines[0] and message in lines[0], err
    assert not out.exists()


# -- --fit: train on the noisy scan itself ---------------------------------------------------------
@pytest.fixture
def noisy_cell_tif(tmp_path) -> Path:
    from medidiff.builtin.sample_scans import microscopy_sample

    sample = microscopy_sample()
    noisy = noise_lib.add_noise(sample.array[200:264, 60:124], "poisson-gaussian", 0.1, rng=0)
    return save_scan(Scan(noisy.astype(np.float32), sample.spacing, sample.affine, "microscopy"), tmp_path / "cells.tif")


def test_fit_none_trains_on_the_scan_and_writes_output(capsys, tmp_path, noisy_cell_tif):
    out, report, saved = tmp_path / "fit.tif", tmp_path / "fit.png", tmp_path / "fitted-model"
    code, stdout, err = call(capsys, "denoise", "none", noisy_cell_tif, out, "--fit", "--fit-steps", "3",
                             "--report", report, "--fit-save", saved, "--device", "cpu")
    assert code == 0, err
    assert "fitted a new model to the scan itself (3 steps" in stdout and "poisson-gaussian" in stdout
    denoised = load_scan(out)
    assert denoised.shape == (64, 64) and np.all(np.isfinite(denoised.array))
    assert not np.array_equal(denoised.array, load_scan(noisy_cell_tif).array)
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the fitted model is an ordinary model folder: plain denoise takes it
    code, _, err = call(capsys, "denoise", saved, noisy_cell_tif, tmp_path / "again.tif", "--device", "cpu")
    assert code == 0, err
    assert load_scan(tmp_path / "again.tif").shape == (64, 64)


def test_fit_on_a_single_8x8_image_exits_2_with_one_line_and_no_output(capsys, tmp_path):
    rng = np.random.default_rng(0)
    src = save_scan(Scan((100 + 10 * rng.standard_normal((8, 8))).astype(np.float32), (1.0, 1.0), np.eye(4),
                         "microscopy"), tmp_path / "tiny.tif")
    out = tmp_path / "out.tif"
    code, _, err = call(capsys, "denoise", "none", src, out, "--fit", "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "tiny.tif" in lines[0] and "8x8" in lines[0], err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [([], "add --fit"), (["--fit", "--method", "ddim"], "drop --method ddim"),
                                            (["--fit", "--ensemble", "4"], "drop --ensemble 4"),
                                            (["--fit", "--fit-minutes", "0"], "--fit-minutes"),
                                            (["--fit", "--fit-steps", "0"], "--fit-steps"),
                                            (["--fit", "--interval", "lo.tif,hi.tif"], "drop --interval/--coverage"),
                                            (["--model-name", "micro2d", "--fit-save", "m"], "without --fit")])
def test_fit_option_misuse_is_one_line(capsys, tmp_path, noisy_cell_tif, extra, message):
    out = tmp_path / "out.tif"
    model = "none"
    if extra[:1] == ["--model-name"]:
        model, extra = extra[1], extra[2:]
    code, _, err = call(capsys, "denoise", model, noisy_cell_tif, out, *extra, "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_modality_option_picks_model_and_noise_for_files_that_do_not_say(capsys, tmp_path):
    from medidiff.builtin.sample_scans import mr_sample
    from medidiff.io import Scan, save_scan

    sample = mr_sample()
    plain = tmp_path / "plain.nii.gz"  # a NIfTI records no modality: "OT"
    save_scan(Scan(sample.array[2] / 988.0, sample.spacing[1:], sample.affine, "OT", {}), plain)
    code, out, err = call(capsys, "denoise", plain, tmp_path / "out.nii.gz", "--modality", "MR")
    assert code == 0, err
    assert "mr2d" in out and "noise model rician" in out
    code, _, err = call(capsys, "denoise", plain, tmp_path / "out2.nii.gz")
    assert code == 2 and "modality" in err and not (tmp_path / "out2.nii.gz").exists()
    cell = Path(__file__).resolve().parents[2] / "medidiff" / "builtin" / "samples" / "cell_heldout.tif"
    code, _, err = call(capsys, "denoise", cell, tmp_path / "c.tif", "--modality", "MR")
    assert code == 2 and "records modality microscopy" in err and len(err.strip().splitlines()) == 1
