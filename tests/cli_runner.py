"""Run the ``medidiff`` CLI in-process, exactly as the installed script does (shared by CLI tests)."""

from __future__ import annotations

from medidiff.cli import main


def call(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``medidiff ARGS``."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
