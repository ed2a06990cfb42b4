"""Size bombs: declared sizes are checked against the limit before any voxel is read, in bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hostile_builders import dicom_header_only, nifti_header_only, png_header_only, tiff_header_only
from medidiff.errors import InvalidScanError, MedidiffError
from medidiff.io import load_scan
from medidiff.io.limits import ENV_VAR, max_scan_bytes, needed_bytes

RSS_BOUND_MB = 1536  # a refused bomb may cost the interpreter and its imports, never the declared size

# Bombs that say "limit" declare over 1 TiB, beyond the default limit of any machine the tests run on;
# "truncated" ones run with the limit raised to 1 TiB, so the check of what the file holds must stop them alone.
BOMBS = {
    # name: (builder, what the one line says)
    "nifti 30000^3 in 352 bytes": (lambda d: nifti_header_only(d / "huge.nii", (30000,) * 3, np.int16), "more than the limit"),
    "nifti 1024^3 in 352 bytes": (lambda d: nifti_header_only(d / "big.nii", (1024,) * 3, np.float32), "truncated"),
    "gzip nifti 1024^3 holding 4 MiB": (
        lambda d: nifti_header_only(d / "big.nii.gz", (1024,) * 3, np.float32, payload=b"\0" * (4 << 20)), "truncated"),
    "tiff page 10^6 x 10^6": (lambda d: tiff_header_only(d / "page.tif", 1_000_000, 1_000_000), "more than the limit"),
    "tiff 30000^2 page in 200 bytes": (lambda d: tiff_header_only(d / "short.tif", 30000, 30000), "truncated"),
    "tiff 2000 pages of 16384^2": (lambda d: tiff_header_only(d / "pages.tif", 16384, 16384, pages=2000), "more than the limit"),
    "dicom 20000 frames of 4096^2": (lambda d: dicom_header_only(d / "frames.dcm", 4096, 4096, frames=20000), "more than the limit"),
    "png 100000^2": (lambda d: png_header_only(d / "huge.png", 100_000, 100_000), "png"),
}

_MEASURE = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stdout.write(f'{r.returncode}\\n{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n' + r.stderr)\n"
)


def _run_measured(*command: str, env: dict | None = None) -> tuple[int, int, str]:
    """(exit code, peak RSS in MiB, stderr) of ``command`` run as the only child of a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    code, rss_kb, stderr = result.stdout.split("\n", 2)
    return int(code), int(rss_kb) // 1024, stderr


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_is_refused_in_one_line_with_bounded_memory(tmp_path, name):
    build, says = BOMBS[name]
    path = build(tmp_path)
    assert path.stat().st_size < 5 << 20  # the hostile file itself is small
    env = {ENV_VAR: "1T"} if says == "truncated" else {}
    code, rss_mb, stderr = _run_measured(sys.executable, "-m", "medidiff", "info", str(path), env=env)
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and says in lines[0].lower(), lines
    assert rss_mb < RSS_BOUND_MB, f"{name}: peak RSS {rss_mb} MiB"


def test_load_scan_refuses_before_reading_in_bounded_memory(tmp_path):
    path = nifti_header_only(tmp_path / "big.nii.gz", (1024,) * 3, np.float32, payload=b"\0" * (4 << 20))
    script = ("import sys\nfrom medidiff.io import load_scan\nfrom medidiff.errors import InvalidScanError\n"
              "try:\n    load_scan(sys.argv[1])\nexcept InvalidScanError as exc:\n    print(exc, file=sys.stderr); sys.exit(2)\n")
    code, rss_mb, stderr = _run_measured(sys.executable, "-c", script, str(path), env={ENV_VAR: "1T"})
    assert code == 2 and "truncated" in stderr and rss_mb < RSS_BOUND_MB


def test_the_limit_comes_from_the_environment(tmp_path, monkeypatch, anatomical_path):
    """anatomical.nii (25 x 41 x 33 int16: 67650 bytes stored + 135300 as float32) passes at the limit, not below."""
    need = needed_bytes((25, 41, 33), np.int16)
    assert need == 25 * 41 * 33 * (2 + 4)
    monkeypatch.setenv(ENV_VAR, str(need))
    assert load_scan(anatomical_path).shape == (25, 41, 33)
    monkeypatch.setenv(ENV_VAR, str(need - 1))
    with pytest.raises(InvalidScanError) as err:
        load_scan(anatomical_path)
    text = str(err.value)
    assert text.startswith(str(anatomical_path)) and "\n" not in text and ENV_VAR in text and "198 KiB" in text
    monkeypatch.setenv(ENV_VAR, "2G")
    assert max_scan_bytes() == 2 * 1024**3
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(MedidiffError, match=ENV_VAR):
        max_scan_bytes()


def test_the_default_limit_is_half_the_available_memory(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        assert max_scan_bytes() == 8 * 1024**3
        return
    available = next(int(line.split()[1]) * 1024 for line in meminfo.read_text().splitlines() if line.startswith("MemAvailable:"))
    assert abs(max_scan_bytes() - available // 2) < 256 * 1024**2  # memory moves a little between the two reads


def test_a_gzip_nifti_that_really_holds_its_data_is_read(tmp_path):
    """The trailer shortcut and the inflate count both accept an honest file (also one with a wrong ISIZE)."""
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(6, 5, 4)
    path = nifti_header_only(tmp_path / "ok.nii.gz", (4, 5, 6), np.float32, payload=data.T.tobytes(order="F"))
    np.testing.assert_array_equal(load_scan(path).array, data)
    # a second gzip member (allowed by gzip) makes ISIZE disagree: the stream is counted instead
    path.write_bytes(path.read_bytes() + __import__("gzip").compress(b""))
    np.testing.assert_array_equal(load_scan(path).array, data)


def test_needed_bytes_matches_the_measured_peak_of_an_honest_read(tmp_path):
    """The limit compares like with like: reading a 256^3 float32 .nii.gz peaks at about needed_bytes (2 x 64 MiB)."""
    import nibabel

    big, tiny = tmp_path / "big.nii.gz", tmp_path / "tiny.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.zeros((256, 256, 256), np.float32), np.eye(4)), str(big))
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(tiny))
    script = "import sys\nfrom medidiff.io import load_scan\nload_scan(sys.argv[1])\n"
    peaks = {}
    for path in (big, tiny):
        code, peaks[path], stderr = _run_measured(sys.executable, "-c", script, str(path), env={ENV_VAR: "1G"})
        assert code == 0, stderr
    needed_mb = needed_bytes((256, 256, 256), np.float32) / 2**20
    assert needed_mb == 128
    assert 0.7 * needed_mb <= peaks[big] - peaks[tiny] <= 1.15 * needed_mb + 16, peaks
