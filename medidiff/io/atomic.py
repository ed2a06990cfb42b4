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


def check_output_path(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse an output that is one of ``inputs`` (always) or that exists (unless ``overwrite``)."""
    out = Path(path).expanduser()
    out_resolved = out.resolve()
    for src in inputs:
        src_resolved = Path(src).expanduser().resolve()
        # writing onto an input, or replacing a folder that holds one, would lose the input
        if out_resolved == src_resolved or out_resolved in src_resolved.parents:
            raise OutputError(f"{out}: this is (or holds) an input; choose another output path (inputs are never overwritten)")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists; pass overwrite=True (--overwrite) or choose another path")
    return out


@contextlib.contextmanager
def atomic_file(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    out = check_output_path(path, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    # keep the full suffix (".nii.gz") so writers that pick a format by name still work
    suffix = "".join(out.suffixes) or ""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".part{suffix}", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the output the permissions a normal open() would (umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; move it onto ``path`` only if the block succeeds."""
    out = check_output_path(path, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
