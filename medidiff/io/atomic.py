"""Atomic output: write to a temporary sibling, then rename, so a failed run leaves nothing.

Also the one place that refuses to overwrite an existing output or an input. One file or folder:
:func:`atomic_file`, :func:`atomic_dir`. Several outputs of one command, which must appear
together or not at all: :func:`atomic_outputs` (every command with more than one output uses it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from medidiff.errors import MedidiffError, OutputError
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
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)  # the old output comes back, never lost under a hidden name
                raise
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _cannot_write(out, exc) from exc
        raise


# -- a command's outputs, together or not at all -------------------------------------------------

_STAGE_PREFIX = ".medidiff-outputs."


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree (no error if it is already gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


class OutputSet:
    """The staged (temporary) path of each output of one command; see :func:`atomic_outputs`.

    ``staged[out]`` (or ``staged.path(out)``) is where the writer should write ``out``: a path with
    the same name, in a private temporary folder next to ``out``. Write there with
    ``overwrite=False``; the set moves every output into place at the end.
    """

    def __init__(self, outputs: list[Path], staged: dict[Path, Path]) -> None:
        self.outputs = outputs
        self._staged = staged

    def path(self, out: str | Path | None) -> Path | None:
        """The staged path of the declared output ``out`` (``None`` for ``None``)."""
        if out is None:
            return None
        key = Path(out).expanduser().resolve()
        if key not in self._staged:
            raise KeyError(f"{out} is not one of this command's declared outputs")
        return self._staged[key]

    __getitem__ = path

    def pairs(self) -> list[tuple[Path, Path]]:
        """``(output, staged path)`` for every output, in the order they were declared (= commit order)."""
        return [(out, self._staged[out.resolve()]) for out in self.outputs]


def _commit(pairs: list[tuple[Path, Path]], overwrite: bool, stages: dict[Path, Path]) -> None:
    """Move every staged output into place; on any failure put back what was there before and re-raise."""
    done: list[tuple[Path, Path | None]] = []  # (output now in place, the old one moved aside or None)
    aside: Path | None = None
    holders: dict[Path, Path] = {}  # stage folder -> the folder in it that holds the old outputs
    out = pairs[0][0] if pairs else Path(".")
    try:
        for out, staged in pairs:
            aside = None
            if not _present(staged):  # the command had nothing to write for it (e.g. no uncertainty)
                continue
            if _present(out):
                if not overwrite:
                    raise OutputError(f"{out}: appeared while this command ran (another program wrote it?); "
                                      "nothing was written, run again or pass --overwrite")
                # the old output goes aside into the stage folder (same file system), so it can come back;
                # a fresh folder there, so its name can clash with no staged output
                stage = stages[out.resolve().parent]
                if stage not in holders:
                    holders[stage] = Path(tempfile.mkdtemp(prefix=".old.", dir=stage))
                os.replace(out, holders[stage] / out.name)
                aside = holders[stage] / out.name
            os.replace(staged, out)
            done.append((out, aside))
            aside = None
    except BaseException as exc:
        with contextlib.suppress(OSError):
            if aside is not None:  # moved aside, but the new one never arrived
                os.replace(aside, out)
        for placed, old in reversed(done):
            with contextlib.suppress(OSError):
                _remove(placed)
                if old is not None:
                    os.replace(old, placed)
        if isinstance(exc, OSError):
            raise _cannot_write(out, exc) from exc
        raise


def _name_outputs(exc: BaseException, pairs: list[tuple[Path, Path]]) -> None:
    """Rewrite a one-line error so it names the real output, not its staged temporary path."""
    if isinstance(exc, MedidiffError):
        if len(exc.args) == 1 and isinstance(exc.args[0], str):
            text = exc.args[0]
            for out, staged in pairs:
                text = text.replace(str(staged), str(out))
            exc.args = (text,)


@contextlib.contextmanager
def atomic_outputs(outputs: Iterable[str | Path | None], overwrite: bool = False, inputs: Iterable[str | Path] = (),
                   folders: Iterable[str | Path | None] = ()) -> Iterator[OutputSet]:
    """All of one command's outputs appear together, or none does.

    First :func:`check_outputs` (against the inputs and each other, existing ones refused without
    ``overwrite``). Then each output gets a staged path of the same name in a private temporary
    folder next to it (``.medidiff-outputs.*.part``; outputs named in ``folders`` are handed out
    as empty folders); missing parent folders are created. The block writes there. When it
    succeeds every output is renamed into place in the order given; an old output (``overwrite``)
    is first moved aside and deleted only once all are in place. When the block or a rename fails
    (disk full, an error, Ctrl-C), every staged file is removed, what was already placed is taken
    back and the old outputs are restored, so the file system is as before the run. An ``OSError``
    becomes one ``OutputError`` line naming the output. Outputs given as ``None`` are skipped; an
    output the block did not write is left alone.
    """
    folder_keys = {Path(f).expanduser().resolve() for f in folders if f is not None}
    checked = check_outputs(outputs, overwrite=overwrite, inputs=inputs)
    stages: dict[Path, Path] = {}  # resolved parent folder -> its stage folder
    staged: dict[Path, Path] = {}
    created: list[Path] = []  # parent folders this call made (removed again on failure)
    pairs: list[tuple[Path, Path]] = []
    try:
        for out in checked:
            created += [p for p in reversed(out.parents) if not p.exists()]
            _make_parent(out)
            parent = out.resolve().parent
            if parent not in stages:
                try:
                    stages[parent] = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, suffix=".part", dir=parent))
                    os.chmod(stages[parent], 0o777 & ~_umask())
                except OSError as exc:
                    raise _cannot_write(out, exc) from exc
            staged[out.resolve()] = stages[parent] / out.name
            pairs.append((out, staged[out.resolve()]))
            if out.resolve() in folder_keys:
                staged[out.resolve()].mkdir(mode=0o777 & ~_umask())
        yield OutputSet(checked, staged)
        _commit(pairs, overwrite, stages)
    except BaseException as exc:
        for stage in stages.values():
            shutil.rmtree(stage, ignore_errors=True)
        for folder in reversed(created):  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        _name_outputs(exc, pairs)
        if isinstance(exc, OSError):
            # name the output whose staged path failed (else the first one)
            named = [o for o, s in pairs if exc.filename and str(s) in str(exc.filename)]
            raise _cannot_write((named or [o for o, _ in pairs] or [Path(".")])[0], exc) from exc
        raise
    for stage in stages.values():  # the old outputs moved aside go with it
        shutil.rmtree(stage, ignore_errors=True)
