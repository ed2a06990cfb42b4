"""``medidiff evaluate``: metrics against ground truth (a sub-command per kind of result).

The sub-commands live in their own modules (``evaluate_generated.py``,
``evaluate_anomaly.py``) and add themselves to ``evaluate_app``.
"""

from __future__ import annotations

import typer

from medidiff.cli import app

evaluate_app = typer.Typer(
    help="Evaluate results against ground truth.\n\nExample:  medidiff evaluate anomaly maps/ truth/",
    no_args_is_help=True,
)
app.add_typer(evaluate_app, name="evaluate")


def _register() -> None:
    from medidiff.cli.common import import_commands

    import_commands("medidiff.cli", ("evaluate_generated", "evaluate_anomaly"))


_register()
