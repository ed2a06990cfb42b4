"""``medidiff latent ...``: latent diffusion (train an autoencoder, a latent prior, generate).

The commands only turn options into arguments of :mod:`medidiff.tasks.latent` and drive its
generators with a progress bar; every bad input is a one-line error (exit 2).
"""

from __future__ import annotations

from pathlib import Path

import typer

from medidiff.cli import app
from medidiff.cli.common import DEVICE, OVERWRITE, SEED, existing_path

EXAMPLES = """\b
Examples (2D slices of MR volumes; the autoencoder compresses 4x per axis):
  medidiff latent train-autoencoder scans/ --out ae/ --image-size 64 --steps 3000 --lr 2e-3
  medidiff latent train scans/ --autoencoder ae/ --out runs/latent --steps 3000
  medidiff latent generate runs/latent/model --n 16 --out synth/
  medidiff generate runs/latent/model --n 100 --out synth/ --real real/ --training scans/
\b
The latent model folder is an ordinary model folder (the prior) with autoencoder/ and
latent.json (the stored latent scale factor) inside. Denoising and anomaly detection keep
using pixel-space models.
"""

latent_app = typer.Typer(
    name="latent", help="Latent diffusion: a diffusion model in the latent space of an autoencoder.\n\n"
    "Example:  medidiff latent train-autoencoder scans/ --out ae/",
    no_args_is_help=True, add_completion=False, epilog=EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(latent_app, name="latent")


def _size(text: str | None, dims: int):
    from medidiff.cli.train import parse_image_size

    return None if text is None else parse_image_size(text, dims)


@latent_app.command("train-autoencoder", epilog=EXAMPLES)
def train_autoencoder_cmd(
    data: list[Path] = typer.Argument(..., help="Scan files and/or folders of scans (NIfTI, DICOM series, TIFF, PNG)."),
    out: Path = typer.Option(..., "--out", help="Autoencoder folder to write (config.json + weights.safetensors)."),
    dims: int = typer.Option(2, "--dims", help="2: slices; 3: volume patches."),
    preset: str = typer.Option("tiny", "--preset", help="Autoencoder size: tiny (tests), small (CPU), base (GPU)."),
    image_size: str = typer.Option("64", "--image-size", help="Training crop in pixels (multiple of 4), e.g. 64 or 16,32,32."),
    steps: int = typer.Option(1000, "--steps", min=1, help="Optimiser steps."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per step."),
    lr: float = typer.Option(1e-3, "--lr", min=0.0, help="Learning rate (Adam; the peak rate with --lr-schedule cosine)."),
    lr_schedule: str = typer.Option("constant", "--lr-schedule", help="constant, or cosine (warm-up, then decay to 5%)."),
    kl_weight: float = typer.Option(1e-6, "--kl-weight", min=0.0, help="Weight of the KL term against the L1 reconstruction loss."),
    adversarial_weight: float = typer.Option(
        0.0, "--adversarial-weight", min=0.0,
        help="Weight of a patch-adversarial term (MONAI PatchDiscriminator, least squares; 0: off)."),
    adversarial_start: int = typer.Option(
        0, "--adversarial-start", min=0, help="Step at which the adversarial term starts (L1 alone before it)."),
    minutes: float = typer.Option(None, "--minutes", min=0.0, help="Stop after this much wall time (at a step boundary)."),
    slice_axis: int = typer.Option(None, "--slice-axis", min=0, max=2, help="2D from volumes: array axis to slice (default: coarsest)."),
    modality: str = typer.Option(None, "--modality", help="Record this modality when the files do not (NIfTI, PNG)."),
    seed: int = SEED,
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """Train the autoencoder of a latent model (L1 + a small KL term, optionally a patch-adversarial term).

    Example:  medidiff latent train-autoencoder scans/ --out ae/ --image-size 64 --steps 3000 --lr 2e-3
    """
    from medidiff.core.data import scan_paths
    from medidiff.core.progress import run_to_end
    from medidiff.tasks.latent import train_autoencoder_steps

    files = scan_paths(data)
    result = run_to_end(train_autoencoder_steps(
        files, out, dims=dims, preset=preset, image_size=_size(image_size, dims), steps=steps, batch_size=batch_size,
        lr=lr, lr_schedule=lr_schedule, kl_weight=kl_weight, adversarial_weight=adversarial_weight, adversarial_start=adversarial_start,
        minutes=minutes if minutes else None, slice_axis=slice_axis, modality=modality,
        seed=seed, device=device, overwrite=overwrite), show=True, desc="autoencoder")
    ae = result.autoencoder
    typer.echo(f"autoencoder: {out} ({ae.num_parameters():,} parameters, {ae.config.spatial_dims}D, {ae.factor}x per axis)")
    typer.echo(f"steps:       {len(result.losses)} in {result.seconds:.1f} s; final L1 "
               f"{sum(result.losses[-20:]) / max(1, len(result.losses[-20:])):.4g} (network units)")
    typer.echo(f"next:        medidiff latent train {' '.join(map(str, data))} --autoencoder {out} --out RUN")


@latent_app.command("train", epilog=EXAMPLES)
def train_cmd(
    data: list[Path] = typer.Argument(..., help="Scan files and/or folders of scans (the autoencoder's kind of data)."),
    autoencoder: Path = typer.Option(..., "--autoencoder", help="Autoencoder folder (from `medidiff latent train-autoencoder`)."),
    out: Path = typer.Option(..., "--out", help="Run folder; the latent model is written to RUN/model."),
    preset: str = typer.Option("tiny", "--preset", help="Prior network size: tiny, small, base."),
    steps: int = typer.Option(None, "--steps", min=1, help="Optimiser steps (default 1000)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Latents per step."),
    lr: float = typer.Option(None, "--lr", min=0.0, help="Peak learning rate (warm-up, then cosine decay; default 2e-3)."),
    schedule: str = typer.Option("ddpm", "--schedule", help="ddpm or rflow."),
    prediction: str = typer.Option(None, "--prediction", help="ddpm: v_prediction (default) or epsilon; rflow: flow."),
    field: str = typer.Option(None, "--field", help="Pixel field of one sample, e.g. 96,128 (default: the training "
                              "slices' size rounded up to a multiple of 16)."),
    no_flip: bool = typer.Option(False, "--no-flip", help="Do not add mirrored copies of the training images."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", min=0, help="Checkpoint every N steps (0: not by steps)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    seed: int = SEED,
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """Encode the training scans and train a diffusion prior on their latents.

    Example:  medidiff latent train scans/ --autoencoder ae/ --out runs/latent --steps 3000
    """
    from medidiff.core.autoencoder import Autoencoder
    from medidiff.core.data import scan_paths
    from medidiff.core.progress import run_to_end
    from medidiff.tasks.latent import train_latent_steps

    existing_path(autoencoder)
    files = scan_paths(data)
    ae = Autoencoder.load(autoencoder)
    size = _size(field, ae.config.spatial_dims)
    if isinstance(size, int):
        size = (size,) * ae.config.spatial_dims
    given = {k: v for k, v in {"lr": lr, "prediction": prediction}.items() if v is not None}  # else the latent defaults
    result = run_to_end(train_latent_steps(
        files, ae, out, preset=preset, steps=steps, batch_size=batch_size, schedule=schedule, field=size,
        flip=not no_flip, checkpoint_every=checkpoint_every, seed=seed, device=device, resume=resume,
        overwrite=overwrite, command="medidiff latent train DATA --autoencoder AE", **given),
        show=True, desc="latent prior")
    m = result.model
    typer.echo(f"model:        {out / 'model'} (prior {m.prior.num_parameters():,} parameters on "
               f"{'x'.join(map(str, m.prior.config.image_size))} latents; samples {'x'.join(map(str, m.field_size))})")
    typer.echo(f"scale factor: {m.scale_factor:.6g} (shift {m.shift:.6g}), stored in {out / 'model' / 'latent.json'}")
    typer.echo(f"time:         {result.seconds:.1f} s; next: medidiff latent generate {out / 'model'} --n 16 --out synth/")


@latent_app.command("generate", epilog=EXAMPLES)
def generate_cmd(
    model: Path = typer.Argument(..., metavar="MODEL", help="Latent model folder (RUN/model of `medidiff latent train`)."),
    n: int = typer.Option(..., "--n", "-n", min=1, help="Number of samples."),
    out: Path = typer.Option(..., "--out", help="Output folder: samples, manifest.csv, DATA_CARD.md (resumed if it "
                             "holds a run with the same settings)."),
    format: str = typer.Option("nifti", "--format", help="nifti, dicom (marked SYNTHETIC), tiff or png (2D)."),
    sampler: str = typer.Option(None, "--sampler", help="ddpm, ddim (default for DDPM priors), dpm++2m or euler (rflow)."),
    steps: int = typer.Option(20, "--steps", min=1, help="Sampling steps."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Samples per network call."),
    image_size: str = typer.Option(None, "--image-size", help="Output size in pixels (multiples of 4; default: the training "
                                   "field; larger fields are sampled as one latent where memory allows)."),
    clip_x0: float = typer.Option(None, "--clip-x0", min=0.0, help="Clip the predicted latent to +-this (standardised units; "
                                  "default: the training latents' largest |value|, stored in latent.json; 0: no clip)."),
    max_latent_voxels: int = typer.Option(None, "--max-latent-voxels", min=1, help="Most latent voxels one whole-latent "
                                          "network call may hold (batch included); a larger latent is sampled in overlapping windows, "
                                          "with a warning (default: whole where the device's free memory allows)."),
    real: Path = typer.Option(None, "--real", help="Real images to compare with: adds a quality report to the data card."),
    training: Path = typer.Option(None, "--training", help="The model's training images: adds the memorisation check (with --real)."),
    seed: int = SEED,
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """Generate a synthetic data set with a latent model (the same folder as `medidiff generate`).

    Example:  medidiff latent generate runs/latent/model --n 16 --out synth/
    """
    import dataclasses

    from medidiff.core.latent_model import LatentModel
    from medidiff.errors import MedidiffError
    from medidiff.io.atomic import check_output_path
    from medidiff.tasks.dataset import generate_dataset

    existing_path(model)
    if training is not None and real is None:
        raise MedidiffError("--training needs --real (the memorisation check is part of the quality report)")
    for p in (real, training):
        if p is not None:
            existing_path(p)
    check_output_path(out, overwrite=True, inputs=[model])  # never inside the model folder
    lm = LatentModel.load(model)
    if max_latent_voxels is not None:
        lm = dataclasses.replace(lm, max_latent_voxels=max_latent_voxels)
    size = _size(image_size, lm.spatial_dims)
    if isinstance(size, int):
        size = (size,) * lm.spatial_dims
    clip = "auto" if clip_x0 is None else (None if clip_x0 == 0 else clip_x0)
    command = ["medidiff", "latent", "generate", model.name, "--n", str(n), "--out", out.name]
    for flag, value, default in (("--format", format, "nifti"), ("--seed", seed, 0), ("--sampler", sampler, None),
                                 ("--steps", steps, 20), ("--batch-size", batch_size, 8),
                                 ("--image-size", image_size, None), ("--clip-x0", clip_x0, None),
                                 ("--max-latent-voxels", max_latent_voxels, None),
                                 ("--real", real.name if real else None, None),
                                 ("--training", training.name if training else None, None)):
        if value != default:
            command += [flag, str(value)]
    try:
        result = generate_dataset(lm, out, n, format=format, seed=seed, sampler=sampler, steps=steps,
                                  batch_size=batch_size, image_size=size, clip_x0=clip, device=device,
                                  overwrite=overwrite, command=" ".join(command), real=real, training=training,
                                  progress=True)
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted; the finished samples in {out} are kept: run the same command again to finish", err=True)
        raise typer.Exit(code=130) from None
    typer.echo(f"wrote {result.written} samples, kept {result.skipped} finished ones in {out}"
               + (f"; manifest {result.manifest.name}, data card {result.data_card.name}" if result.complete else ""))
    if result.quality is not None:
        for name, value in result.quality.lines():
            typer.echo(f"  {name}: {value}")
