"""Training on real MR slices: loss falls, cancel + resume is exact, torchrun equals one process, CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_runner import call
from medidiff.errors import MedidiffError, OutputError
from medidiff.io import save_scan
from medidiff.core.model import DiffusionModel
from medidiff.tasks.train import train, train_steps

TINY = dict(image_size=32, batch_size=4, lr=2e-3, device="cpu", seed=3)


@pytest.fixture(scope="module")
def mr_file(mr_train_scan, tmp_path_factory) -> Path:
    """The real MR training volume as a NIfTI file (what the command line trains on)."""
    return save_scan(mr_train_scan, tmp_path_factory.mktemp("data") / "mr_train.nii.gz")


def _weights(model: DiffusionModel) -> dict[str, torch.Tensor]:
    return model.network.state_dict()


def _assert_same_weights(a: DiffusionModel, b: DiffusionModel, atol: float = 0.0) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if atol == 0.0:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)


def test_loss_falls_on_real_data(mr_train_scan):
    result = train([mr_train_scan], None, steps=60, **TINY)
    losses = result.losses
    assert len(losses) == 60 and result.run_dir is None
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])
    assert result.model.config.training["steps"] == 60
    assert not result.model.network.training  # handed back ready for sampling


def test_cancel_then_resume_equals_an_uninterrupted_run(mr_train_scan, tmp_path):
    steps = 12
    gen = train_steps([mr_train_scan], tmp_path / "a", steps=steps, checkpoint_every=0, **TINY)
    for event in gen:
        if event.step == 5:
            break
    gen.close()  # what napari's cancel and the CLI's Ctrl-C do
    state = (tmp_path / "a" / "state" / "train.json").read_text()
    assert '"step": 5' in state
    DiffusionModel.load(tmp_path / "a" / "model")  # the checkpoint is a usable model already

    resumed = train([mr_train_scan], tmp_path / "a", steps=steps, checkpoint_every=0, resume=True, **TINY)
    straight = train([mr_train_scan], tmp_path / "b", steps=steps, checkpoint_every=0, **TINY)
    assert resumed.losses == straight.losses
    _assert_same_weights(resumed.model, straight.model)
    _assert_same_weights(DiffusionModel.load(tmp_path / "a" / "model"), DiffusionModel.load(tmp_path / "b" / "model"))
    with open(tmp_path / "a" / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, steps + 1))


def test_resume_needs_the_same_batch_and_seed(mr_train_scan, tmp_path):
    train([mr_train_scan], tmp_path / "r", steps=2, **TINY)
    # a resumed run must replay the same batches: another batch size or seed is a one-line refusal
    with pytest.raises(MedidiffError, match="batch_size=4, not 8"):
        train([mr_train_scan], tmp_path / "r", steps=4, resume=True, **{**TINY, "batch_size": 8})
    with pytest.raises(MedidiffError, match=f"seed={TINY['seed']}, not {TINY['seed'] + 1}"):
        train([mr_train_scan], tmp_path / "r", steps=4, resume=True, **{**TINY, "seed": TINY["seed"] + 1})
    # contrast augmentation shapes the batches too: resuming without it (the CLI's default) is refused
    with pytest.raises(MedidiffError, match="contrast=1.0, not 0.5"):
        train([mr_train_scan], tmp_path / "r", steps=4, resume=True, **{**TINY, "contrast": 0.5})
    # so do foreground crops
    with pytest.raises(MedidiffError, match="crop_foreground=0.0, not 0.5"):
        train([mr_train_scan], tmp_path / "r", steps=4, resume=True, **{**TINY, "crop_foreground": 0.5})
    # and coarser-voxel crops
    with pytest.raises(MedidiffError, match="spacing_augment=1.0, not 2.0"):
        train([mr_train_scan], tmp_path / "r", steps=4, resume=True, **{**TINY, "spacing_augment": 2.0})


def test_an_existing_run_folder_is_not_replaced(mr_train_scan, tmp_path):
    train([mr_train_scan], tmp_path / "r", steps=1, **TINY)
    before = (tmp_path / "r" / "model" / "weights.safetensors").read_bytes()
    with pytest.raises(OutputError, match="already holds a training run"):
        train([mr_train_scan], tmp_path / "r", steps=1, **TINY)
    assert (tmp_path / "r" / "model" / "weights.safetensors").read_bytes() == before


def test_cli_trains_with_classes_from_a_csv(mr_train_scan, tmp_path, capsys):
    data = tmp_path / "scans"
    save_scan(mr_train_scan, data / "a.nii.gz")
    save_scan(mr_train_scan.with_array(mr_train_scan.array[:, ::-1].copy()), data / "b.nii.gz")
    table = tmp_path / "classes.csv"
    table.write_text("file,class\na.nii.gz,upright\nb.nii.gz,flipped\n")
    code, out, err = call(capsys, "train", data, "--out", tmp_path / "run", "--image-size", "32", "--steps", "3",
                          "--batch-size", "2", "--device", "cpu", "--labels", table, "--no-augment")
    assert code == 0, err
    model = DiffusionModel.load(tmp_path / "run" / "model")
    assert model.config.num_classes == 2 and model.config.class_names == ["flipped", "upright"]
    assert "run/model" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image-size", "32,32,16"], "has 3 values but --dims is 2"),
        (["--image-size", "30"], "divisible by 4"),
        (["--schedule", "rflow", "--prediction", "epsilon"], "does not fit schedule rflow"),
        (["--labels", "a", "--labels", "b"], "got 2 values for 1 scans"),
    ],
)
def test_cli_bad_options_give_one_line_and_exit_2(mr_file, tmp_path, capsys, args, message):
    code, out, err = call(capsys, "train", mr_file, "--out", tmp_path / "run", "--steps", "1", "--device", "cpu", *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_run_folder_inside_the_data(mr_file, capsys):
    before = sorted(mr_file.parent.iterdir())
    code, _, err = call(capsys, "train", mr_file, "--out", mr_file.parent, "--steps", "1", "--overwrite")
    assert code == 2 and "holds the training scan" in err
    assert sorted(mr_file.parent.iterdir()) == before


def test_torchrun_two_processes_equal_one_process(mr_file, tmp_path):
    """2 CPU processes (gloo), global batch 4 = 2 x 2, end with the weights of 1 process at batch 4.

    Not bit for bit: DDP sums the two half-batch gradients in another order than one process
    sums the whole batch, so float32 rounding differs (measured ~4e-7 after 10 steps).
    """
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medidiff", "train", str(mr_file), "--out", str(run), "--steps", "10", "--batch-size", "4",
           "--image-size", "32", "--lr", "2e-3", "--seed", "3", "--device", "cpu", "--checkpoint-every", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = DiffusionModel.load(run / "model")
    single = train([mr_file], None, steps=10, checkpoint_every=4, **TINY).model
    _assert_same_weights(ddp, single, atol=1e-5)
    assert ddp.config.training["processes"] == 2
    # only rank 0 wrote: one log row per step (two writers would double them), no stray files
    with open(run / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 11))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    assert sorted(p.name for p in run.iterdir()) == ["log.csv", "model", "state"]
    # the model card records the command as typed
    card = (run / "model" / "MODEL_CARD.md").read_text()
    assert "medidiff train" in card and "--batch-size 4" in card
    assert proc.stdout.count("model:") == 1  # rank 0 reports, rank 1 is quiet


def test_cli_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(mr_file, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "medidiff", "train", str(mr_file), "--out", str(run), "--steps", "100000",
           "--batch-size", "2", "--image-size", "32", "--device", "cpu", "--checkpoint-every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        log = run / "log.csv"
        deadline = time.monotonic() + 240
        while not (log.is_file() and len(log.read_text().splitlines()) > 3):  # header + a few steps
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    step = json.loads((run / "state" / "train.json").read_text())["step"]
    assert step >= 3
    assert f"interrupted after step {step}" in out
    assert "resume with:" in out and "--resume" in out
    DiffusionModel.load(run / "model")


def test_cli_records_a_given_modality(mr_file, tmp_path, capsys):
    code, out, err = call(capsys, "train", mr_file, "--out", tmp_path / "run", "--steps", "2", "--batch-size", "2",
                          "--image-size", "16", "--modality", "microscopy", "--device", "cpu")
    assert code == 0, err
    assert DiffusionModel.load(tmp_path / "run" / "model").config.modality == "microscopy"


# -- runs are never lost, never mixed (issues 16, 17) ------------------------------------------------
def _cli_train(mr_file, run, *extra, steps="12"):
    cmd = [sys.executable, "-m", "medidiff", "train", str(mr_file), "--out", str(run), "--batch-size", "2",
           "--image-size", "32", "--lr", "2e-3", "--seed", "3", "--device", "cpu", "--checkpoint-every", "0", *extra]
    if steps is not None:
        cmd += ["--steps", steps]
    return cmd


def _wait_for_steps(proc, log: Path, rows: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (log.is_file() and len(log.read_text().splitlines()) > rows):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)


def test_sigterm_in_the_first_steps_leaves_a_run_that_resumes_bit_identical(mr_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "stopped"
    proc = subprocess.Popen(_cli_train(mr_file, run, steps="40"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        _wait_for_steps(proc, run / "log.csv", 1)  # header + the first step
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    step = json.loads((run / "state" / "train.json").read_text())["step"]
    assert 1 <= step < 40 and "resume with:" in out
    # --resume without --steps keeps the run's total of 40
    resumed = subprocess.run(_cli_train(mr_file, run, "--resume", steps=None), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = subprocess.run(_cli_train(mr_file, tmp_path / "straight", steps="40"), capture_output=True, text=True, env=env)
    assert straight.returncode == 0, straight.stderr[-2000:]
    a, b = DiffusionModel.load(run / "model"), DiffusionModel.load(tmp_path / "straight" / "model")
    assert a.config.training["steps"] == 40
    _assert_same_weights(a, b)
    with open(run / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 41))


def test_resume_without_steps_keeps_the_runs_total(mr_train_scan, tmp_path):
    gen = train_steps([mr_train_scan], tmp_path / "r", steps=6, checkpoint_every=0, **TINY)
    for event in gen:
        if event.step == 2:
            break
    gen.close()
    result = train([mr_train_scan], tmp_path / "r", resume=True, checkpoint_every=0, **TINY)
    assert len(result.losses) == 6 and result.model.config.training["steps"] == 6


def test_a_run_folder_without_a_checkpoint_can_be_trained_into_again(mr_train_scan, tmp_path):
    run = tmp_path / "r"
    gen = train_steps([mr_train_scan], run, steps=4, checkpoint_every=0, **TINY)
    first = next(gen)  # what a kill before the first checkpoint leaves: a folder, maybe a log
    assert first.step == 0
    (run / "log.csv").write_text("step,loss,lr,seconds\n1,0.5,0.001,0.1\n")
    del gen  # never closed cleanly (kill -9): no checkpoint
    import gc

    gc.collect()
    assert run.is_dir() and not (run / "state").exists()
    again = train([mr_train_scan], run, steps=4, checkpoint_every=0, **TINY)  # no --overwrite needed
    assert len(again.losses) == 4
    with pytest.warns(UserWarning, match="no checkpoint to resume from"):
        other = train([mr_train_scan], tmp_path / "fresh", steps=2, checkpoint_every=0, resume=True, **TINY)
    assert len(other.losses) == 2


def test_after_a_crash_resume_does_not_repeat_logged_steps(mr_train_scan, tmp_path):
    import shutil

    gen = train_steps([mr_train_scan], tmp_path / "a", steps=8, checkpoint_every=3, **TINY)
    for event in gen:
        if event.step == 5:  # checkpoint at 3, steps 4 and 5 logged after it
            shutil.copytree(tmp_path / "a", tmp_path / "crashed")  # the folder as kill -9 leaves it
            break
    gen.close()
    assert json.loads((tmp_path / "crashed" / "state" / "train.json").read_text())["step"] == 3
    train([mr_train_scan], tmp_path / "crashed", steps=8, checkpoint_every=3, resume=True, **TINY)
    with open(tmp_path / "crashed" / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 9))


def test_checkpoint_by_wall_time(mr_train_scan, tmp_path):
    gen = train_steps([mr_train_scan], tmp_path / "t", steps=50, checkpoint_every=0, checkpoint_minutes=1e-9, **TINY)
    for event in gen:
        if event.step == 2:
            break
    # inspected before close(): the checkpoint was written by time, not by the cancel
    assert json.loads((tmp_path / "t" / "state" / "train.json").read_text())["step"] == 2
    gen.close()


def test_two_concurrent_trainings_into_one_folder_the_second_is_refused(mr_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "shared"
    first = subprocess.Popen(_cli_train(mr_file, run, steps="100000"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        _wait_for_steps(first, run / "log.csv", 1)
        second = subprocess.run(_cli_train(mr_file, run, "--overwrite", steps="3"), capture_output=True, text=True, env=env)
        assert second.returncode == 2, second.stderr[-2000:]
        assert "another medidiff training run" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert first.poll() is None  # the first run carries on untouched
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130
    DiffusionModel.load(run / "model")


def test_progress_comes_before_the_first_network_call(mr_file):
    events: list[str] = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: events.append("forward"))
    try:
        gen = train_steps([mr_file], None, steps=1, checkpoint_every=0, **TINY)
        first = next(gen)
        events.append(f"progress {first.step}/{first.total}")
        for _ in gen:
            pass
    finally:
        hook.remove()
    assert events[0] == "progress 0/1" and "forward" in events


def test_run_folder_inside_the_data_is_refused_by_the_task(mr_file):
    with pytest.raises(OutputError, match="holds the training scan"):
        next(train_steps([mr_file.parent], mr_file.parent / "..", steps=1, **TINY))


def test_training_paths_are_recorded_relative_to_the_data(mr_file, tmp_path):
    result = train([mr_file.parent], tmp_path / "run", steps=1, checkpoint_every=0, **TINY)
    assert result.model.config.training["sources"] == [mr_file.name]
    for name in ("config.json", "MODEL_CARD.md"):
        assert str(mr_file.parent) not in (tmp_path / "run" / "model" / name).read_text()
    full = train([mr_file], None, steps=1, full_paths=True, **TINY)
    assert full.model.config.training["sources"] == [str(mr_file)]
