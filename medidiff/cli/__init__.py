"""The ``medidiff`` command line (typer). One module per command; this file wires them up.

Bad input (any ``MedidiffError``) becomes one line on stderr and exit code 2: no
traceback reaches the user for a problem they can fix.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator

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
    threads: int = typer.Option(None, "--threads", min=1, metavar="N",
                                help="CPU threads for torch (default: the cores free at start, or $MEDIDIFF_THREADS)."),
) -> None:
    """Diffusion models for real scans: denoise, generate synthetic data, detect anomalies."""
    from medidiff.core.threads import prepare_environment

    # before any command imports torch: OpenMP reads its environment only once
    prepare_environment(threads)


def _register() -> None:
    from medidiff.cli.common import import_commands

    # each command module adds itself to ``app`` on import; keep this list in CLI order
    import_commands("medidiff.cli", ("info", "convert", "train", "generate", "denoise", "denoise_calibrate", "anomaly",
                                     "evaluate", "models", "demo", "latent"))


def _plain_flags(typer_app: typer.Typer) -> None:
    """On/off flags take no value (no ``<bool>`` metavar); positional arguments are named in capitals."""
    import inspect

    callbacks = [typer_app.registered_callback.callback] if typer_app.registered_callback else []
    callbacks += [c.callback for c in typer_app.registered_commands]
    for callback in callbacks:
        for param in inspect.signature(callback).parameters.values():
            info = param.default
            if isinstance(info, typer.models.OptionInfo) and isinstance(info.default, bool) and info.metavar is None:
                info.metavar = ""
            elif isinstance(info, typer.models.ArgumentInfo) and info.metavar is None:
                info.metavar = param.name.upper()  # IN, OUT, PATH, DATA: one style in every usage line
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _plain_flags(group.typer_instance)


_register()
_plain_flags(app)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Every warning as one ``warning: ...`` line on stderr (no source lines), each text once."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = _one_line(message)
        if text not in seen:
            seen.add(text)
            if "tqdm" in sys.modules:  # a progress bar may be drawn: print above it, on a line of its own
                from tqdm import tqdm

                line = f"warning: {text}"
                tqdm.write(typer.style(line, fg=typer.colors.YELLOW) if sys.stderr.isatty() else line, file=sys.stderr)
            else:
                typer.secho(f"warning: {text}", err=True, fg=typer.colors.YELLOW)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``medidiff`` script.

    Every mistake a user can make ends as one line on stderr and exit code 2: a
    ``MedidiffError`` from the library, or a usage error from the parser (unknown option, a
    value out of range, a missing argument), which click would otherwise draw as a box.
    """
    try:
        with _warnings_as_lines():
            code = app(args=argv, prog_name="medidiff", standalone_mode=False)
    except MedidiffError as exc:
        typer.secho(f"error: {_one_line(exc)}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("cancelled", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors: bad value, unknown option, ...
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        if not message.strip():  # `medidiff` alone: the help was shown, nothing went wrong
            sys.exit(0)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.secho(f"error: {_one_line(message)}{hint}", err=True, fg=typer.colors.RED)
        sys.exit(getattr(exc, "exit_code", 2))
    if isinstance(code, int) and code != 0:
        sys.exit(code)
