"""``medidiff generate MODEL --n N --out DIR``: a synthetic data set with a manifest and a data card."""

from __future__ import annotations

from pathlib import Path

import typer

from medidiff.cli import app
from medidiff.cli.common import DEVICE, OVERWRITE, SEED, existing_path

EPILOG = """\b
Examples:
  medidiff generate mr2d --n 100 --out synth/
  medidiff generate my-run/model --n 50 --label tumour --guidance 2 --out synth_tumour/
  medidiff generate my-seg-model --masks masks/ --out synth_pairs/ --format dicom
  medidiff generate my-run/model --n 200 --out synth/ --real real_scans/ --training train_scans/
  medidiff generate runs/latent/model --n 100 --out synth/   (a latent model: same folder, manifest, card)
\b
Sharding (one process per GPU or CPU share; same files and manifest as one process):
  python -m torch.distributed.run --standalone --nproc_per_node 2 -m medidiff generate my-run/model -n 1000 --out synth/
  (under torchrun write -n or --num-samples: torchrun mistakes --n for one of its own options)
\b
Rerunning the same command on the same folder resumes: finished files (checked by sha256) are kept.
"""


@app.command(epilog=EPILOG)
def generate(
    model: str = typer.Argument(..., metavar="MODEL", help="Model folder or name (see `medidiff models`); pixel or latent."),
    n: int = typer.Option(None, "--n", "-n", "--num-samples", min=1, help="Number of samples (default with --masks: one per mask)."),
    out: Path = typer.Option(..., "--out", help="Output folder (resumed if it holds a run with the same settings)."),
    format: str = typer.Option("nifti", "--format", help="nifti, dicom (marked SYNTHETIC), tiff or png."),
    seed: int = SEED,
    sampler: str = typer.Option(None, "--sampler", help="ddpm, ddim (default for DDPM models), dpm++2m or euler (rflow)."),
    steps: int = typer.Option(20, "--steps", min=1, help="Sampling steps."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance scale (1 = none; 2-4 follows the condition more)."),
    label: list[str] = typer.Option(None, "--label", help="Class (name or index) for every sample; repeat to give one per sample. Default: classes in turn."),
    masks: Path = typer.Option(None, "--masks", help="Folder (or file) of label maps: one sample per mask (mask-conditioned models)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Samples per network call."),
    bit_identical: bool = typer.Option(False, "--bit-identical", help="CPU: one sample per network call, oneDNN off, so files are "
                                       "identical for any batch size or process count (about 2x slower; default: batched, equal to ~1e-5)."),
    real_pixels: bool = typer.Option(False, "--report-real-pixels", help="With --real: let quality.png show real and training images "
                                     "(default: samples only, so the data set carries no real patient pixels)."),
    device: str = DEVICE,
    real: Path = typer.Option(None, "--real", help="Real images to compare with: adds a quality report to the data card."),
    training: Path = typer.Option(None, "--training", help="The model's training images: adds the memorisation check (with --real)."),
    threshold: float = typer.Option(None, "--threshold", help="Memorisation flag: structure-NCC score with a training image at or above this (default: the rule's 0.95)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Generate a synthetic data set: DIR/sample_*.nii.gz, manifest.csv, DATA_CARD.md.

    Example:  medidiff generate mr2d --n 100 --out synth/
    """
    from medidiff.errors import MedidiffError
    from medidiff.model_store.registry import is_explicit_path
    from medidiff.tasks.dataset import generate_dataset

    if masks is not None:
        existing_path(masks)
    if training is not None and real is None:
        raise MedidiffError("--training needs --real (the memorisation check is part of the quality report)")
    for p in (real, training):
        if p is not None:
            existing_path(p)
    # the command as typed (rebuilt from the values, so it is right in-process and under torchrun too)
    # (folders by their names only: the command goes into a data card meant for sharing)
    name = Path(model).name if is_explicit_path(model) else model
    command = ["medidiff", "generate", name, "--n" if n is not None else "", str(n) if n is not None else "", "--out", out.name]
    for flag, value, default in (("--format", format, "nifti"), ("--seed", seed, 0), ("--sampler", sampler, None),
                                 ("--steps", steps, 20), ("--guidance", guidance, 1.0),
                                 ("--masks", masks.name if masks else None, None),
                                 ("--batch-size", batch_size, 8), ("--bit-identical", bit_identical, False),
                                 ("--device", device, "auto"), ("--real", real.name if real else None, None),
                                 ("--training", training.name if training else None, None), ("--threshold", threshold, None)):
        if value is True:
            command.append(flag)
        elif value != default:
            command += [flag, str(value)]
    for value in label or []:
        command += ["--label", value]
    if overwrite:
        command.append("--overwrite")
    import shlex

    line = " ".join(shlex.quote(str(a)) for a in command if a != "")
    labels = None
    if label:
        labels = label[0] if len(label) == 1 else list(label)
    try:
        result = generate_dataset(
            model, out, n, format=format, seed=seed, sampler=sampler, steps=steps, guidance=guidance, labels=labels,
            masks_dir=masks, batch_size=batch_size, device=device, overwrite=overwrite, command=line,
            real=real, training=training, threshold=threshold, bit_identical=bit_identical,
            real_pixels_in_report=real_pixels, progress=True,
        )
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted; the finished samples in {out} are kept: run the same command again to finish", err=True)
        raise typer.Exit(code=130) from None
    done = f"wrote {result.written} samples, kept {result.skipped} finished ones in {result.out_dir}"
    if result.complete:
        typer.echo(f"{done}; manifest {result.manifest.name}, data card {result.data_card.name}")
    else:
        typer.echo(f"{done}; this shard is done, the manifest is written by the last process to finish")
    if result.quality is not None:
        for name, value in result.quality.lines():
            typer.echo(f"  {name}: {value}")
