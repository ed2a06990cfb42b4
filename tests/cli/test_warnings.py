"""Warnings reach a command-line user as one ``warning:`` line each, never Python's source-line form."""

from __future__ import annotations

import subprocess
import sys

from skimage import io as skio


def test_warning_is_one_line(tmp_path):
    rgb = tmp_path / "colour.png"
    from skimage import data

    skio.imsave(rgb, data.astronaut()[100:196:2, 180:276:2], check_contrast=False)  # a real RGB photo, 48x48
    # denoise has no warning handling of its own: the CLI entry point must do it
    out = subprocess.run([sys.executable, "-m", "medidiff", "denoise", "mr2d", str(rgb), str(tmp_path / "out.nii.gz")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    warning_lines = [line for line in lines if line.startswith("warning: ")]
    assert len(warning_lines) == 1 and "grayscale" in warning_lines[0], out.stderr
    assert "colour.png" in warning_lines[0]
    assert not any("warnings.warn" in line or "UserWarning" in line for line in lines), out.stderr
