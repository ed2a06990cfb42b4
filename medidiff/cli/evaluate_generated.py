"""``medidiff evaluate generated DIR --real REAL_DIR``: fidelity, diversity and memorisation of a generated set."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medidiff.cli.common import OVERWRITE, existing_path
from medidiff.cli.evaluate import evaluate_app


@evaluate_app.command("generated")
def generated(
    samples: Path = typer.Argument(..., metavar="DIR", help="Generated images: a `medidiff generate` folder (its manifest is followed) or any folder of scans."),
    real: Path = typer.Option(..., "--real", help="Real images (held out) to compare with."),
    training: Path = typer.Option(None, "--training", help="The model's training images, for the memorisation check."),
    threshold: float = typer.Option(None, "--threshold", help="Flag samples whose structure-NCC score with a training image is at least this (default: the rule's 0.95)."),
    report: Path = typer.Option(None, "--report", help="Write a PNG contact sheet (samples, real, flagged pairs)."),
    json_out: Path = typer.Option(None, "--json", help="Also write all numbers (and every sample's nearest training image) as JSON."),
    seed: int = typer.Option(0, "--seed", help="Seed of the KID subsets and MS-SSIM pairs."),
    overwrite: bool = OVERWRITE,
) -> None:
    """KID, intensity-histogram distance, MS-SSIM diversity and a memorisation check of generated images.

    Example:  medidiff evaluate generated synth/ --real heldout/ --training train/ --report quality.png
    """
    from medidiff.io.atomic import atomic_outputs, check_outputs
    from medidiff.tasks.quality import evaluate_generated

    inputs = [p for p in (samples, real, training) if p is not None]
    for p in inputs:
        existing_path(p)
    check_outputs([report, json_out], overwrite=overwrite, inputs=inputs)  # before the work, not after
    with atomic_outputs([report, json_out], overwrite, inputs) as staged:  # both or neither
        q = evaluate_generated(samples, real, training, threshold=threshold, report=staged[report], seed=seed)
        if report is not None:
            q.report = str(report)  # the real name, not the staged one
        if json_out is not None:
            staged[json_out].write_text(json.dumps(q.to_dict(), indent=2, default=float) + "\n")
    width = max(len(k) for k, _ in q.lines())
    for name, value in q.lines():
        typer.echo(f"{name:<{width}}  {value}")
    for i in q.flagged:
        nb = q.neighbours[i]
        typer.echo(f"FLAGGED {nb.sample_name}: {q.rule} {nb.score:.4f} with training image {nb.training}")
    if report is not None:
        typer.echo(f"contact sheet: {report}")
    if json_out is not None:
        typer.echo(f"wrote {json_out}")
