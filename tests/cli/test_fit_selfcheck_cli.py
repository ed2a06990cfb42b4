"""``medidiff denoise none IN OUT --fit`` prints the self-check's estimated gain like a plain denoise."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cli_runner import call
from medidiff.builtin.sample_scans import microscopy_sample
from medidiff.core import noise as noise_lib
from medidiff.io import Scan, save_scan


@pytest.fixture
def noisy_cells(tmp_path):
    sample = microscopy_sample()
    noisy = noise_lib.add_noise(sample.array[200:264, 60:124], "poisson-gaussian", 0.1, rng=0)
    scan = Scan(noisy.astype(np.float32), sample.spacing, sample.affine, "microscopy")
    return save_scan(scan, tmp_path / "cells.tif")


def test_fit_prints_the_estimated_gain(capsys, tmp_path, noisy_cells):
    code, out, err = call(capsys, "denoise", "none", noisy_cells, tmp_path / "fit.tif", "--fit", "--fit-steps", "3",
                          "--device", "cpu")
    assert code == 0, err
    lines = [line for line in out.splitlines() if "estimated gain" in line]
    assert len(lines) == 1 and lines[0].startswith("cells.tif: estimated gain: "), out
    assert re.search(r"estimated gain: (unknown|about \+10 dB or more|[-+]\d+\.\d dB) \(SURE, no clean data", lines[0])
    # three training steps give a poor network: the check must say so in its one-line warning
    warned = [line for line in err.splitlines() if line.startswith("warning:") and "cells.tif" in line]
    assert len(warned) == 1 and ("unlikely to help" in warned[0] or "inconsistent" in warned[0]), err
    # advice for a fit result: train longer (it stopped at --fit-steps 3) or check the noise level, not "try --fit"
    assert "try --fit" not in warned[0] and "--sigma" in warned[0], warned[0]
    assert "inconsistent" in warned[0] or "the fitted model is unlikely to help" in warned[0] and \
        "train longer (more --fit-steps than 3)" in warned[0], warned[0]


def test_fit_no_self_check_prints_no_gain(capsys, tmp_path, noisy_cells):
    code, out, err = call(capsys, "denoise", "none", noisy_cells, tmp_path / "fit.tif", "--fit", "--fit-steps", "3",
                          "--no-self-check", "--device", "cpu")
    assert code == 0, err
    assert "estimated gain" not in out and "fitted a new model to the scan itself" in out
