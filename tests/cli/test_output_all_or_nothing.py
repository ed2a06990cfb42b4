"""A command's outputs appear together or not at all (issue 17), under real faults.

The fault is a real one: a file-size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored) between the
sizes of a command's outputs, so the last and largest one (the report PNG) fails with EFBIG after
the others were written, as on a disk that fills up mid-run. Only the soft limit is lowered, so
the test process gets its normal limit back afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import resource
import signal

import numpy as np
import pytest

from cli_runner import call
from medidiff.io import Scan, save_scan


@contextlib.contextmanager
def file_size_limit(n_bytes: int):
    """No file of this process may grow beyond ``n_bytes`` inside the block (writes fail with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder) -> dict[str, str | None]:
    """sha256 of every file under ``folder`` (hidden ones too), None for folders, by relative path."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else _digest(p)) for p in sorted(folder.rglob("*"))}


def _limit_between(small: list, large) -> int:
    """A size limit that the ``small`` outputs pass and ``large`` does not."""
    biggest = max(p.stat().st_size for p in small)
    assert biggest < large.stat().st_size, "the report must be the largest output for this fault"
    return (biggest + large.stat().st_size) // 2


def _assert_one_line_error(code: int, err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], err


def _denoise_args(scan_file, d, *extra):
    return ["denoise", "mr2d", scan_file, d / "out.nii.gz", "--uncertainty", d / "sd.nii.gz", "--samples", "2",
            "--steps", "1", "--interval", f"{d / 'lo.nii.gz'},{d / 'hi.nii.gz'}", "--report", d / "new" / "r.png",
            "--device", "cpu", "--no-self-check", *extra]  # stderr holds only the error line


def test_denoise_full_disk_on_the_report_leaves_nothing_and_restores_old_outputs(capsys, tmp_path, scan_file):
    before_input = _digest(scan_file)
    old = tmp_path / "old"
    code, _, err = call(capsys, *_denoise_args(scan_file, old))
    assert code == 0, err
    names = ["out.nii.gz", "sd.nii.gz", "lo.nii.gz", "hi.nii.gz"]
    limit = _limit_between([old / n for n in names], old / "new" / "r.png")
    old_tree = _tree(old)

    # a fresh run: everything before the report was written, then the report fails
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with file_size_limit(limit):
        code, _, err = call(capsys, *_denoise_args(scan_file, fresh))
    _assert_one_line_error(code, err, str(fresh / "new" / "r.png"), "File too large")
    assert list(fresh.iterdir()) == []  # no output, no temporary, not even the folder made for the report

    # --overwrite of a finished run with other settings: the old outputs come back byte for byte
    with file_size_limit(limit):
        code, _, err = call(capsys, *_denoise_args(scan_file, old, "--overwrite", "--seed", "1", "--sigma", "20"))
    _assert_one_line_error(code, err, "r.png")
    assert _tree(old) == old_tree
    assert _digest(scan_file) == before_input

    # the rerun is not refused with "already exists"
    code, _, err = call(capsys, *_denoise_args(scan_file, fresh))
    assert code == 0, err
    assert sorted(_tree(fresh)) == sorted(old_tree)


def test_anomaly_full_disk_on_the_report_leaves_no_map_mask_or_sidecar(capsys, tmp_path, scan_file):
    def args(d, *extra):
        return ["anomaly", "mr2d", scan_file, d / "map.nii.gz", "--mask", d / "mask.nii.gz", "--threshold", "0.5",
                "--timesteps", "300", "--score", "residual", "--report", d / "r.png", "--device", "cpu", *extra]

    old = tmp_path / "old"
    code, _, err = call(capsys, *args(old))
    assert code == 0, err
    assert sorted(p.name for p in old.iterdir()) == ["map.anomaly.json", "map.nii.gz", "mask.nii.gz", "r.png"]
    limit = _limit_between([old / "map.nii.gz", old / "mask.nii.gz", old / "map.anomaly.json"], old / "r.png")
    old_tree = _tree(old)
    fresh = tmp_path / "fresh"
    with file_size_limit(limit):
        code, _, err = call(capsys, *args(fresh))
    _assert_one_line_error(code, err, "r.png")
    assert not fresh.exists()  # the folder made for the outputs went too
    with file_size_limit(limit):
        code, _, err = call(capsys, *args(old, "--overwrite", "--threshold", "0.1"))
    _assert_one_line_error(code, err, "r.png")
    assert _tree(old) == old_tree
    code, _, err = call(capsys, *args(fresh))
    assert code == 0, err


def test_evaluate_anomaly_full_disk_on_the_report_leaves_no_csv(capsys, tmp_path):
    pred, truth, out = tmp_path / "pred", tmp_path / "truth", tmp_path / "out"
    pred.mkdir(), truth.mkdir(), out.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        lesion = np.zeros((32, 32), np.float32)
        lesion[8:16, 8:16] = k  # c1 has a lesion, c0 is healthy
        save_scan(Scan(rng.random((32, 32), np.float32) + lesion, (1.0, 1.0), np.eye(4), "MR", {}), pred / f"c{k}.nii.gz")
        save_scan(Scan(lesion, (1.0, 1.0), np.eye(4), "MR", {}), truth / f"c{k}.nii.gz")
    inputs = {**_tree(pred), **_tree(truth)}

    def args(*extra):
        return ["evaluate", "anomaly", pred, truth, "--threshold", "0.5", "--csv", out / "r.csv", "--report", out / "r.png", *extra]

    code, _, err = call(capsys, *args())
    assert code == 0, err
    limit = _limit_between([out / "r.csv"], out / "r.png")
    old_tree = _tree(out)
    with file_size_limit(limit):
        code, _, err = call(capsys, *args("--overwrite"))
    _assert_one_line_error(code, err, "r.png", "File too large")
    assert _tree(out) == old_tree  # the old CSV and report, byte for byte, and no temporary
    for p in list(out.iterdir()):
        p.unlink()
    with file_size_limit(limit):
        code, _, err = call(capsys, *args())
    _assert_one_line_error(code, err, "r.png")
    assert list(out.iterdir()) == []  # the CSV written before the report does not stay behind
    assert {**_tree(pred), **_tree(truth)} == inputs
    code, _, err = call(capsys, *args())
    assert code == 0 and sorted(_tree(out)) == ["r.csv", "r.png"]


def test_evaluate_generated_report_is_taken_back_when_the_json_cannot_be_placed(capsys, tmp_path):
    """A real commit-time fault: another program writes the --json path while the command runs.
    The report, renamed into place first, is taken back; the other program's file is left alone."""
    import os
    import threading
    import time

    synth, real, out = tmp_path / "synth", tmp_path / "real", tmp_path / "out"
    rng = np.random.default_rng(0)
    for folder in (synth, real):
        folder.mkdir()
        for k in range(4):
            save_scan(Scan(rng.random((24, 24), np.float32), (1.0, 1.0), np.eye(4), "MR", {}), folder / f"s{k}.nii.gz")
    out.mkdir()
    intruder = out / "q.json"
    done = threading.Event()

    def other_program() -> None:  # waits for the command to start staging, then writes its own file
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".medidiff-outputs.") for p in out.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.002)
        fd = os.open(intruder, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, b"not yours")
        os.close(fd)
        done.set()

    thread = threading.Thread(target=other_program, daemon=True)
    thread.start()
    code, _, err = call(capsys, "evaluate", "generated", synth, "--real", real, "--report", out / "sheet.png",
                        "--json", intruder)
    thread.join(60)
    assert done.is_set(), "the other program must have written its file while the command ran"
    _assert_one_line_error(code, err, str(intruder), "appeared while this command ran")
    assert sorted(p.name for p in out.iterdir()) == ["q.json"] and intruder.read_bytes() == b"not yours"
