"""No command lets one of its outputs destroy another, or an input (issue 17): refused before any work."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cli_runner import call
from medidiff.io import Scan, save_scan


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("extra", [
    ["denoise", "mr2d", "{in}", "{d}/out.nii.gz", "--report", "{d}/out.nii.gz"],
    ["denoise", "mr2d", "{in}", "{d}/out.nii.gz", "--uncertainty", "{d}/out.nii.gz"],
    ["denoise", "mr2d", "{in}", "{d}/out.nii.gz", "--interval", "{d}/lo.nii.gz,{d}/lo.nii.gz"],
    ["denoise", "mr2d", "{in}", "{d}/folder", "--report", "{d}/folder/r.png"],
    ["denoise", "mr2d", "{in}", "{d}/out.nii.gz", "--report", "{in}"],
    ["anomaly", "mr2d", "{in}", "{d}/map.nii.gz", "--mask", "{d}/map.nii.gz"],
    ["anomaly", "mr2d", "{in}", "{d}/map.nii.gz", "--report", "{d}/map.anomaly.json"],
    ["anomaly", "mr2d", "{in}", "{d}/map.nii.gz", "--mask", "{in}"],
])
def test_clashing_outputs_are_refused_and_nothing_is_written(capsys, tmp_path, scan_file, extra):
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    args = [a.replace("{in}", str(scan_file)).replace("{d}", str(out_dir)) for a in extra]
    before = _digest(scan_file)
    code, _, err = call(capsys, *args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert list(out_dir.iterdir()) == []  # nothing written, not even the first output
    assert _digest(scan_file) == before


def test_evaluate_anomaly_outputs_may_not_clash(capsys, tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir(), truth.mkdir()
    a = np.zeros((8, 8), np.float32)
    save_scan(Scan(a, (1.0, 1.0), np.eye(4), "MR", {}), pred / "x.nii.gz")
    save_scan(Scan(a, (1.0, 1.0), np.eye(4), "MR", {}), truth / "x.nii.gz")
    code, _, err = call(capsys, "evaluate", "anomaly", pred, truth, "--csv", tmp_path / "r.csv", "--report", tmp_path / "r.csv")
    assert code == 2 and "two outputs" in err
    assert not (tmp_path / "r.csv").exists()
