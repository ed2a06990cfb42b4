"""``medidiff denoise`` prints the self-check's estimated gain, and warns in one line when it is small."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import skimage.data

from cli_runner import call
from medidiff.core import noise as noise_lib
from medidiff.io import Scan, save_scan
from medidiff.io.scan import affine_from_spacing


@pytest.fixture
def photo_nifti(tmp_path):
    clean = skimage.data.camera().astype(np.float32)[::4, ::4][:96, :128]  # nothing like the model's brain EPI
    noisy = noise_lib.add_noise(clean, "gaussian", 0.01, np.random.default_rng(5)).astype(np.float32)
    return save_scan(Scan(noisy, (2.0, 2.0), affine_from_spacing((2.0, 2.0)), "MR"), tmp_path / "camera.nii.gz")


def test_estimated_gain_line_and_one_line_warning(capsys, tmp_path, tiny_mr_model, photo_nifti):
    code, out, err = call(capsys, "denoise", tiny_mr_model.path, photo_nifti, tmp_path / "out.nii.gz",
                          "--noise", "gaussian", "--device", "cpu")
    assert code == 0, err
    lines = [line for line in out.splitlines() if "estimated gain" in line]
    assert len(lines) == 1 and lines[0].startswith("camera.nii.gz: estimated gain: ")
    shape = r"estimated gain: [-+]\d+\.\d dB \(SURE, no clean data; on the foreground, \d+% of the scan\)$"
    assert re.search(shape, lines[0])
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1
    assert "camera.nii.gz: the model is unlikely to help this scan (estimated" in warned[0] and "try --fit" in warned[0]
    assert (tmp_path / "out.nii.gz").is_file()  # a warning, not a refusal
    info = json.loads((tmp_path / "out.denoise.json").read_text())  # the sidecar keeps it with the file
    check = info["self_check"]
    assert check["gain_db"] < 1.0 and "unlikely to help" in check["warning"] and info["input"].endswith("camera.nii.gz")
    assert check["line"] == lines[0].split(": ", 1)[1]


def test_no_self_check_skips_it(capsys, tmp_path, tiny_mr_model, photo_nifti):
    code, out, err = call(capsys, "denoise", tiny_mr_model.path, photo_nifti, tmp_path / "out.nii.gz",
                          "--noise", "gaussian", "--device", "cpu", "--no-self-check")
    assert code == 0, err
    assert "estimated gain" not in out and "unlikely to help" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camera.nii.gz", "out.nii.gz"]  # and no sidecar


def test_help_states_the_cost(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one option per line: no wrapped words
    code, out, _ = call(capsys, "denoise", "--help")
    assert code == 0
    text = " ".join(out.replace("│", " ").split())
    assert "--no-self-check" in text and "one more network pass for tweedie" in text
