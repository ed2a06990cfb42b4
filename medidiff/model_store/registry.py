"""Find models by name: built-in ones shipped inside the package, the user's model folder, or a path.

Every command that takes MODEL goes through :func:`resolve_model`, so ``mr2d`` (a built-in
name), ``my-model`` (a folder in the user's model directory) and ``./runs/x/model`` (a
path) all work the same way. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from medidiff.errors import ModelError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"


def user_model_dir() -> Path:
    """Where user models live: ``$MEDIDIFF_MODELS`` or the platform's user data folder."""
    env = os.environ.get("MEDIDIFF_MODELS")
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_data_dir

        return Path(user_data_dir("medidiff")) / "models"
    except ImportError:  # platformdirs comes with most installs; fall back to ~/.medidiff
        return Path.home() / ".medidiff" / "models"


@dataclass(frozen=True)
class ModelEntry:
    """A model that can be named on the command line."""

    name: str
    path: Path
    source: str  # "built-in" or "user"
    modality: str
    spatial_dims: int
    image_size: tuple[int, ...]
    summary: str


def check_name(name: str) -> str:
    """A model name as given to ``--name``: a plain folder name, never a path (``ModelError`` otherwise)."""
    text = str(name)
    bad = (not text.strip() or text in (".", "..") or "/" in text or "\\" in text or os.sep in text
           or (os.altsep and os.altsep in text) or text.startswith((".", "~")) or "\0" in text
           or Path(text).is_absolute() or len(text) > 128)
    if bad:
        raise ModelError(f"--name {text!r}: a model name is a plain name (letters, digits, '-', '_'), "
                         "not a path; it must not contain '/', '\\' or '..' or start with '.' or '~'")
    return text


def _entry(folder: Path, source: str) -> ModelEntry | None:
    """The entry for a model folder; None if it is not one; ``ModelError`` if it is a broken one."""
    from medidiff.core.config_check import check_config, check_format_version

    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        raw = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg}: not readable JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{cfg}: expected a JSON object")
    check_format_version(raw, cfg)
    check_config(raw, cfg)
    card = folder / "MODEL_CARD.md"
    summary = ""
    if card.is_file():
        try:
            lines = [ln.strip("# ").strip() for ln in card.read_text().splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError):
            lines = []
        summary = lines[0] if lines else ""
    return ModelEntry(folder.name, folder, source, str(raw.get("modality", "")), int(raw["spatial_dims"]),
                      tuple(raw["image_size"]), summary)


def list_models(warn: bool = True) -> list[ModelEntry]:
    """Built-in models first, then the user's, each sorted by name.

    A broken model folder (damaged or nonsensical config.json) is skipped with a one-line
    warning, so one bad folder never hides the others.
    """
    found: list[ModelEntry] = []
    names: set[str] = set()
    for root, source in ((BUILTIN_DIR, "built-in"), (user_model_dir(), "user")):
        try:
            folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        except OSError as exc:
            if warn:
                warnings.warn(f"{root}: cannot list the model folder ({exc.strerror}); skipped", stacklevel=2)
            continue
        for folder in folders:
            try:
                entry = _entry(folder, source)
            except ModelError as exc:
                if warn:
                    warnings.warn(f"skipped a broken model: {exc}", stacklevel=2)
                continue
            if entry is None:
                continue
            if entry.name in names:  # a user folder named like a built-in one cannot be named
                if warn:
                    warnings.warn(f"{folder}: has the name of a built-in model ({entry.name}), which takes precedence; "
                                  "rename it or give its path", stacklevel=2)
                continue
            names.add(entry.name)
            found.append(entry)
    return found


def is_explicit_path(spec: str | Path) -> bool:
    """True for a ``Path`` or a string that can only be a path (a separator, or a leading ``.``/``~``)."""
    if isinstance(spec, Path):
        return True
    text = str(spec)
    return "/" in text or os.sep in text or (os.altsep is not None and os.altsep in text) or text.startswith((".", "~"))


def find_model(spec: str | Path) -> Path:
    """The folder for a model name or path; ``ModelError`` listing the known names if none fits.

    A bare name (``mr2d``) means the built-in or user model of that name even when the working
    folder holds a folder called ``mr2d``: write ``./mr2d`` (or pass a ``Path``) for the folder.
    A bare name that is no model name falls back to a folder of that name.
    """
    path = Path(spec).expanduser()
    if is_explicit_path(spec):
        if path.exists():
            return path
        raise ModelError(f"{spec}: no such model folder")
    entries = list_models()
    for entry in entries:
        if entry.name == str(spec):
            if path.exists():
                warnings.warn(f"{spec}: using the {entry.source} model {entry.name} ({entry.path}), not the folder "
                              f"{spec} here; write ./{spec} for the folder", stacklevel=2)
            return entry.path
    if path.exists():
        return path
    names = ", ".join(e.name for e in entries) or "none installed"
    raise ModelError(f"{spec}: no such model folder or model name (known models: {names}; see `medidiff models`)")


def resolve_model(spec, device: str = "cpu"):
    """Load a model given a ``DiffusionModel``, a built-in or user model name, or a folder path.

    A loaded model already on ``device`` is used as it is; one on another device is copied there,
    so the caller's model never moves behind its back.
    """
    import copy

    from medidiff.core.devices import resolve_device
    from medidiff.core.model import DiffusionModel

    if isinstance(spec, DiffusionModel):
        _refuse_super_resolution(spec, spec.path or "model")
        want, have = resolve_device(device), spec.device
        if want.type == have.type and (want.index is None or have.index is None or want.index == have.index):
            return spec
        clone = copy.deepcopy(spec)
        clone.path = spec.path
        return clone.to(want)
    from medidiff.core.latent_model import is_latent_model

    folder = find_model(spec)
    if is_latent_model(folder):
        # its inner model would load, but it works on latents: images from it would be garbage
        raise ModelError(f"{folder}: a latent diffusion model; generate with `medidiff latent generate` "
                         "(denoising, anomaly detection and `medidiff generate` need a pixel-space model)")
    model = DiffusionModel.load(folder, device=device)
    _refuse_super_resolution(model, folder)
    return model


def _refuse_super_resolution(model, where) -> None:
    """A super-resolution model only upsamples: every other task would call it without its condition."""
    f = model.config.lowres_factor
    if f:
        raise ModelError(f"{where}: a x{f} super-resolution model; it only upsamples images "
                         "(medidiff.tasks.super_resolution.upsample): denoising, anomaly detection and "
                         "generation need an ordinary model")


def default_model_for(modality: str, spatial_dims: int = 2) -> str | None:
    """The built-in model that fits a modality unambiguously (e.g. MR -> ``mr2d``), or None."""
    modality = (modality or "").upper()
    matches = [e for e in list_models() if e.source == "built-in" and e.spatial_dims == spatial_dims
               and e.modality.upper() == modality]
    return matches[0].name if len(matches) == 1 else None


def import_model(src: str | Path, name: str | None = None, *, image_size: tuple[int, ...] | None = None,
                 low: float | None = None, high: float | None = None, modality: str = "OT",
                 overwrite: bool = False) -> Path:
    """Copy a medidiff model folder, or convert a MONAI bundle, into the user model folder.

    For a bundle, ``image_size`` and the intensity range ``low``/``high`` (scan units that
    the network saw as -1 and 1) must be given: bundles do not record them uniformly.
    """
    from medidiff.core.intensity import Normaliser
    from medidiff.core.model import DiffusionModel

    src = find_model(src)
    if not src.is_dir():
        raise ModelError(f"{src}: not a folder (expected a medidiff model folder or a MONAI bundle)")
    name = check_name(name if name is not None else src.resolve().name)
    if (BUILTIN_DIR / name / "config.json").is_file():
        raise ModelError(f"--name {name!r}: that is the name of a built-in model; choose another name")
    dest = user_model_dir() / name
    if (src / "config.json").is_file():
        model = DiffusionModel.load(src)  # checks format and hash before copying
        card = (src / "MODEL_CARD.md").read_text() if (src / "MODEL_CARD.md").is_file() else None
    else:
        from medidiff.model_store.bundle import convert_bundle

        if image_size is None or low is None or high is None:
            raise ModelError(f"{src}: converting a MONAI bundle needs --image-size, --low and --high "
                             "(the training size and the intensity range mapped to [-1, 1])")
        model = convert_bundle(src, image_size, Normaliser(low, high, kind="given"), modality=modality)
        card = None
    return model.save(dest, overwrite=overwrite, model_card=card)
