"""``medidiff generate`` and ``medidiff evaluate generated``: help, torchrun sharding, reports, one-line errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import call
from medidiff.tasks.dataset import generate_dataset


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_help_has_examples(capsys):
    code, out, _ = call(capsys, "generate", "--help")
    assert code == 0
    assert "Example" in out and "torch.distributed.run" in out and "--masks" in out
    code, out, _ = call(capsys, "evaluate", "generated", "--help")
    assert code == 0 and "Example" in out and "--training" in out


def test_generate_cli_writes_a_data_set(tiny_mr_model, capsys, tmp_path):
    out = tmp_path / "synth"
    code, stdout, err = call(capsys, "generate", tiny_mr_model.path, "--n", 3, "--steps", 3, "--out", out, "--device", "cpu")
    assert code == 0, err
    assert "wrote 3 samples" in stdout
    assert [r["file"] for r in rows(out)] == [f"sample_{i:05d}.nii.gz" for i in range(3)]
    card = (out / "DATA_CARD.md").read_text()
    assert "--n 3" in card and "| none | 3 |" in card
    # the same command again resumes: nothing to do
    code, stdout, _ = call(capsys, "generate", tiny_mr_model.path, "--n", 3, "--steps", 3, "--out", out, "--device", "cpu")
    assert code == 0 and "wrote 0 samples, kept 3" in stdout


def test_torchrun_two_processes_match_one(tiny_mr_model, tmp_path):
    import torch

    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # torchrun gives each process 1 thread: the files must not depend on that
    try:
        generate_dataset(tiny_mr_model, one, 5, steps=3, device="cpu", batch_size=2, bit_identical=True)
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "medidiff",
           "generate", str(tiny_mr_model.path), "-n", "5", "--steps", "3", "--out", str(two), "--device", "cpu", "--bit-identical"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in two.glob("manifest.part-*.csv")) == ["manifest.part-0.csv", "manifest.part-1.csv"]
    assert rows(two) == rows(one)
    for r in rows(one):
        assert (two / r["file"]).read_bytes() == (one / r["file"]).read_bytes()


def test_evaluate_generated_cli(tiny_mr_model, mr_train_scan, mr_heldout_slices, capsys, tmp_path):
    from medidiff.io import Scan, save_scan

    synth = tmp_path / "synth"
    generate_dataset(tiny_mr_model, synth, 4, steps=4, device="cpu")
    real = tmp_path / "real"
    real.mkdir()
    for k, sl in enumerate(mr_heldout_slices[:3]):
        save_scan(Scan(sl, (2.0, 2.0), mr_train_scan.affine, "MR"), real / f"r{k}.nii.gz")
    train = tmp_path / "train.nii.gz"
    save_scan(mr_train_scan, train)
    report = tmp_path / "sheet.png"
    code, out, err = call(capsys, "evaluate", "generated", synth, "--real", real, "--training", train,
                          "--report", report, "--json", tmp_path / "q.json")
    assert code == 0, err
    assert "KID" in out and "MS-SSIM" in out and "flagged" in out
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"flagged"' in (tmp_path / "q.json").read_text()
    # outputs onto inputs, into input folders, onto each other or onto existing files: refused before any work
    import hashlib

    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    before = {p: digest(p) for p in [train, *real.iterdir(), *synth.iterdir()] if p.is_file()}
    for extra in (["--json", real / "r0.nii.gz"], ["--report", train], ["--report", synth / "sheet.png"],
                  ["--report", tmp_path / "same", "--json", tmp_path / "same"], ["--report", report]):
        code, _, err = call(capsys, "evaluate", "generated", synth, "--real", real, "--training", train, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert {p: digest(p) for p in before} == before
    assert not (synth / "sheet.png").exists() and not (tmp_path / "same").exists()


@pytest.mark.parametrize("args, words", [
    (["generate", "no-such-model", "--n", "2", "--out", "x"], "no-such-model"),
    (["generate", "MODEL", "--n", "2", "--out", "x", "--label", "1"], "no class conditioning"),
    (["generate", "MODEL", "--n", "2", "--out", "x", "--format", "jpeg2000"], "unknown format"),
    # refused before any sample is generated, not after the whole run
    (["generate", "MODEL", "--n", "2", "--out", "x", "--real", "MODEL", "--threshold", "2"], "--threshold"),
    (["evaluate", "generated", "nowhere", "--real", "nowhere2"], "nowhere"),
])
def test_bad_input_one_line_exit_2(tiny_mr_model, capsys, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    args = [str(tiny_mr_model.path) if a == "MODEL" else a for a in args]
    code, _, err = call(capsys, *args)
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_ctrl_c_during_generate_says_what_is_kept(tiny_mr_model, tmp_path):
    import signal
    import time

    out = tmp_path / "synth"
    cmd = [sys.executable, "-m", "medidiff", "generate", str(tiny_mr_model.path), "--n", "400", "--steps", "50",
           "--out", str(out), "--device", "cpu"]
    # a suite started in the background by a shell without job control inherits SIGINT ignored, and
    # Python keeps it so: give the child the default disposition, as a terminal would
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not any(out.glob(".medidiff-lock*")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "interrupted; the finished samples" in err and "Traceback" not in err
    assert not any(out.glob(".medidiff-lock*"))  # the lock went with the run
