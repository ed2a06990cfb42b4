"""Small helpers shared by the CLI commands (error reporting stays in ``cli/__init__``)."""

from __future__ import annotations

from pathlib import Path

import typer

OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output (never an input).")
DEVICE = typer.Option("auto", "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps.")
SEED = typer.Option(0, "--seed", min=0, max=2**63 - 1,
                    help="Random seed (a whole number >= 0); the same seed gives the same result.")


def existing_path(path: Path) -> Path:
    """Fail with the standard one-line error when an input path does not exist."""
    from medidiff.errors import ScanError

    if not path.exists():
        raise ScanError(path, "no such file or folder")
    return path


def import_commands(package: str, names: tuple[str, ...]) -> None:
    """Import each command module ``package.NAME`` (it registers itself); a missing one is skipped."""
    for name in names:
        try:
            __import__(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":
                raise
