"""``medidiff train DATA... --out RUN``: train a 2D or 3D diffusion model on scans.

The command only turns options into arguments of :func:`medidiff.tasks.train.train_steps`
and drives it with a progress bar. Ctrl-C is turned into a clean stop at the next step
boundary (the generator is closed, which writes a checkpoint), so ``--resume`` continues
exactly where the run stopped. Under ``torchrun`` every process runs this same command;
only rank 0 prints and writes.
"""

from __future__ import annotations

import csv
import os
import shlex
import signal
import sys
from pathlib import Path

import typer

from medidiff.cli import app
from medidiff.cli.common import DEVICE, OVERWRITE, SEED
from medidiff.errors import MedidiffError

EXAMPLES = """Examples:

  2D model from a folder of scans (slices along the coarsest axis, 64x64 crops):

    medidiff train scans/ --out runs/brain --dims 2 --image-size 64 --steps 5000

  3D model on 32x32x16 patches (array order z,y,x is 16,32,32 here):

    medidiff train vol1.nii.gz vol2.nii.gz --out runs/vol3d --dims 3 --image-size 16,32,32 --preset small

  class-conditional, classes from a CSV (file,class):

    medidiff train scans/ --out runs/cond --labels classes.csv

  two processes (GPUs, or CPU with gloo); --batch-size is the global batch:

    torchrun --standalone --nproc_per_node 2 -m medidiff train scans/ --out runs/ddp --batch-size 32

  continue a stopped run:

    medidiff train scans/ --out runs/brain --steps 5000 --resume
"""


class _Interrupted(Exception):
    """Raised between two steps after Ctrl-C, outside the training generator."""


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def parse_image_size(text: str, dims: int) -> int | tuple[int, ...]:
    """``"64"`` -> 64; ``"16,32,32"`` -> (16, 32, 32) (array order); checked against ``dims``."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        raise MedidiffError(f"--image-size {text!r}: give one integer or {dims} comma-separated integers, e.g. 64 or 16,32,32") from None
    if not parts or any(p < 1 for p in parts):
        raise MedidiffError(f"--image-size {text!r}: sizes must be positive integers")
    if len(parts) == 1:
        return parts[0]
    if len(parts) != dims:
        raise MedidiffError(f"--image-size {text!r} has {len(parts)} values but --dims is {dims}")
    return tuple(parts)


def read_labels(values: list[str], scans: list[Path]) -> tuple[list[int], list[str]]:
    """Class index per scan and the sorted class names, from a CSV file or one value per scan.

    The CSV has two columns, scan file and class name (a header row is allowed); a scan is
    matched by its path as written, its path relative to the working folder or to the CSV's
    folder, or its file name.
    """
    if len(values) == 1 and values[0].lower().endswith(".csv"):
        table = Path(values[0])
        if not table.is_file():
            raise MedidiffError(f"{table}: labels CSV not found")
        by_key: dict[str, str] = {}
        with open(table, newline="") as f:
            for row in csv.reader(f):
                if len(row) < 2 or not row[0].strip() or row[0].strip().startswith("#"):
                    continue
                key, name = row[0].strip(), row[1].strip()
                by_key[key] = name
                by_key[str(Path(key).resolve())] = name  # relative to the working folder ...
                by_key[str((table.parent / key).resolve())] = name  # ... or to the CSV's folder
                by_key.setdefault(Path(key).name, name)
        names = []
        for scan in scans:
            name = by_key.get(str(scan)) or by_key.get(str(scan.resolve())) or by_key.get(scan.name)
            if name is None:
                raise MedidiffError(f"{table}: no class for scan {scan}; add a row '{scan.name},CLASS'")
            names.append(name)
    else:
        if len(values) != len(scans):
            raise MedidiffError(
                f"--labels: got {len(values)} values for {len(scans)} scans; give one per scan (in the order the scans are "
                "listed, folders sorted by name) or a CSV file mapping scan file to class"
            )
        names = list(values)
    classes = sorted(set(names))
    return [classes.index(n) for n in names], classes


def _check_model_options(dims: int, preset: str, schedule: str, prediction: str | None, size: int | tuple[int, ...]) -> None:
    # the model classes raise ValueError (they are library code); here a bad option is the user's input
    from medidiff.core.model import PRESETS
    from medidiff.core.schedule import KINDS, PREDICTIONS

    if dims not in (2, 3):
        raise MedidiffError(f"--dims {dims}: choose 2 or 3")
    if preset not in PRESETS:
        raise MedidiffError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if schedule not in KINDS:
        raise MedidiffError(f"--schedule {schedule!r}: choose one of {', '.join(KINDS)}")
    if prediction is not None and prediction not in PREDICTIONS[schedule]:
        raise MedidiffError(f"--prediction {prediction!r} does not fit --schedule {schedule}; choose one of {', '.join(PREDICTIONS[schedule])}")
    multiple = 2 ** (len(PRESETS[preset]["channels"]) - 1)
    sizes = (size,) if isinstance(size, int) else size
    if any(s % multiple for s in sizes):
        raise MedidiffError(f"--image-size {size}: preset {preset!r} needs sizes divisible by {multiple}")


def command_line() -> str:
    """The command as typed (``python -m medidiff`` and torchrun show as ``medidiff``)."""
    return shlex.join(["medidiff", *sys.argv[1:]])


@app.command(epilog=EXAMPLES)
def train(
    data: list[Path] = typer.Argument(..., help="Scan files and/or folders of scans (NIfTI, DICOM series, TIFF, PNG)."),
    out: Path = typer.Option(..., "--out", help="Run folder; the model is written to RUN/model."),
    dims: int = typer.Option(2, "--dims", help="2: train on slices; 3: train on volume patches."),
    preset: str = typer.Option("tiny", "--preset", help="Network size: tiny (CPU tests), small (CPU), base (GPU)."),
    steps: int = typer.Option(1000, "--steps", min=1, help="Optimiser steps in total (also when resuming)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Global batch (split across torchrun processes)."),
    image_size: str = typer.Option("64", "--image-size", help="Training size: 64, or per axis in array order (z,y,x), e.g. 16,32,32."),
    lr: float = typer.Option(1e-3, "--lr", min=0.0, help="Peak learning rate (warm-up, then cosine decay)."),
    seed: int = SEED,
    device: str = DEVICE,
    schedule: str = typer.Option("ddpm", "--schedule", help="ddpm (DDPM betas) or rflow (rectified flow)."),
    prediction: str = typer.Option(None, "--prediction", help="ddpm: epsilon (default) or v_prediction; rflow: flow."),
    labels: list[str] = typer.Option(None, "--labels", help="Class conditioning: a CSV (scan file,class) or one class name per scan, repeated."),
    masks: list[Path] = typer.Option(None, "--masks", help="Mask conditioning: label-map files or a folder, one per scan in DATA order."),
    slice_axis: int = typer.Option(None, "--slice-axis", min=0, max=2, help="2D from volumes: array axis to slice (default: coarsest spacing)."),
    ct_window: str = typer.Option(None, "--ct-window", help="CT only: soft-tissue, brain, lung, bone or wide (default)."),
    modality: str = typer.Option(None, "--modality", help="Record this modality (MR, CT, microscopy, ...) when the files do not "
                                 "(NIfTI, PNG); it picks the noise model and the built-in default."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Turn off flips, small affine and intensity jitter."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", min=0, help="Write RUN/model and RUN/state every N steps (0: only at the end)."),
    sample_every: int = typer.Option(0, "--sample-every", min=0, help="Save a grid of samples to RUN/samples every N steps (0: never)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Train a 2D or 3D diffusion model on scans; writes RUN/model, RUN/log.csv and checkpoints.

    Example:  medidiff train scans/ --out runs/brain --image-size 64 --steps 5000
    """
    from medidiff.core.data import scan_paths
    from medidiff.errors import OutputError
    from medidiff.core.progress import run_to_end
    from medidiff.tasks.train import train_steps

    size = parse_image_size(image_size, dims)
    _check_model_options(dims, preset, schedule, prediction, size)
    files = scan_paths(data)
    resolved_out = out.resolve()
    for f in files:
        if f.resolve() == resolved_out or resolved_out in f.resolve().parents:
            raise OutputError(f"{out}: holds the training scan {f}; choose a run folder outside the data")
    label_ids, class_names = (None, None)
    if labels:
        label_ids, class_names = read_labels(list(labels), files)
    mask_files = scan_paths(masks) if masks else None
    if mask_files is not None and len(mask_files) != len(files):
        raise MedidiffError(f"--masks: got {len(mask_files)} mask files for {len(files)} scans; give one per scan, in DATA order")

    gen = train_steps(
        files, out, dims=dims, preset=preset, image_size=size, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        device=device, schedule=schedule, prediction=prediction, labels=label_ids, class_names=class_names,
        masks=mask_files, slice_axis=slice_axis, ct_window=ct_window, augment=not no_augment, modality=modality,
        checkpoint_every=checkpoint_every, sample_every=sample_every, resume=resume, overwrite=overwrite,
        command=command_line(),
    )
    main = _rank() == 0
    stop = {"requested": False}

    def on_sigint(signum, frame) -> None:  # noqa: ARG001
        if stop["requested"]:  # second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        stop["requested"] = True
        if main:
            typer.secho("\nstopping after this step (Ctrl-C again to abort without a checkpoint) ...", err=True)

    def between_steps(event) -> None:
        # raised here, outside the generator: run_to_end then closes it at a step boundary,
        # which is where train_steps writes its resumable checkpoint
        if stop["requested"]:
            raise _Interrupted(event.step)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = run_to_end(gen, show=main, desc=None, callback=between_steps)
    except _Interrupted as exc:
        if main:
            again = command_line() if "--resume" in sys.argv else command_line() + " --resume"
            typer.echo(f"interrupted after step {exc.args[0]}; checkpoint written to {out / 'state'}")
            typer.echo(f"resume with:\n  {again}")
        raise typer.Exit(code=130) from None
    finally:
        signal.signal(signal.SIGINT, previous)
        _finish_distributed()
    if main:
        model = result.model
        final = f"{sum(result.losses[-50:]) / len(result.losses[-50:]):.4g}" if result.losses else "n/a"
        typer.echo(f"model:       {out / 'model'} ({model.num_parameters():,} parameters, {model.config.spatial_dims}D, "
                   f"{'x'.join(map(str, model.config.image_size))})")
        typer.echo(f"final loss:  {final} (mean of the last {min(50, len(result.losses))} steps)")
        typer.echo(f"time:        {result.seconds:.1f} s this session; log: {out / 'log.csv'}")
        typer.echo(f"next:        medidiff generate {out / 'model'} --n 16 --out synthetic/")


def _finish_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
