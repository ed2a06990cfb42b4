"""Fixtures shared by the command-line tests."""

from __future__ import annotations

import pytest

from medidiff.builtin.sample_scans import mr_sample
from medidiff.io import Scan, save_scan


@pytest.fixture
def scan_file(tmp_path):
    """One real MR slice (the built-in sample) as a NIfTI file: the input of a CLI run."""
    sample = mr_sample()
    path = tmp_path / "in.nii.gz"
    save_scan(Scan(sample.array[2], sample.spacing[1:], sample.affine, "MR", {}), path)
    return path
