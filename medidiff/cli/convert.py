"""``medidiff convert IN OUT``: NIfTI <-> DICOM series <-> TIFF <-> PNG, geometry preserved."""

from __future__ import annotations

from pathlib import Path

import typer

from medidiff.cli import app
from medidiff.cli.common import OVERWRITE, existing_path
from medidiff.cli.info import warnings_as_lines


@app.command()
def convert(
    src: Path = typer.Argument(..., metavar="IN", help="Input scan: NIfTI, DICOM file or series folder, (OME-)TIFF, PNG/JPEG."),
    dst: Path = typer.Argument(..., metavar="OUT", help="Output: .nii/.nii.gz, .tif/.ome.tif, .png, .dcm (2D), or a folder name for a DICOM series."),
    format: str = typer.Option(None, "--format", help="nifti, dicom, tiff or png (default: from OUT's extension; none = DICOM folder)."),
    series: str = typer.Option(None, "--series", help="SeriesInstanceUID or SeriesNumber, for a DICOM folder with several series."),
    volume: int = typer.Option(None, "--volume", min=0, help="Volume index of a 4D NIfTI (or the time/channel axis of a TIFF)."),
    modality: str = typer.Option(None, "--modality", help="Set the modality (e.g. CT, MR): picks the DICOM storage class when writing DICOM."),
    fill_gaps: bool = typer.Option(False, "--fill-gaps", help="A DICOM series with missing slices: fill them with blank slices (every slice keeps its real position) instead of refusing."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Convert a scan to another format, keeping spacing, affine and metadata.

    Example:  medidiff convert scan.nii.gz scan_dicom/ --format dicom
    """
    from medidiff.io import load_scan, save_scan

    existing_path(src)
    with warnings_as_lines():
        scan = load_scan(src, series=series, volume=volume, modality=modality, fill_gaps=fill_gaps)
        out = save_scan(scan, dst, format=format, overwrite=overwrite, inputs=[src])
    spacing = " x ".join(f"{s:.6g}" for s in scan.spacing)
    typer.echo(f"wrote {out} (shape {scan.shape}, spacing {spacing} {scan.meta.get('unit', 'mm')}, {scan.orientation})")
