"""``medidiff evaluate generated DIR --real REAL_DIR``: fidelity, diversity and memorisation of a generated set."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medidiff.cli.common import existing_path
from medidiff.cli.evaluate import evaluate_app


@evaluate_app.command("generated")
def generated(
    samples: Path = typer.Argument(..., metavar="DIR", help="Generated images: a `medidiff generate` folder (its manifest is followed) or any folder of scans."),
    real: Path = typer.Option(..., "--real", help="Real images (held out) to compare with."),
    training: Path = typer.Option(None, "--training", help="The model's training images, for the memorisation check."),
    threshold: float = typer.Option(0.95, "--threshold", help="Flag samples whose NCC with a training image is at least this."),
    report: Path = typer.Option(None, "--report", help="Write a PNG contact sheet (samples, real, flagged pairs)."),
    json_out: Path = typer.Option(None, "--json", help="Also write all numbers (and every sample's nearest training image) as JSON."),
    seed: int = typer.Option(0, "--seed", help="Seed of the KID subsets and MS-SSIM pairs."),
) -> None:
    """KID, intensity-histogram distance, MS-SSIM diversity and a memorisation check of generated images.

    Example:  medidiff evaluate generated synth/ --real heldout/ --training train/ --report quality.png
    """
    from medidiff.io.atomic import atomic_file
    from medidiff.tasks.quality import evaluate_generated

    for p in (samples, real, training):
        if p is not None:
            existing_path(p)
    q = evaluate_generated(samples, real, training, threshold=threshold, report=report, seed=seed)
    width = max(len(k) for k, _ in q.lines())
    for name, value in q.lines():
        typer.echo(f"{name:<{width}}  {value}")
    for i in q.flagged:
        nb = q.neighbours[i]
        typer.echo(f"FLAGGED {nb.sample_name}: ncc {nb.score:.4f} with training image {nb.training}")
    if report is not None:
        typer.echo(f"contact sheet: {report}")
    if json_out is not None:
        with atomic_file(json_out, overwrite=True) as tmp:
            tmp.write_text(json.dumps(q.to_dict(), indent=2, default=float) + "\n")
