"""``medidiff train DATA... --out RUN``: train a 2D or 3D diffusion model on scans.

The command only turns options into arguments of :func:`medidiff.tasks.train.train_steps`
and drives it with a progress bar. Ctrl-C (or SIGTERM, as a job scheduler sends) is turned into a clean stop at the next step
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
from medidiff.choices import TimestepSampling, TrainingNoise
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

  with the noise the anomaly method uses (then: medidiff anomaly RUN/model scan.nii.gz out/ --method simplex):

    medidiff train scans/ --out runs/simplex --noise simplex --steps 5000

  from noisy scans only, no clean data (the objective of denoise --fit, each scan at its own noise level):

    medidiff train noisy_scans/ --out runs/noisy --noisy --image-size 32 --steps 2000

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


def command_line(data: list[Path] = (), masks: list[Path] = (), full_paths: bool = False) -> str:
    """The command as typed (``python -m medidiff`` and torchrun show as ``medidiff``).

    Unless ``full_paths``, the data and mask arguments become ``DATA``/``MASKS`` and an absolute
    ``--out`` its folder name, so the recorded command names none of the user's folders (they
    often carry a patient or study ID).
    """
    args = list(sys.argv[1:])
    if not full_paths:
        data_keys = {str(Path(p)) for p in data}
        mask_keys = {str(Path(p)) for p in masks or ()}
        out = []
        for i, tok in enumerate(args):
            key = str(Path(tok)) if tok and not tok.startswith("-") else None
            if key in data_keys:
                tok = "DATA" if len(data_keys) == 1 else f"DATA{sorted(data_keys).index(key) + 1}"
            elif key in mask_keys:
                tok = "MASKS"
            elif i and args[i - 1] in ("--out", "--labels") and Path(tok).is_absolute():
                tok = Path(tok).name
            out.append(tok)
        args = out
    return shlex.join(["medidiff", *args])


@app.command(epilog=EXAMPLES)
def train(
    data: list[Path] = typer.Argument(..., help="Scan files and/or folders of scans (NIfTI, DICOM series, TIFF, PNG)."),
    out: Path = typer.Option(..., "--out", help="Run folder; the model is written to RUN/model."),
    dims: int = typer.Option(2, "--dims", help="2: train on slices; 3: train on volume patches."),
    preset: str = typer.Option("tiny", "--preset", help="Network size: tiny (CPU tests), small (CPU), base (GPU)."),
    steps: int = typer.Option(None, "--steps", min=1, help="Optimiser steps in total (default 1000; with --resume: the run's own total)."),
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
    contrast_augment: float = typer.Option(
        1.0, "--contrast-augment",
        help="Also train on copies of the images at lower contrast, down to this factor (e.g. 0.1; 1: off): for "
             "scans whose brightest structures make their other tissue fainter than in the training scans. For "
             "denoising models: samples drawn from the model come out at lower contrast too."),
    crop_foreground: float = typer.Option(
        0.0, "--crop-foreground", min=0.0, max=1.0,
        help="Share of training crops centred on the scan's foreground instead of anywhere (0..1; 0: uniform, the "
             "default). For crops that would be mostly empty field or padding (sparse 3D stacks); on CT slices it "
             "measured worse (benchmarks/README.md), as the body's edge against air needs training too."),
    spacing_augment: float = typer.Option(
        1.0, "--spacing-augment", min=1.0, max=8.0,
        help="Also train on crops at up to this many times the training scans' voxel size (e.g. 2; 1: off): "
             "for a model that will see scans with larger voxels than its training scans (a CT test slice at 1.4x the "
             "training voxel size: +0.1 to +0.3 dB, benchmarks/README.md). For denoising models: samples drawn "
             "from such a model mix voxel sizes."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", min=0, help="Write RUN/model and RUN/state every N steps (0: not by steps)."),
    checkpoint_minutes: float = typer.Option(5.0, "--checkpoint-minutes", min=0.0, help="Also checkpoint every M minutes of wall time (0: not by time)."),
    sample_every: int = typer.Option(0, "--sample-every", min=0, help="Save a grid of samples to RUN/samples every N steps (0: never)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    data_card: str = typer.Option(None, "--data-card", help="Name or URL of the training data's card, recorded in the model and every data card made from it."),
    licence: str = typer.Option(None, "--licence", help="Licence of the training data, recorded in the model and every data card made from it."),
    noise: str = typer.Option(TrainingNoise.WHITE.value, "--noise", help=f"Training noise: {', '.join(TrainingNoise.values())}. "
                              "simplex (AnoDDPM) or coarse make an anomaly model for --method simplex; such a model cannot denoise."),
    timestep_sampling: str = typer.Option(TimestepSampling.UNIFORM.value, "--timestep-sampling",
                                          help=f"How training noise levels are drawn: {', '.join(TimestepSampling.values())} "
                                          "(low-noise: half the batch from the lowest 30% of times)."),
    ema_decay: float = typer.Option(0.999, "--ema-decay", help="Decay of the weights' moving average (in [0, 1))."),
    noisy: bool = typer.Option(False, "--noisy", help="The scans are noisy and there is no clean data: train with the "
                               "objective of denoise --fit, each scan at its own estimated noise level (2D, not resumable)."),
    full_paths: bool = typer.Option(False, "--full-paths", help="Record the training files' full paths in the model (default: relative to DATA)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Train a 2D or 3D diffusion model on scans; writes RUN/model, RUN/log.csv and checkpoints.

    Example:  medidiff train scans/ --out runs/brain --image-size 64 --steps 5000
    """
    from medidiff.core.data import scan_paths
    from medidiff.core.progress import run_to_end
    from medidiff.tasks.train import TrainConfig, check_config, train_steps

    size = parse_image_size(image_size, dims)
    config = TrainConfig(
        dims=dims, preset=preset, image_size=size, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
        schedule=schedule, prediction=prediction, slice_axis=slice_axis, ct_window=ct_window, modality=modality,
        augment=not no_augment, contrast=contrast_augment, crop_foreground=crop_foreground,
        spacing_augment=spacing_augment, checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes,
        sample_every=sample_every, data_card=data_card, licence=licence, full_paths=full_paths,
        command=command_line(data, masks or [], full_paths), noise=noise, timestep_sampling=timestep_sampling,
        ema_decay=ema_decay, noisy=noisy,
    )
    check_config(config)
    files = scan_paths(data)
    label_ids, class_names = (None, None)
    if labels:
        label_ids, class_names = read_labels(list(labels), files)
        config.class_names = tuple(class_names)
    mask_files = scan_paths(masks) if masks else None
    if mask_files is not None and len(mask_files) != len(files):
        raise MedidiffError(f"--masks: got {len(mask_files)} mask files for {len(files)} scans; give one per scan, in DATA order")

    import warnings

    from medidiff.tasks.run_folder import has_checkpoint

    main = _rank() == 0
    if resume and main and not has_checkpoint(out):
        typer.secho(f"warning: {out}: no checkpoint to resume from; starting at step 0", err=True, fg=typer.colors.YELLOW)
    gen = train_steps(files, out, config, labels=label_ids, masks=mask_files, resume=resume, overwrite=overwrite)
    stop = {"signal": 0}

    def on_signal(signum, frame) -> None:  # noqa: ARG001
        if stop["signal"]:  # a second Ctrl-C / SIGTERM: stop now, without a checkpoint
            raise KeyboardInterrupt
        stop["signal"] = signum
        if main:
            what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
            typer.secho(f"\n{what}: stopping after this step ({what} again to abort without a checkpoint) ...", err=True)

    def between_steps(event) -> None:
        # raised here, outside the generator: run_to_end then closes it at a step boundary,
        # which is where train_steps writes its resumable checkpoint
        if stop["signal"]:
            raise _Interrupted(event.step)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no checkpoint to resume from.*")  # said above, in one line
            result = run_to_end(gen, show=main, desc=None, callback=between_steps)
    except _Interrupted as exc:
        if main:
            step = exc.args[0]
            if step == 0:
                typer.echo("interrupted before the first step; nothing to resume: run the same command again")
            else:
                again = shlex.join(["medidiff", *sys.argv[1:]])
                again = again if "--resume" in sys.argv else again + " --resume"
                typer.echo(f"interrupted after step {step}; checkpoint written to {out / 'state'}")
                typer.echo(f"resume with:\n  {again}")
        raise typer.Exit(code=128 + int(stop["signal"])) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if main:
        model = result.model
        final = f"{sum(result.losses[-50:]) / len(result.losses[-50:]):.4g}" if result.losses else "n/a"
        typer.echo(f"model:       {out / 'model'} ({model.num_parameters():,} parameters, {model.config.spatial_dims}D, "
                   f"{'x'.join(map(str, model.config.image_size))})")
        typer.echo(f"final loss:  {final} (mean of the last {min(50, len(result.losses))} steps)")
        typer.echo(f"time:        {result.seconds:.1f} s this session; log: {out / 'log.csv'}")
        typer.echo(f"next:        medidiff generate {out / 'model'} --n 16 --out synthetic/")

