"""``medidiff demo``: the quickstart on real sample scans, as an HTML report (or in napari)."""

from __future__ import annotations

from pathlib import Path

import typer

from medidiff.cli import app
from medidiff.cli.common import DEVICE, OVERWRITE, SEED


@app.command()
def demo(
    out: Path = typer.Option(Path("medidiff-demo"), "--out", help="Folder for the report (index.html and pictures)."),
    quick: bool = typer.Option(False, "--quick", help="Smaller inputs and fewer steps (a few seconds)."),
    napari: bool = typer.Option(False, "--napari", help="Open napari with the sample scan and the medidiff widgets docked."),
    device: str = DEVICE,
    seed: int = SEED,
    overwrite: bool = OVERWRITE,
) -> None:
    """Denoise, generate and detect anomalies on real sample scans with the built-in models.

    Example:  medidiff demo --out demo && open demo/index.html
    """
    if napari:
        from napari_medidiff.demo import open_demo_viewer

        open_demo_viewer(run=True)
        return
    from medidiff.tasks.demo import demo as run_demo

    result = run_demo(out, quick=quick, device=device, seed=seed, overwrite=overwrite, progress=True)
    for k, v in result.numbers.items():
        typer.echo(f"{k:<26} {v:.4g}")
    typer.echo(f"report: {result.report}")
