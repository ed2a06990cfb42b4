"""``medidiff models``: list, show and import models (built-in, user folder, MONAI bundles)."""

from __future__ import annotations

from pathlib import Path

import typer

from medidiff.cli import app
from medidiff.cli.common import OVERWRITE

models_app = typer.Typer(
    help="List the models you can name on the command line, show their cards, import more.\n\n"
    "Examples:\n\n  medidiff models\n\n  medidiff models show mr2d\n\n"
    "  medidiff models import runs/brain/model --name brain\n\n"
    "  medidiff models import my_monai_bundle/ --name ddpm64 --image-size 64,64 --low 0 --high 1",
    invoke_without_command=True,
)
app.add_typer(models_app, name="models")


@models_app.callback()
def _list(ctx: typer.Context) -> None:
    """List built-in models and those in your model folder ($MEDIDIFF_MODELS)."""
    if ctx.invoked_subcommand is not None:
        return
    from medidiff.cli.info import warnings_as_lines
    from medidiff.model_store.registry import list_models, user_model_dir

    with warnings_as_lines():
        entries = list_models()
    if not entries:
        typer.echo("no models found")
    for e in entries:
        size = "x".join(str(s) for s in e.image_size)
        typer.echo(f"{e.name:<16} {e.source:<9} {e.spatial_dims}D {e.modality:<11} {size:<9} {e.summary}")
    typer.echo(f"\nuser model folder: {user_model_dir()}")


@models_app.command("show")
def show(name: str = typer.Argument(..., help="A model name or folder.")) -> None:
    """Print a model's card and check its weights (hash and load).

    Example:  medidiff models show mr2d
    """
    from medidiff.cli.info import warnings_as_lines
    from medidiff.core.model import DiffusionModel
    from medidiff.model_store.registry import find_model

    with warnings_as_lines():
        folder = find_model(name)
    model = DiffusionModel.load(folder)  # checks the config's values, the weights' hash and shapes
    card = folder / "MODEL_CARD.md"
    typer.echo(card.read_text() if card.is_file() else "(no model card)")
    typer.echo(f"folder: {folder}\nparameters: {model.num_parameters():,}  config: checked  weights: sha256 verified")


@models_app.command("import")
def import_(
    src: Path = typer.Argument(..., help="A medidiff model folder or a MONAI bundle folder."),
    name: str = typer.Option(None, "--name", help="Name to use on the command line (default: the folder name)."),
    image_size: str = typer.Option(None, "--image-size", help="Bundle only: training size, e.g. 64,64."),
    low: float = typer.Option(None, "--low", help="Bundle only: scan intensity the network saw as -1."),
    high: float = typer.Option(None, "--high", help="Bundle only: scan intensity the network saw as +1."),
    modality: str = typer.Option("OT", "--modality", help="Bundle only: MR, CT, microscopy, ..."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Copy a model (or convert a MONAI bundle) into your model folder.

    Example:  medidiff models import runs/brain/model --name brain
    """
    from medidiff.model_store.registry import import_model

    size = None
    if image_size:
        try:
            size = tuple(int(s) for s in image_size.split(","))
        except ValueError:
            size = ()
        if not size or len(size) not in (2, 3) or min(size) < 1:
            from medidiff.errors import MedidiffError

            raise MedidiffError(f"--image-size {image_size!r}: give 2 or 3 whole numbers >= 1, e.g. 64,64")
    dest = import_model(src, name, image_size=size, low=low, high=high, modality=modality, overwrite=overwrite)
    typer.echo(f"imported {src} as {dest.name} ({dest})")
