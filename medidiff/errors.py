"""Errors that medidiff raises for bad input: each names the file and what is wrong.

The CLI turns any ``MedidiffError`` into one line on stderr and exit code 2, so a
message must stand on its own: the path, the problem, and what to do.
"""

from __future__ import annotations

from pathlib import Path


class MedidiffError(Exception):
    """Base class for every error caused by the user's input rather than a bug."""


class ScanError(MedidiffError):
    """A scan could not be read or is not usable (the message starts with its path)."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class UnsupportedFormatError(ScanError):
    """The file is not in a format medidiff reads or writes."""


class MissingCodecError(ScanError):
    """Compressed pixel data needs an optional decoder (``pip install medidiff[dicom-codecs]``)."""


class InvalidScanError(ScanError):
    """The data was read but cannot be used: NaN/Inf values, a zero-size axis, bad geometry."""


class SeriesSelectionError(ScanError):
    """A DICOM folder holds several series and none (or an unknown one) was chosen."""


class OutputError(MedidiffError):
    """An output path is not allowed: it exists, or it is one of the inputs."""


class ModelError(MedidiffError):
    """A model folder is missing, corrupted, or from an incompatible version."""
