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
    threshold: float = typer.Option(0.95, "--threshold", help="Flag samples whose NCC with a training image is at least this."),
    report: Path = typer.Option(None, "--report", help="Write a PNG contact sheet (samples, real, flagged pairs)."),
    json_out: Path = typer.Option(None, "--json", help="Also write all numbers (and every sample's nearest training image) as JSON."),
    seed: int = typer.Option(0, "--seed", help="Seed of the KID subsets and MS-SSIM pairs."),
    overwrite: bool = OVERWRITE,
) -> None:
    """KID, intensity-histogram distance, MS-SSIM diversity and a memorisation check of generated images.

    Example:  medidiff evaluate generated synth/ --real heldout/ --training train/ --report quality.png
    """
    from medidiff.io.atomic import atomic_file
    from medidiff.tasks.quality import evaluate_generated

    inputs = [p for p in (samples, real, training) if p is not None]
    for p in inputs:
        existing_path(p)
    check_outputs([p for p in (report, json_out) if p is not None], inputs, overwrite)
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
        with atomic_file(json_out, overwrite=True, inputs=inputs) as tmp:
            tmp.write_text(json.dumps(q.to_dict(), indent=2, default=float) + "\n")


def check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Before anything is computed: no output is, or lies inside, an input; no two outputs clash."""
    from medidiff.errors import OutputError
    from medidiff.io.atomic import check_output_path

    seen: dict[Path, Path] = {}
    for out in outputs:
        key = out.expanduser().resolve()
        if key in seen:
            raise OutputError(f"{out}: given for two outputs (--report and --json); choose two paths")
        seen[key] = out
        for src in inputs:
            s = src.expanduser().resolve()
            if key == s or s in key.parents:
                raise OutputError(f"{out}: is (or lies inside) the input {src}; write reports elsewhere (inputs are never changed)")
        check_output_path(out, overwrite=overwrite, inputs=inputs)
