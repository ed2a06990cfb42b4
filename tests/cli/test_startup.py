"""Start-up stays light: commands that only read files never import torch (issue 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel
import pytest

ANATOMICAL = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data" / "anatomical.nii"

_PROBE = """
import sys
from medidiff.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "monai", "matplotlib", "napari") if m in sys.modules)
print("HEAVY:" + ",".join(heavy), "CODE:" + str(code), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["info", str(ANATOMICAL)], ["--help"], ["denoise", "--help"], ["train", "--help"],
                                  ["anomaly", "--help"], ["generate", "--help"]])
def test_command_does_not_import_torch(args):
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    assert "CODE:0" in last, out.stderr[-2000:]
    assert last.startswith("HEAVY: "), f"{args} imported {last}"
