"""``medidiff denoise ... --fit``: the checks, the run and the report of fitting to the scan itself.

The task is :mod:`medidiff.tasks.fit`; this module only turns the command's options into its
arguments (refusing, in one line, options that do not apply to a fitted denoiser) and prints
what was done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer

from medidiff.errors import MedidiffError

__all__ = ["FitUsageError", "check_fit_options", "check_fit_save", "run_fit", "fit_report", "save_fitted"]


class FitUsageError(MedidiffError):
    """An option of ``medidiff denoise`` that does not go with ``--fit`` (or ``none`` without it)."""


def check_fit_options(fit: bool, model: str | None, method: str, ensemble: int, uncertainty: Path | None,
                      per_slice: bool, strength: float, minutes: float, steps: int,
                      interval: bool = False) -> dict[str, Any]:
    """One line for any option that does not apply; the task's fit keywords otherwise."""
    if not (np.isfinite(minutes) and 0 < minutes <= 24 * 60):
        raise FitUsageError(f"--fit-minutes must be > 0 and at most 1440, got {minutes:g}")
    if steps < 1:
        raise FitUsageError(f"--fit-steps must be >= 1, got {steps}")
    if not fit:
        if model is not None and model.lower() == "none":
            raise FitUsageError("MODEL 'none' means: train a new model on the scan itself; add --fit "
                                "(medidiff denoise none IN OUT --fit)")
        return {}
    clash = [name for name, bad in (("--method " + method, method != "tweedie"), (f"--ensemble {ensemble}", ensemble != 1),
                                    ("--uncertainty", uncertainty is not None), ("--per-slice", per_slice),
                                    (f"--strength {strength:g}", strength != 1.0),
                                    ("--interval/--coverage", interval)) if bad]
    if clash:
        raise FitUsageError(f"--fit denoises with its own estimator (consistent Tweedie); drop {', '.join(clash)}")
    return {"minutes": minutes, "max_steps": steps}


def check_fit_save(fit_save: Path | None, fit: bool, folder: bool) -> None:
    """``--fit-save`` needs ``--fit`` and one IN scan (one fitted model)."""
    if fit_save is None:
        return
    if not fit:
        raise FitUsageError(f"--fit-save {fit_save}: there is no fitted model to save without --fit")
    if folder:
        raise FitUsageError(f"--fit-save {fit_save}: IN is a folder, so each scan gets its own fit; "
                            "--fit-save takes one IN scan")


def save_fitted(result, folder: Path, overwrite: bool, shown_as: Path | None = None) -> None:
    """Write the fitted model as a model folder (usable as MODEL by every command); ``shown_as``: the name
    to print when ``folder`` is a staged temporary path."""
    from medidiff.core.model import default_model_card

    model = result.model
    card = default_model_card(model) + ("\nFitted by `medidiff denoise --fit` to one noisy scan (no clean data): "
                                        "a prior for scans like it, not a general-purpose model.\n")
    model.save(folder, overwrite=overwrite, model_card=card)
    typer.echo(f"saved the fitted model to {shown_as or folder}")


def run_fit(net, scan, path: Path, options: dict[str, Any], fit_options: dict[str, Any]):
    """Fit and denoise one scan with a progress bar; prints one line on what was fitted."""
    from medidiff.core.progress import run_to_end
    from medidiff.tasks.fit import fit_and_denoise_steps

    keep = {k: options[k] for k in ("noise", "sigma", "seed", "device", "self_check")}
    result = run_to_end(fit_and_denoise_steps(net, scan, **keep, **fit_options), show=True, desc=path.name)
    how = "stopped by --fit-minutes" if result.stopped_by_clock else "all --fit-steps"
    typer.echo(f"{path.name}: fitted {'a new model' if net is None else 'the model'} to the scan itself "
               f"({result.steps} steps, {result.seconds:.0f} s, {how}); noise model {result.noise_model} "
               f"({result.reason}); sigma {result.sigma:.4g} (scan units)")
    if result.self_check is not None:
        typer.echo(f"{path.name}: {result.self_check.line()}")
    return result


def fit_report(path: Path, scan, result) -> None:
    """PNG: input, fitted denoising, difference (middle slice of a volume)."""
    from medidiff.reporting.figures import save_grid

    def middle(a: np.ndarray) -> np.ndarray:
        return a[a.shape[0] // 2] if a.ndim == 3 else a

    noisy, clean = middle(scan.array), middle(result.scan.array)
    save_grid([noisy, clean, noisy - clean], path, titles=["input", f"fit ({result.noise_model})", "input - denoised"],
              cmaps=["gray", "gray", "coolwarm"], overwrite=True,
              suptitle=f"fitted to the scan: {result.steps} steps, sigma {result.sigma:.4g} (scan units)")
