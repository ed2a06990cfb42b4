"""``medidiff anomaly``: anomaly maps with a model of healthy scans, and threshold calibration.

``medidiff anomaly MODEL IN OUT_MAP`` is short for ``medidiff anomaly detect MODEL IN OUT_MAP``:
the group routes any first argument that is not a sub-command name to ``detect``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import click
import typer
from typer.core import TyperGroup

from medidiff.cli import app
from medidiff.cli.common import DEVICE, OVERWRITE, SEED, existing_path


class _DetectByDefault(TyperGroup):
    """A group whose first argument is a sub-command (``calibrate``, ``detect``) or else MODEL of ``detect``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["detect", *args]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["detect", "calibrate"]


anomaly_app = typer.Typer(
    cls=_DetectByDefault,
    no_args_is_help=True,
    help=(
        "Anomaly maps from a diffusion model trained on healthy scans.\n\n"
        "medidiff anomaly MODEL IN OUT_MAP ... is short for medidiff anomaly detect MODEL IN OUT_MAP ...\n\n"
        "Example:  medidiff anomaly calibrate my-model healthy/ --percentile 99\n\n"
        "Example:  medidiff anomaly my-model patient.nii.gz map.nii.gz --mask mask.nii.gz --report report.png"
    ),
)
app.add_typer(anomaly_app, name="anomaly")


class Method(str, Enum):
    ddpm = "ddpm"
    simplex = "simplex"
    patched = "patched"


class Recon(str, Enum):
    tweedie = "tweedie"
    ddim = "ddim"


class Direction(str, Enum):
    both = "both"
    bright = "bright"
    dark = "dark"


METHOD = typer.Option(None, "--method", help="ddpm (Gaussian noise), simplex (AnoDDPM) or patched (pDDPM). Default: the calibrated one, else ddpm.")
TIMESTEPS = typer.Option(None, "--timesteps", help="Comma-separated noise times, e.g. 150,300 (default: 30% and 45% of the schedule, 3 noise draws each; repeat a time for more draws).")
RECON = typer.Option(None, "--recon", help="tweedie (one network call per time) or ddim (a few DDIM steps).")
DIRECTION = typer.Option(None, "--direction", help="both (|x - recon|), bright or dark (only lesions brighter/darker than expected).")


def _v(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value


def _timesteps(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected numbers separated by commas, got {text!r}", param_hint="--timesteps") from None


def _threshold(text: str) -> str | float:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"expected 'auto' or a number, got {text!r}", param_hint="--threshold") from None


@anomaly_app.command()
def detect(
    model: Path = typer.Argument(..., help="A model trained on healthy scans: a folder, a built-in name (mr2d) or a user model name."),
    input: Path = typer.Argument(..., metavar="IN", help="The scan to examine (NIfTI, DICOM, TIFF, PNG)."),
    out_map: Path = typer.Argument(..., metavar="OUT_MAP", help="Where to write the anomaly map (scan units, the input's geometry)."),
    mask: Path = typer.Option(None, "--mask", help="Also write the binary mask map > threshold here."),
    threshold: str = typer.Option("auto", "--threshold", help="'auto' (the model's calibration) or a value in the map's units."),
    method: Method = METHOD,
    timesteps: str = TIMESTEPS,
    recon: Recon = RECON,
    direction: Direction = DIRECTION,
    report: Path = typer.Option(None, "--report", help="Also write a PNG: scan, map, mask on the most anomalous slice."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Slices (or patches) per network call."),
    device: str = DEVICE,
    seed: int = SEED,
    overwrite: bool = OVERWRITE,
) -> None:
    """Write the anomaly map (and mask) of a scan and print its score.

    The score is the 99th percentile of the map inside the tissue; the threshold comes from
    `medidiff anomaly calibrate` unless --threshold is given. The score and threshold are also
    written next to the map as NAME.anomaly.json (read by `medidiff evaluate anomaly`).

    Example:  medidiff anomaly my-model patient.nii.gz map.nii.gz --mask mask.nii.gz
    """
    from medidiff.io import load_scan
    from medidiff.io.atomic import check_output_path
    from medidiff.core.progress import run_to_end
    from medidiff.tasks.anomaly import detect_anomalies_steps, sidecar_path, write_sidecar

    from medidiff.model_store.registry import find_model, resolve_model

    model = find_model(model)  # a folder, a built-in name or a user model name
    existing_path(input)
    thr = _threshold(threshold)
    ts = _timesteps(timesteps)
    inputs = [input, model]
    outputs = [out_map, sidecar_path(out_map)] + [p for p in (mask, report) if p is not None]
    for out in outputs:  # refuse before the work, not after
        check_output_path(out, overwrite=overwrite, inputs=inputs)
    m = resolve_model(model)
    scan = load_scan(input)
    result = run_to_end(
        detect_anomalies_steps(m, scan, method=_v(method), timesteps=ts, recon=_v(recon), direction=_v(direction),
                               threshold=thr, batch_size=batch_size, seed=seed, device=device),
        show=True, desc="anomaly",
    )
    from medidiff.io import save_scan

    save_scan(result.map, out_map, overwrite=overwrite, inputs=inputs)
    write_sidecar(result, out_map, overwrite=overwrite, extra={"model": str(model), "input": str(input), "seed": seed})
    if mask is not None:
        save_scan(result.mask, mask, overwrite=overwrite, inputs=inputs)
    if report is not None:
        _report(scan.array, result, report, overwrite)
    typer.echo(f"score {result.score:.6g} (99th percentile of the map in tissue); threshold {result.threshold:.6g}; "
               f"anomalous volume {result.volume_mm3:.6g} mm3 ({int(result.mask.array.sum())} voxels)")
    typer.echo(f"wrote {out_map}" + (f", {mask}" if mask else "") + (f", {report}" if report else ""))


def _report(image, result, path: Path, overwrite: bool) -> None:
    import numpy as np

    from medidiff.reporting.figures import save_grid

    amap, msk = result.map.array, result.mask.array
    if amap.ndim == 3:
        z = int(np.argmax(amap.reshape(amap.shape[0], -1).sum(1)))
        image, amap, msk = image[z], amap[z], msk[z]
        where = f" (slice {z})"
    else:
        where = ""
    save_grid([image, amap, image], path, titles=["scan" + where, "anomaly map", "mask > threshold"],
              cmaps=["gray", "magma", "gray"], overlays=[None, None, msk],
              suptitle=f"score {result.score:.4g}, threshold {result.threshold:.4g}", overwrite=overwrite)


@anomaly_app.command()
def calibrate(
    model: Path = typer.Argument(..., help="The model folder; the threshold is saved into its config.json."),
    healthy: Path = typer.Argument(..., metavar="HEALTHY_DIR", help="A folder (or file) of healthy scans not used in training."),
    percentile: float = typer.Option(99.0, "--percentile", min=0.0, max=100.0, help="Percentile of healthy tissue voxels' map values."),
    method: Method = METHOD,
    timesteps: str = TIMESTEPS,
    recon: Recon = RECON,
    direction: Direction = DIRECTION,
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Slices (or patches) per network call."),
    device: str = DEVICE,
    seed: int = SEED,
) -> None:
    """Calibrate the "auto" threshold on healthy scans and store it in the model folder.

    The threshold is the chosen percentile of the anomaly map over the tissue voxels of the
    healthy scans, so about (100 - percentile)% of healthy tissue is flagged. Detection with
    --threshold auto then uses it (with the same method and options).

    Example:  medidiff anomaly calibrate my-model healthy/ --percentile 99
    """
    from medidiff.core.data import expand_inputs
    from medidiff.core.model import DiffusionModel
    from medidiff.core.progress import run_to_end
    from medidiff.tasks.anomaly import calibrate_threshold_steps

    from medidiff.errors import ModelError
    from medidiff.model_store.registry import BUILTIN_DIR, find_model

    model = find_model(model)
    if BUILTIN_DIR.resolve() in Path(model).resolve().parents:
        raise ModelError(f"{model}: a built-in model is read-only; copy it first with "
                         f"`medidiff models import {Path(model).name} --name my-{Path(model).name}` and calibrate the copy")
    existing_path(healthy)
    if not 0 < percentile < 100:
        raise typer.BadParameter(f"must be between 0 and 100 (exclusive), got {percentile}", param_hint="--percentile")
    m = DiffusionModel.load(model)
    scans = expand_inputs([healthy])
    opts = {k: v for k, v in {"method": _v(method), "timesteps": _timesteps(timesteps), "recon": _v(recon), "direction": _v(direction)}.items() if v is not None}
    thr = run_to_end(calibrate_threshold_steps(m, scans, percentile, batch_size=batch_size, seed=seed, device=device, **opts),
                     show=True, desc="calibrate")
    cal = m.config.anomaly
    typer.echo(f"threshold {thr:.6g} ({percentile:g}th percentile of {cal['n_voxels']} tissue voxels in {cal['n_scans']} "
               f"healthy scans, method {cal['method']}); saved to {model}/config.json")
