"""``medidiff info PATH``: shape, spacing, orientation, modality and value range of a scan."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import typer

from medidiff.cli import app
from medidiff.cli.common import existing_path


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show warnings raised inside the block as single ``warning: ...`` lines on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            seen = set()
            for w in caught:
                text = " ".join(str(w.message).split())
                if text not in seen:
                    seen.add(text)
                    typer.secho(f"warning: {text}", err=True, fg=typer.colors.YELLOW)


def _fmt(values) -> str:
    return " x ".join(f"{float(v):.6g}" for v in values)


@app.command()
def info(
    path: Path = typer.Argument(..., help="A NIfTI file, DICOM file or series folder, (OME-)TIFF, PNG or JPEG."),
    series: str = typer.Option(None, "--series", help="SeriesInstanceUID or SeriesNumber, for a DICOM folder with several series."),
    volume: int = typer.Option(None, "--volume", min=0, help="Volume index of a 4D NIfTI (or the time/channel axis of a TIFF)."),
    fill_gaps: bool = typer.Option(False, "--fill-gaps", help="A DICOM series with missing slices: fill them with blank slices instead of refusing."),
) -> None:
    """Show a scan's shape, spacing, orientation, modality and intensity range.

    Example:  medidiff info scan.nii.gz
    """
    existing_path(path)
    with warnings_as_lines():
        _info(path, series, volume, fill_gaps)


def _info(path: Path, series: str | None, volume: int | None, fill_gaps: bool = False) -> None:
    from medidiff.io import detect_format, load_scan

    fmt = detect_format(path)
    # read first: a refusal is one line (a folder with several series lists them in that line)
    scan = load_scan(path, series=series, volume=volume, fill_gaps=fill_gaps)
    if fmt == "dicom" and path.is_dir():
        from medidiff.io.dicom import list_series

        found = list_series(path)
        typer.echo(f"series found: {len(found)}")
        for s in found:
            typer.echo(f"  - {s.describe()}")
    arr = scan.array
    axes = "z, y, x" if scan.ndim == 3 else "y, x"
    unit = scan.meta.get("unit", "mm")
    typer.echo(f"path:        {path}")
    typer.echo(f"format:      {fmt}")
    typer.echo(f"shape:       {_fmt(scan.shape)} ({axes})")
    typer.echo(f"spacing:     {_fmt(scan.spacing)} {unit} ({axes})")
    typer.echo(f"orientation: {scan.orientation}")
    typer.echo(f"modality:    {scan.modality}")
    typer.echo(f"values:      min {float(arr.min()):.6g}, max {float(arr.max()):.6g}, mean {float(np.mean(arr, dtype=np.float64)):.6g}")
    origin = scan.affine[:3, 3]
    typer.echo(f"origin:      {_fmt(origin)} mm (RAS, voxel 0)")
    dicom = scan.meta.get("dicom") or {}
    if dicom.get("SeriesInstanceUID"):
        desc = dicom.get("SeriesDescription", "")
        typer.echo(f"series:      {dicom.get('SeriesNumber', '?')} {desc!r} uid {dicom['SeriesInstanceUID']}")
    if "n_volumes" in scan.meta:
        typer.echo(f"volume:      {scan.meta['volume']} of {scan.meta['n_volumes']} (0-based)")
