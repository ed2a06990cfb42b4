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
from medidiff.choices import AnomalyMethod, AnomalyScore, Direction, FdrMethod, Reconstruction
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


METHOD = typer.Option(None, "--method", help="ddpm (Gaussian noise), simplex (AnoDDPM; models trained with simplex noise only) or patched (pDDPM). Default: the calibrated one, else ddpm.")
TIMESTEPS = typer.Option(None, "--timesteps", help="Comma-separated noise times, e.g. 300,450 (default: the calibrated ones, else 30% and 45% of the schedule, or 15% and 30% for models trained on windows of 64 pixels or more, 3 noise draws each; repeat a time for more draws).")
RECON = typer.Option(None, "--recon", help="tweedie (one network call per time) or ddim (a few DDIM steps).")
DDIM_STEPS = typer.Option(None, "--ddim-steps", help="DDIM steps per reconstruction with --recon ddim (default 3).")
PATCH_SIZE = typer.Option(None, "--patch-size", help="Noised patch of --method patched, e.g. 16 or 16,16 (default: a quarter of the side).")
MEDIAN_SIZE = typer.Option(None, "--median-size", help="Median filter of the map in voxels (0: none; default 3).")
DIRECTION = typer.Option(None, "--direction", help="both (|x - recon|), bright or dark (only lesions brighter/darker than expected).")
SCORE = typer.Option(None, "--score", help="residual (|x - recon|), zscore ((residual - healthy mean) / healthy spread at the same reconstructed intensity) or ssim (zscore + the z-scored 1 - local SSIM); the last two need a calibration made with them. Default: the calibrated one, else residual.")
SMOOTH_SIGMA = typer.Option(None, "--smooth-sigma", help="Gaussian smoothing of the map inside the tissue, sigma in voxels (0: none; default 0).")
MIRROR = typer.Option(None, "--mirror", help="Weight w in [0, 1] of the left-right mirror comparison: map - w * (the map mirrored about the tissue's mid-line), so a hot spot on both sides (healthy anatomy) is damped and one on one side (a lesion) is kept. For left-right symmetric anatomy (axial brain slices) whose columns run left-right. Default: the calibrated one, else 0 (off).")
BATCH_SIZE = typer.Option(8, "--batch-size", help="Slices (or patches) per network call.")


def _options(**given) -> "AnomalyOptions":
    """The AnomalyOptions the command line describes (one-line errors for bad values)."""
    from medidiff.tasks.anomaly.options import AnomalyOptions, parse_patch_size, parse_threshold, parse_timesteps

    if "timesteps" in given:
        given["timesteps"] = parse_timesteps(given["timesteps"])
    if "patch_size" in given:
        given["patch_size"] = parse_patch_size(given["patch_size"])
    if "threshold" in given:
        given["threshold"] = parse_threshold(given["threshold"])
    return AnomalyOptions(**{k: (v.value if isinstance(v, Enum) else v) for k, v in given.items()})


@anomaly_app.command()
def detect(
    model: str = typer.Argument(..., help="A model trained on healthy scans: a folder, a built-in name (mr2d) or a user model name."),
    input: Path = typer.Argument(..., metavar="IN", help="The scan to examine (NIfTI, DICOM, TIFF, PNG)."),
    out_map: Path = typer.Argument(..., metavar="OUT_MAP", help="Where to write the anomaly map (the model's intensity units, so the same for a rescaled scan; the input's geometry)."),
    mask: Path = typer.Option(None, "--mask", help="Also write the binary mask map > threshold here."),
    threshold: str = typer.Option("auto", "--threshold", help="'auto' (the model's calibration) or a value in the map's units."),
    fdr: float = typer.Option(None, "--fdr", help="Instead of a threshold: a mask whose expected share of false voxels is at most this rate, e.g. 0.05 (conformal p-values against the calibration's healthy voxels + Benjamini-Hochberg)."),
    fdr_method: FdrMethod = typer.Option(None, "--fdr-method", help="How --fdr compares the scan with the calibration: scan-adaptive (default: the scan's scores and the calibration's each standardised by their own scan's median and interquartile range, so a scan reconstructed worse than the calibration scans keeps its FDR) or plain (the scores as they are)."),
    method: AnomalyMethod = METHOD,
    timesteps: str = TIMESTEPS,
    recon: Reconstruction = RECON,
    ddim_steps: int = DDIM_STEPS,
    patch_size: str = PATCH_SIZE,
    median_size: int = MEDIAN_SIZE,
    direction: Direction = DIRECTION,
    score: AnomalyScore = SCORE,
    smooth_sigma: float = SMOOTH_SIGMA,
    mirror: float = MIRROR,
    report: Path = typer.Option(None, "--report", help="Also write a PNG: scan, map, mask on the most anomalous slice."),
    batch_size: int = BATCH_SIZE,
    device: str = DEVICE,
    seed: int = SEED,
    overwrite: bool = OVERWRITE,
) -> None:
    """Write the anomaly map (and mask) of a scan and print its score.

    The score is the 99th percentile of the map inside the tissue; the threshold comes from
    `medidiff anomaly calibrate` unless --threshold is given; --fdr q makes a mask whose
    expected share of false voxels is at most q instead. The score, threshold (and FDR level)
    are also written next to the map as NAME.anomaly.json (read by `medidiff evaluate anomaly`).

    Example:  medidiff anomaly my-model patient.nii.gz map.nii.gz --mask mask.nii.gz --fdr 0.05

    Example (z-scores; calibrate with the same score first):
      medidiff anomaly calibrate my-model healthy/ --score zscore
      medidiff anomaly my-model patient.nii.gz map.nii.gz --score zscore
    """
    from medidiff.core.progress import run_to_end
    from medidiff.io import load_scan, save_scan
    from medidiff.io.anomaly_sidecar import sidecar_path, write_sidecar
    from medidiff.io.atomic import atomic_outputs, check_outputs
    from medidiff.model_store.registry import find_model

    opts = _options(method=method, timesteps=timesteps, recon=recon, ddim_steps=ddim_steps, patch_size=patch_size,
                    median_size=median_size, direction=direction, score=score, smooth_sigma=smooth_sigma, mirror=mirror, threshold=threshold, fdr=fdr,
                    fdr_method=fdr_method,
                    batch_size=batch_size, seed=seed, device=device)
    model = find_model(model)  # a folder, a built-in name or a user model name
    existing_path(input)
    inputs = [input, model]
    # refuse before the work, not after: clashes with an input or with each other
    check_outputs([out_map, sidecar_path(out_map), mask, report], overwrite=overwrite, inputs=inputs)
    from medidiff.tasks.anomaly.detect import detect_anomalies_steps, sidecar_info

    scan = load_scan(input)
    result = run_to_end(detect_anomalies_steps(model, scan, opts), show=True, desc="anomaly")
    # the map, its sidecar, the mask and the report appear together or not at all
    with atomic_outputs([out_map, sidecar_path(out_map), mask, report], overwrite, inputs) as staged:
        save_scan(result.map, staged[out_map], inputs=inputs)
        # written next to the staged map, which is the sidecar's staged path
        write_sidecar(sidecar_info(result, model=str(model), input=str(input), seed=seed), staged[out_map])
        if mask is not None:
            save_scan(result.mask, staged[mask], inputs=inputs)
        if report is not None:
            _report(scan.array, result, staged[report], False, scan)
    how = f"FDR {fdr:g} (Benjamini-Hochberg, {result.fdr['fdr_method']}) threshold" if result.fdr is not None else "threshold"
    typer.echo(f"score {result.score:.6g} (99th percentile of the map in tissue); {how} {result.threshold:.6g}; "
               f"anomalous volume {result.volume_mm3:.6g} mm3 ({int(result.mask.array.sum())} voxels)")
    o = result.options
    typer.echo(f"map: {o.get('score')}, noise times {', '.join(f'{t:g}' for t in o.get('timesteps', ()))}"
               + (f", Gaussian sigma {o['smooth_sigma']:g}" if o.get("smooth_sigma") else "")
               + (f", left-right mirror {o['mirror']:g}" if o.get("mirror") else ""))
    typer.echo(f"wrote {out_map}" + (f", {mask}" if mask else "") + (f", {report}" if report else ""))


def _report(image, result, path: Path, overwrite: bool, scan=None) -> None:
    import numpy as np

    from medidiff.reporting.figures import radiological, save_grid

    amap, msk = result.map.array, result.mask.array
    if amap.ndim == 3:
        z = int(np.argmax(amap.reshape(amap.shape[0], -1).sum(1)))
        image, amap, msk = image[z], amap[z], msk[z]
        where = f" (slice {z})"
    else:
        where = ""
    if scan is not None:  # as radiologists view it (MR, CT); other images as stored
        image, amap, msk = (radiological(a, scan.affine, scan.modality) for a in (image, amap, msk))
    amap = np.maximum(amap, 0)  # signed maps (z-scores, mirror dips): shown from 0 up, where lesions are
    save_grid([image, amap, image], path, titles=["scan" + where, "anomaly map", "mask > threshold"],
              cmaps=["gray", "magma", "gray"], overlays=[None, None, msk],
              suptitle=f"score {result.score:.4g}, threshold {result.threshold:.4g}", overwrite=overwrite)


@anomaly_app.command()
def calibrate(
    model: Path = typer.Argument(..., help="The model folder; the threshold is saved into its config.json."),
    healthy: Path = typer.Argument(..., metavar="HEALTHY_DIR", help="A folder (or file) of healthy scans not used in training."),
    percentile: float = typer.Option(99.0, "--percentile", help="Percentile of healthy tissue voxels' map values."),
    method: AnomalyMethod = METHOD,
    timesteps: str = TIMESTEPS,
    recon: Reconstruction = RECON,
    ddim_steps: int = DDIM_STEPS,
    patch_size: str = PATCH_SIZE,
    median_size: int = MEDIAN_SIZE,
    direction: Direction = DIRECTION,
    score: AnomalyScore = SCORE,
    smooth_sigma: float = SMOOTH_SIGMA,
    mirror: float = MIRROR,
    batch_size: int = BATCH_SIZE,
    device: str = DEVICE,
    seed: int = SEED,
) -> None:
    """Calibrate the "auto" threshold (and the healthy scores --fdr uses) on healthy scans; store them in the model folder.

    The threshold is the chosen percentile of the anomaly map over the tissue voxels of the
    healthy scans, so about (100 - percentile)% of healthy tissue is flagged. Detection with
    --threshold auto or --fdr then uses it (with the same method and options). Given none of
    --score, --median-size and --smooth-sigma, it calibrates the healthy z-score smoothed by a
    Gaussian (--score zscore --median-size 0, sigma 2, or 3 for models trained on windows of 64
    pixels or more: measured better than the residual in benchmarks/README.md); --score residual
    gives the plain residual map.

    Example:  medidiff anomaly calibrate my-model healthy/ --percentile 99

    Example (axial brain slices: compare each map with its left-right mirror image):
      medidiff anomaly calibrate my-model healthy/ --mirror 0.75
    """
    from medidiff.core.data import expand_inputs
    from medidiff.core.model import DiffusionModel
    from medidiff.core.progress import run_to_end
    from medidiff.errors import ModelError
    from medidiff.model_store.registry import BUILTIN_DIR, find_model
    from medidiff.tasks.anomaly.options import AnomalyOptionError

    opts = _options(method=method, timesteps=timesteps, recon=recon, ddim_steps=ddim_steps, patch_size=patch_size,
                    median_size=median_size, direction=direction, score=score, smooth_sigma=smooth_sigma, mirror=mirror, batch_size=batch_size, seed=seed, device=device)
    if not 0 < percentile < 100:
        raise AnomalyOptionError("percentile", f"must be between 0 and 100 (exclusive), got {percentile}")
    model = find_model(model)
    if BUILTIN_DIR.resolve() in Path(model).resolve().parents:
        raise ModelError(f"{model}: a built-in model is read-only; copy it first with "
                         f"`medidiff models import {Path(model).name} --name my-{Path(model).name}` and calibrate the copy")
    existing_path(healthy)
    from medidiff.tasks.anomaly.calibration import calibrate_threshold_steps

    m = DiffusionModel.load(model)
    scans = expand_inputs([healthy])
    thr = run_to_end(calibrate_threshold_steps(m, scans, percentile, opts), show=True, desc="calibrate")
    cal = m.config.anomaly
    typer.echo(f"threshold {thr:.6g} ({percentile:g}th percentile of {cal['n_voxels']} tissue voxels in {cal['n_scans']} "
               f"healthy scans, method {cal['method']}); saved to {model}/config.json")
