"""Find models by name: built-in ones shipped inside the package, the user's model folder, or a path.

Every command that takes MODEL goes through :func:`resolve_model`, so ``mr2d`` (a built-in
name), ``my-model`` (a folder in the user's model directory) and ``./runs/x/model`` (a
path) all work the same way. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
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


def _entry(folder: Path, source: str) -> ModelEntry | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        raw = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    card = folder / "MODEL_CARD.md"
    summary = ""
    if card.is_file():
        lines = [ln.strip("# ").strip() for ln in card.read_text().splitlines() if ln.strip()]
        summary = lines[0] if lines else ""
    return ModelEntry(folder.name, folder, source, str(raw.get("modality", "")), int(raw.get("spatial_dims", 0)),
                      tuple(raw.get("image_size", ())), summary)


def list_models() -> list[ModelEntry]:
    """Built-in models first, then the user's, each sorted by name."""
    found: list[ModelEntry] = []
    for root, source in ((BUILTIN_DIR, "built-in"), (user_model_dir(), "user")):
        if root.is_dir():
            for folder in sorted(p for p in root.iterdir() if p.is_dir()):
                entry = _entry(folder, source)
                if entry is not None:
                    found.append(entry)
    return found


def find_model(spec: str | Path) -> Path:
    """The folder for a model name or path; ``ModelError`` listing the known names if none fits."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    for entry in list_models():
        if entry.name == str(spec):
            return entry.path
    names = ", ".join(e.name for e in list_models()) or "none installed"
    raise ModelError(f"{spec}: no such model folder or model name (known models: {names}; see `medidiff models`)")


def resolve_model(spec, device: str = "cpu"):
    """Load a model given a ``DiffusionModel``, a built-in or user model name, or a folder path."""
    from medidiff.core.model import DiffusionModel

    if isinstance(spec, DiffusionModel):
        return spec.to(device)
    return DiffusionModel.load(find_model(spec), device=device)


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
    dest = user_model_dir() / (name or src.name)
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
