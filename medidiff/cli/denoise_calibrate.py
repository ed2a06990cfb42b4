"""``medidiff denoise-calibrate MODEL SCANS...``: calibrate ``denoise --interval`` for a model.

Split conformal prediction (``medidiff.tasks.denoise_intervals``): simulated noise on clean,
training-like scans, quantiles of ``|x - x_hat| / u`` per noise level, stored in the model's
config.json.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medidiff.cli import app
from medidiff.cli.common import DEVICE, SEED, existing_path


@app.command("denoise-calibrate")
def denoise_calibrate(
    model: str = typer.Argument(..., metavar="MODEL", help="The model folder (or a user model's name); the calibration is saved into its config.json."),
    scans: list[Path] = typer.Argument(..., metavar="SCANS...", help="Clean scans like the training data (files or folders)."),
    levels: str = typer.Option("0.02,0.03,0.05,0.08,0.12,0.18,0.27,0.4,0.6", "--levels",
                               help="Simulated noise std in the model's normalised units (its range is about 2), comma-separated; "
                               "scans whose estimated noise lies outside the calibrated range are refused."),
    draws: int = typer.Option(1, "--draws", min=1, help="Noise draws per scan and level."),
    method: str = typer.Option("tweedie", "--method", help="The denoise method to calibrate (tweedie, ddim, posterior)."),
    ensemble: int = typer.Option(1, "--ensemble", help="The tweedie self-ensemble to calibrate (1, 4 or 8)."),
    noise: str = typer.Option("auto", "--noise", help="Noise model to simulate: auto (from the scans' modality), gaussian, rician, poisson-gaussian."),
    scale: str = typer.Option("texture", "--scale", help="Interval scale u: noise (one width per level), signal (Poisson-Gaussian: the noise at the "
                              "denoised value), texture (wider at structure), posterior (--method posterior) or sure (the scan's "
                              "SURE-estimated error: for models that memorised few training images)."),
    region_min: float = typer.Option(None, "--region-min", help="Calibrate (and state the coverage) only over voxels whose denoised value is at "
                                     "least this, in the model's normalised units (the scan spans about -1..1; -0.9 leaves out air and "
                                     "padding under -900 HU for a CT model). Default: all voxels."),
    device: str = DEVICE,
    seed: int = SEED,
) -> None:
    """Calibrate per-voxel denoising intervals (`medidiff denoise --interval LOW,HIGH --coverage C`) on clean scans.

    Example:  medidiff denoise-calibrate my-model training_scans/ --levels 0.03,0.06,0.12,0.25
              medidiff denoise-calibrate my-ct-model slices/ --scale sure --region-min -0.9
    """
    from medidiff.core.data import expand_inputs
    from medidiff.core.model import DiffusionModel
    from medidiff.core.progress import run_to_end
    from medidiff.errors import ModelError
    from medidiff.model_store.registry import BUILTIN_DIR, find_model
    from medidiff.tasks.denoise_calibration import calibrate_intervals_steps
    from medidiff.tasks.denoise_intervals import IntervalError

    try:
        values = [float(v) for v in levels.split(",") if v.strip()]
    except ValueError:
        raise IntervalError(f"--levels must be comma-separated numbers, got {levels!r}") from None
    folder = find_model(model)
    if BUILTIN_DIR.resolve() in Path(folder).resolve().parents:
        raise ModelError(f"{folder}: a built-in model is read-only (and already calibrated); copy it first with "
                         f"`medidiff models import {Path(folder).name} --name my-{Path(folder).name}`")
    for s in scans:
        existing_path(s)
    m = DiffusionModel.load(folder)
    cal = run_to_end(calibrate_intervals_steps(m, expand_inputs(list(scans)), levels=values, draws=draws, method=method,
                                               ensemble=ensemble, noise=noise, scale=scale, seed=seed, device=device,
                                               region_min=region_min),
                     show=True, desc="calibrate")
    region = "" if cal.region_min is None else f", voxels with a denoised value >= {cal.region_min:g}"
    typer.echo(f"intervals for {cal.method} x{cal.ensemble} ({cal.noise_model} noise, scale {cal.scale}{region}) at noise "
               f"levels {cal.levels[0]:.3g}-{cal.levels[-1]:.3g} (normalised units); saved to {folder}/config.json")
