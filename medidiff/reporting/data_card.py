"""``DATA_CARD.md`` of a generated data set, from ``medidiff/templates/generated_data_card.md``.

The card carries the model's provenance through: the training data's own card and licence as
recorded in the model (``config.json`` ``training.data_card`` / ``training.licence``), the training
files as recorded there (relative to their data folder, see :mod:`medidiff.tasks.run_folder`).
It names the model by its name and weights hash, never by a path on this machine: a data set is
made to be shared, and a path names someone's folders (often a patient or study ID).

A latent model (a prior plus an autoencoder) gets the same card: the prior's schedule and
training record, the autoencoder's pixel geometry and units, and a line naming both.
"""

from __future__ import annotations

import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FORMAT_SUFFIX = {"nifti": ".nii.gz", "dicom": ".dcm", "tiff": ".tif", "png": ".png"}
NOT_RECORDED = "not recorded in the model"

_FORMAT_NOTES = {
    "nifti": ("NIfTI, float32", "NIfTI files hold the generated float32 values exactly."),
    "tiff": ("OME-TIFF, float32", "TIFF files hold the values exactly; their sha256 differs between runs (the writer stamps a date), "
             "`pixel_sha256` does not."),
    "png": ("16-bit PNG, values scaled to 0..65535 per image and undone by medidiff on reading",
            "PNG stores 16-bit codes per image: values are quantised (lossy) and other readers see codes, not scan units."),
    "dicom": ("DICOM, marked SYNTHETIC in SeriesDescription, ImageType DERIVED, fresh patient and study identifiers",
              "DICOM stores int16 with a rescale slope (quantised); files carry fresh UIDs and dates, so their sha256 "
              "differs between runs while `pixel_sha256` does not."),
}


def default_command() -> str:
    """The command line of this process, for data cards."""
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])


def model_label(model: Any) -> str:
    """How a card names a model: built-in or folder name plus the weights' hash, never a path."""
    path = Path(model.path) if model.path else None
    if path is None:
        return "an in-memory model (not saved)"
    sha = ""
    try:
        import json

        sha = str(json.loads((path / "config.json").read_text()).get("weights_sha256", ""))[:16]
    except (OSError, ValueError):
        pass
    digest = f", weights sha256 {sha}..." if sha else ""
    try:
        builtin = path.resolve().parent == (Path(__file__).resolve().parent.parent / "builtin")
    except OSError:
        builtin = False
    if builtin:
        return f"the built-in model `{path.name}` of medidiff{digest}"
    name = path.name if path.name != "model" else f"{path.parent.name}/model"
    return f"the model `{name}`{digest}"


def training_provenance(config: Any) -> dict[str, str]:
    """Sources, data card and licence of a model's training data, as recorded in the model."""
    tr = dict(getattr(config, "training", None) or {})
    # a model may record full paths (older models, or trained with --full-paths): a card names files only
    sources = [Path(str(s)).name if Path(str(s)).is_absolute() else str(s) for s in tr.get("sources") or []]
    return {
        "training_sources": ", ".join(str(s) for s in sources) or NOT_RECORDED,
        "training_card": str(tr.get("data_card") or NOT_RECORDED),
        "training_licence": str(tr.get("licence") or f"{NOT_RECORDED}: ask the model's author before sharing this data set"),
        "training_summary": ", ".join(f"{k}={tr[k]}" for k in ("steps", "batch_size", "training_images", "final_loss")
                                      if k in tr) or "not recorded",
    }


def _geometry(model: Any, rows: Sequence[dict[str, str]]) -> tuple[Any, Any, str]:
    """(pixel config, prior config, extra summary) of a pixel or latent model; sizes from the manifest."""
    prior = getattr(model, "prior", None)
    if prior is None:
        return model.config, model.config, ""
    ae = model.autoencoder
    summary = (f"; latent diffusion: this prior samples {'x'.join(map(str, prior.config.image_size))} latents of a "
               f"{ae.factor}x-per-axis KL autoencoder ({ae.num_parameters():,} parameters), latent scale factor "
               f"{model.scale_factor:.6g} stored in latent.json{_latent_field(rows)}")
    return ae.config, prior.config, summary


def _option(rows: Sequence[dict[str, str]], key: str) -> str | None:
    """The value of ``key=`` in the first manifest row's ``options`` (``None`` where not recorded)."""
    from medidiff.io.manifest import option_parts

    return option_parts((rows[0] if rows else {}).get("options")).get(key)


def _latent_field(rows: Sequence[dict[str, str]]) -> str:
    """How the samples' latents were made: whole (one piece) or in overlapping prior windows."""
    field = _option(rows, "latent_field")
    if field == "whole":
        return "; each latent sampled whole, in one piece"
    if field == "windows":
        return (f"; each latent sampled in overlapping prior windows of {_option(rows, 'latent_window') or '?'} "
                f"(overlap {_option(rows, 'overlap') or '?'}) because the whole latent did not fit")
    return ""


def _sample_size(rows: Sequence[dict[str, str]], default: Sequence[int]) -> tuple[int, ...]:
    """The samples' size: the manifest's ``size=`` option where recorded, else the model's field."""
    size = _option(rows, "size")
    return tuple(int(v) for v in size.split("x")) if size else tuple(int(v) for v in default)


def write_data_card(out_dir: Path, rows: Sequence[dict[str, str]], *, model: Any, format: str,
                    command: str | None, quality: Any = None, seed: int | None = None) -> Path:
    """Write ``DIR/DATA_CARD.md`` (atomically) for the manifest ``rows`` of a generated set."""
    from importlib.resources import files
    from string import Template

    from medidiff.io.atomic import atomic_file
    from medidiff.version import __version__

    cfg, prior_cfg, latent_summary = _geometry(model, rows)
    default_size = model.field_size if getattr(model, "prior", None) is not None else cfg.image_size
    size = _sample_size(rows, default_size)
    counts = Counter(r["condition"] for r in rows)
    first = rows[0] if rows else {}
    suffix = FORMAT_SUFFIX[format] if not (format == "dicom" and cfg.spatial_dims == 3) else "/ (a DICOM series folder)"
    norm = cfg.normaliser
    label = model_label(model)
    short = Path(str(model.path)).name if model.path else "medidiff"
    values = {
        "name": f"synthetic-{short}-{out_dir.name}".lower().replace(" ", "-"),
        "version": __version__,
        "model_path": label,
        "model_summary": f"{prior_cfg.spatial_dims}D, preset {prior_cfg.preset}, {prior_cfg.schedule.get('kind')} "
                         f"({prior_cfg.schedule.get('prediction')}), classes {prior_cfg.class_names or prior_cfg.num_classes or 'none'}, "
                         f"mask classes {prior_cfg.mask_classes or 'none'}{latent_summary}",
        **training_provenance(prior_cfg),
        "modality": cfg.modality,
        "n": len(rows),
        "size": f"{len(rows)} images of {size} voxels ({format})",
        "suffix": suffix,
        "format_note": _FORMAT_NOTES[format][0],
        "format_limit": _FORMAT_NOTES[format][1],
        "mask_note": "; `masks/sample_NNNNN...` holds the label map each image was conditioned on" if any(
            r["condition"].startswith("mask:") for r in rows) else "",
        "units": f"the normaliser maps [{norm['low']:.4g}, {norm['high']:.4g}] to the network's [-1, 1]",
        "shape": " x ".join(str(s) for s in size),
        "spacing": " x ".join(f"{s:g}" for s in (cfg.spacing or ())) or "1 (not recorded)",
        "orientation": cfg.orientation or "RAS (not recorded)",
        "counts": "| condition | images |\n|---|---|\n" + "\n".join(f"| {c} | {k} |" for c, k in sorted(counts.items())),
        "sampler": first.get("sampler", ""),
        "steps": first.get("steps", ""),
        "guidance": first.get("guidance", ""),
        "seed": str(seed) if seed is not None else "(see manifest.csv)",
        "command": command or default_command(),
        "quality": quality.to_markdown() if quality is not None else
        "## Quality\n\nNo quality report: run with `--real REAL_DIR` (and `--training TRAIN_DIR`) to add fidelity, diversity and memorisation numbers.",
    }
    text = Template(files("medidiff").joinpath("templates/generated_data_card.md").read_text()).safe_substitute(values)
    path = out_dir / "DATA_CARD.md"
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(text)
    return path
