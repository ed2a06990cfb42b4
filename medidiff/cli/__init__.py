"""The ``medidiff`` command line (typer). One module per command; this file wires them up.

Bad input (any ``MedidiffError``) becomes one line on stderr and exit code 2: no
traceback reaches the user for a problem they can fix.
"""

from __future__ import annotations

import sys

import typer

from medidiff.version import __version__
from medidiff.errors import MedidiffError

app = typer.Typer(
    name="medidiff",
    help="Diffusion models for real scans: denoise, generate synthetic data, detect anomalies.\n\n"
    "Example:  medidiff info scan.nii.gz",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medidiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Diffusion models for real scans: denoise, generate synthetic data, detect anomalies."""


def _register() -> None:
    from medidiff.cli.common import import_commands

    # each command module adds itself to ``app`` on import; keep this list in CLI order
    import_commands("medidiff.cli", ("info", "convert", "train", "generate", "denoise", "anomaly",
                                     "evaluate", "models", "demo"))


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``medidiff`` script."""
    try:
        app(args=argv, prog_name="medidiff", standalone_mode=True)
    except MedidiffError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
