"""Atomic output: write to a temporary sibling, then rename, so a failed run leaves nothing.

Also the one place that refuses to overwrite an existing output or an input.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from medidiff.errors import OutputError
from medidiff.io._util import one_line


def check_output_path(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse an output that is, holds or lies inside one of ``inputs`` (always), or that exists (unless ``overwrite``)."""
    out = Path(path).expanduser()
    out_resolved = out.resolve()
    for src in inputs:
        src_resolved = Path(src).expanduser().resolve()
        # writing onto an input, or replacing a folder that holds one, would lose the input
        if out_resolved == src_resolved or out_resolved in src_resolved.parents:
            raise OutputError(f"{out}: this is (or holds) an input; choose another output path (inputs are never overwritten)")
        # writing into an input folder would change the input (a DICOM series gains files, a data folder outputs)
        if src_resolved in out_resolved.parents and src_resolved.is_dir():
            raise OutputError(f"{out}: is inside the input folder {src}; choose an output outside it (inputs are never written into)")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists; choose another path or pass --overwrite (overwrite=True in Python)")
    return out


def check_outputs(outputs: Iterable[str | Path | None], overwrite: bool = False,
                  inputs: Iterable[str | Path] = ()) -> list[Path]:
    """Check every output of one command before anything is written: each against every input
    (:func:`check_output_path`), and against every other output (the same path twice, or one
    output inside another, would make the later write destroy the earlier one)."""
    inputs = list(inputs)
    checked: list[Path] = []
    for path in outputs:
        if path is None:
            continue
        out = check_output_path(path, overwrite=overwrite, inputs=inputs)
        here = out.resolve()
        for earlier in checked:
            there = earlier.resolve()
            if here == there:
                raise OutputError(f"{out}: named for two outputs of this command; give each output its own path")
            if there in here.parents or here in there.parents:
                raise OutputError(f"{out}: one output lies inside another ({earlier}); give each output its own path")
        checked.append(out)
    return checked


def _cannot_write(out: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or one_line(exc)  # strerror leaves out the temporary file's name
    return OutputError(f"{out}: cannot be written here ({reason}); nothing was written, choose a writable place")


def _make_parent(out: Path) -> None:
    """Create ``out``'s missing parent folders (documented: outputs may name new folders), or refuse in one line."""
    for ancestor in out.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputError(f"{out}: {ancestor} is a file, not a folder; choose an output path in a folder")
            break
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(out, exc) from exc


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_file(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Any ``OSError`` (read-only folder, disk full, a place like ``/proc``) becomes one
    ``OutputError`` line, and the temporary file is removed.
    """
    out = check_output_path(path, overwrite, inputs)
    _make_parent(out)
    # keep the full suffix (".nii.gz") so writers that pick a format by name still work
    suffix = "".join(out.suffixes) or ""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".part{suffix}", dir=out.parent)
        os.close(fd)
    except OSError as exc:
        raise _cannot_write(out, exc) from exc
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; give the output the permissions a normal open() would (umask)
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        os.replace(tmp, out)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise _cannot_write(out, exc) from exc
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; move it onto ``path`` only if the block succeeds.

    ``OSError``s become one ``OutputError`` line, as in ``atomic_file``; the temporary folder is removed.
    """
    out = check_output_path(path, overwrite, inputs)
    _make_parent(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    except OSError as exc:
        raise _cannot_write(out, exc) from exc
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _cannot_write(out, exc) from exc
        raise
