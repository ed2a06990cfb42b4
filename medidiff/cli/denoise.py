"""``medidiff denoise [MODEL] IN OUT``: diffusion-prior denoising of a scan or a folder of scans.

The positional forms (``MODEL IN OUT``, ``IN OUT``, ``IN OUT --model M``) are read by
:mod:`medidiff.cli.denoise_args`, which answers every misread form with one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from medidiff.cli import app
from medidiff.cli.common import DEVICE, OVERWRITE, SEED, existing_path


def _describe(values, unit: str) -> str:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.size == 1 or np.all(arr == arr[0]):
        return f"{arr[0]:.4g}{unit}"
    return f"{arr.min():.4g}-{arr.max():.4g}{unit} (per slice)"


def _middle(array: np.ndarray) -> np.ndarray:
    return array[array.shape[0] // 2] if array.ndim == 3 else array


def _report(path: Path, scan, result) -> None:
    from medidiff.reporting.figures import radiological, save_grid

    def shown(array: np.ndarray) -> np.ndarray:  # the middle slice, as radiologists view it (MR, CT)
        return radiological(_middle(array), scan.affine, scan.modality)

    noisy, clean = shown(scan.array), shown(result.scan.array)
    images = [noisy, clean, noisy - clean]
    titles = ["input", f"denoised ({result.noise_model})", "input - denoised"]
    cmaps = ["gray", "gray", "coolwarm"]
    if result.uncertainty is not None:
        images.append(shown(result.uncertainty.array))
        titles.append("uncertainty (posterior std)")
        cmaps.append("magma")
    t = _describe(result.timestep, "")
    check = f"; {result.self_check.line()}" if result.self_check is not None else ""
    save_grid(images, path, titles=titles, cmaps=cmaps,
              suptitle=f"sigma {_describe(result.sigma, '')} (scan units), t = {t}{check}")


def _with_modality(scan, modality: str | None, path: Path):
    """``scan`` with the user's ``--modality`` where the file records none; a contradiction is an error."""
    if not modality:
        return scan
    recorded = (scan.modality or "OT").upper()
    if recorded not in ("OT", "") and recorded != modality.upper():
        from medidiff.errors import ScanError

        raise ScanError(path, f"records modality {scan.modality}, not {modality}; leave out --modality")
    return scan.with_array(scan.array, modality=modality)


def _default_model(path: Path, fit: bool = False, given: str | None = None) -> str:
    """The built-in model that fits the scan's modality (with ``fit``: else ``"none"``), or a clear error."""
    from medidiff.errors import ModelError
    from medidiff.io import load_scan
    from medidiff.model_store.registry import default_model_for

    modality = _with_modality(load_scan(path), given, path).modality
    name = default_model_for(modality)
    if name is None and fit:
        typer.echo(f"no built-in model for modality {modality}: --fit trains a new one on the scan")
        return "none"
    if name is None:
        raise ModelError(f"{path}: no built-in model fits modality {modality!r}; name a model: "
                         "medidiff denoise MODEL IN OUT (see `medidiff models`)")
    # built-ins gain little on scans unlike their training data (benchmarks/README.md: foreign scans)
    typer.echo(f"using built-in model {name} for modality {modality} (trained on few images: for scans "
               "unlike its model card's, --fit trains on the scan itself)")
    return name


def _inputs(src: Path) -> tuple[list[Path], bool]:
    """The scans to denoise and whether ``src`` is a folder of scans (not one DICOM series)."""
    from medidiff.core.data import is_dicom_series_folder, scan_paths

    if src.is_dir() and not is_dicom_series_folder(src):
        return scan_paths([src]), True
    return [src], False


@app.command()
def denoise(
    first: str = typer.Argument(None, metavar="MODEL", show_default=False,
                                help="Model folder or name (see `medidiff models`). Leave it out to use the built-in "
                                "model for the scan's modality (e.g. mr2d for MR), or give it with --model."),
    second: str = typer.Argument(None, metavar="IN", show_default=False,
                                 help="Noisy scan (NIfTI, DICOM file/series, TIFF, PNG) or a folder of scans."),
    third: str = typer.Argument(None, metavar="OUT", show_default=False,
                                help="Output scan (format from the extension), or a folder when IN is a folder."),
    model_option: str = typer.Option(None, "--model", help="The model, when the positional arguments are IN OUT."),
    modality: str = typer.Option(None, "--modality", help="The scan's modality (MR, CT, microscopy, ...) for files that "
                                 "do not record it (NIfTI, TIFF, PNG): picks the built-in model and the noise model."),
    noise: str = typer.Option("auto", "--noise", help="auto (from the modality), gaussian, rician or poisson-gaussian."),
    sigma: float = typer.Option(None, "--sigma", min=0.0, help="Noise std in scan units (default: estimated)."),
    strength: float = typer.Option(1.0, "--strength", min=0.0, help="Scale the noise level: > 1 smooths more, < 1 less."),
    method: str = typer.Option("tweedie", "--method", help="tweedie (one step), ddim (--steps) or posterior (--samples, gives uncertainty)."),
    steps: int = typer.Option(5, "--steps", min=1, help="Sampler steps for ddim and posterior."),
    samples: int = typer.Option(8, "--samples", min=2, help="Posterior samples (K)."),
    per_slice: bool = typer.Option(False, "--per-slice", help="Estimate the noise level slice by slice."),
    ensemble: int = typer.Option(1, "--ensemble", help="Tweedie self-ensemble: 1, 4 (flips) or 8 (flips and rotations, square pixels)."),
    uncertainty: Path = typer.Option(None, "--uncertainty", help="Write the per-voxel posterior std here (implies --method posterior)."),
    interval: str = typer.Option(None, "--interval", metavar="LOW,HIGH", help="Write per-voxel interval bounds (scan units) to these two files, folders for a folder IN, e.g. low.nii.gz,high.nii.gz; the clean value lies inside with probability --coverage (split conformal, calibrated by `medidiff denoise-calibrate`; built-ins are calibrated)."),
    coverage: float = typer.Option(None, "--coverage", help="Nominal coverage of --interval, 0.5-0.99 (default 0.9)."),
    report: Path = typer.Option(None, "--report", help="PNG: input, output, difference, uncertainty (a folder of PNGs for a folder IN)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Slices per network call."),
    fit: bool = typer.Option(False, "--fit", help="Train on the noisy scan itself first (no clean data needed): "
                             "fine-tunes MODEL, or a new network when MODEL is 'none'."),
    fit_minutes: float = typer.Option(2.0, "--fit-minutes", help="Wall-clock budget of --fit training, in minutes "
                                      "(denoising afterwards takes 8 network passes more)."),
    fit_steps: int = typer.Option(100_000, "--fit-steps", help="At most this many --fit training steps "
                                  "(reproducible results for a seed when it stops training before the clock)."),
    fit_save: Path = typer.Option(None, "--fit-save", help="Also save the model fitted by --fit here (a model "
                                  "folder; one IN scan only)."),
    no_self_check: bool = typer.Option(False, "--no-self-check", help="Skip the self-check, which estimates the "
                                       "gain without clean data (SURE), writes it to OUT's sidecar (clean.denoise.json) "
                                       "and warns when the model is unlikely to help the scan; it costs one more network pass for tweedie (x --ensemble), two "
                                       "tweedie passes for ddim and posterior, one more pass of the estimator for --fit)."),
    device: str = DEVICE,
    seed: int = SEED,
    overwrite: bool = OVERWRITE,
) -> None:
    """Denoise scans with a diffusion model as the prior (noise estimated, noise model from the modality).

    Example:  medidiff denoise mr2d noisy.nii.gz clean.nii.gz --report report.png

    More examples:

      medidiff denoise noisy_mr.nii.gz clean.nii.gz        (built-in model chosen from the modality)

      medidiff denoise noisy_mr.nii.gz clean.nii.gz --model mr2d --ensemble 4

      medidiff denoise my-model scans/ denoised/ --method posterior --uncertainty sd/

      medidiff denoise mr2d noisy.nii.gz clean.nii.gz --interval low.nii.gz,high.nii.gz --coverage 0.9

      medidiff denoise none noisy_cells.tif clean.tif --fit --fit-minutes 2   (no clean data: fit to the scan)
    """
    from medidiff.core.devices import resolve_device
    from medidiff.io import load_scan, save_scan
    from medidiff.io.atomic import atomic_outputs, check_outputs
    from medidiff.core.progress import run_to_end
    from medidiff.model_store.registry import resolve_model
    from medidiff.tasks.denoise import ENSEMBLE_SIZES, METHODS, NOISE_CHOICES, denoise_steps

    if method not in METHODS:
        raise typer.BadParameter(f"{method!r}; choose one of {', '.join(METHODS)}", param_hint="--method")
    if noise not in NOISE_CHOICES:
        raise typer.BadParameter(f"{noise!r}; choose one of {', '.join(NOISE_CHOICES)}", param_hint="--noise")
    if strength <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--strength")
    if ensemble not in ENSEMBLE_SIZES:
        raise typer.BadParameter(f"{ensemble}; choose one of {', '.join(map(str, ENSEMBLE_SIZES))}", param_hint="--ensemble")
    from medidiff.cli.denoise_args import read_arguments
    from medidiff.cli.denoise_fit import check_fit_options, check_fit_save, fit_report, run_fit, save_fitted

    if uncertainty is not None:
        method = "posterior"
    bounds = None
    if interval is not None or coverage is not None:
        from medidiff.tasks.denoise_intervals import parse_interval_option

        (low_path, high_path), coverage = parse_interval_option(interval, coverage)
        bounds = (Path(low_path), Path(high_path))
    args = read_arguments(first, second, third, model_option)
    model, src, dst = args.model, args.src, args.dst
    fit_options = check_fit_options(fit, model, method, ensemble, uncertainty, per_slice, strength, fit_minutes,
                                    fit_steps, interval=bounds is not None)
    existing_path(src)
    paths, folder = _inputs(src)
    check_fit_save(fit_save, fit, folder)
    if model is None:
        model = _default_model(paths[0], fit, modality)
    from medidiff.cli.denoise_sidecar import sidecar_info, sidecar_path, write_sidecar

    # the self-check's sidecar next to a single output (inside OUT for a folder IN)
    sidecar = sidecar_path(dst) if not (fit or no_self_check or folder) else None
    # refuse bad outputs before any compute
    check_outputs([dst, sidecar, uncertainty, report, fit_save, *(bounds or ())], overwrite=overwrite, inputs=[src])

    net = None if fit and model.lower() == "none" else resolve_model(model, device=str(resolve_device(device)))
    options = dict(method=method, noise=noise, sigma=sigma, strength=strength, steps=steps, samples=samples,
                   per_slice=per_slice, ensemble=ensemble, batch_size=batch_size, seed=seed, device=device,
                   coverage=coverage if bounds else None, self_check=not no_self_check)
    # every output (files, or folders for a folder IN) is staged and moved in together at the end
    folders = [dst, uncertainty, report, *(bounds or ())] if folder else []
    with atomic_outputs([dst, sidecar, uncertainty, *(bounds or ()), fit_save, report], overwrite, [src],
                        folders=folders) as staged:
        for path in paths:
            scan = _with_modality(load_scan(path), modality, path)
            unit = f" {scan.meta['unit']}" if scan.meta.get("unit") and scan.meta.get("unit") not in ("mm", "pixel") else ""
            if fit:
                result = run_fit(net, scan, path, options, fit_options)
            else:
                result = run_to_end(denoise_steps(net, scan, **options), show=True, desc=path.name)
                typer.echo(f"{path.name}: noise model {result.noise_model} ({result.reason}); "
                           f"sigma {_describe(result.sigma, unit)} (scan units); timestep {_describe(result.timestep, '')}")
                if result.self_check is not None:
                    typer.echo(f"{path.name}: {result.self_check.line()}")

            def target(out: Path) -> Path:  # where this scan's output goes in the staged file or folder
                return staged[out] / path.name if folder else staged[out]

            save_scan(result.scan, target(dst), inputs=[src, path], source=scan)
            if not fit and getattr(result, "self_check", None) is not None:  # staged next to the output
                write_sidecar(sidecar_info(result, model=str(model), source=str(path), method=method), target(dst))
            if uncertainty is not None and result.uncertainty is not None:
                save_scan(result.uncertainty, target(uncertainty), inputs=[src, path], source=scan)
            if bounds and result.interval is not None:
                for b, part in zip(bounds, result.interval):
                    save_scan(part, target(b), inputs=[src, path], source=scan)
            if fit_save is not None:
                save_fitted(result, staged[fit_save], False, shown_as=fit_save)
            if report is not None:
                stem = path.name.split(".")[0] or path.name
                (fit_report if fit else _report)(staged[report] / f"{stem}.png" if folder else staged[report], scan, result)
    for path in paths:
        typer.echo(f"wrote {dst / path.name if folder else dst}")
