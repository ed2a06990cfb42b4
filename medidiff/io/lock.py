"""One run per output folder: an exclusive ``fcntl.flock`` on a lock file inside the folder.

Two ``train`` or ``generate`` runs pointed at the same folder would otherwise both succeed and mix
their files and logs. :func:`folder_lock` takes a non-blocking exclusive lock on
``FOLDER/.medidiff-lock[-NAME]`` for the duration of a run and refuses a second run at once with
one line (an ``OutputError``). The operating system drops the lock when the process ends, however it
ends (kill -9 included), so a crashed run never blocks the next one. The lock file is removed on a
clean release; a process that opened it just before is detected by comparing inodes and retries.
On platforms without ``fcntl`` (Windows) the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from medidiff.errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_PREFIX = ".medidiff-lock"


def lock_path(folder: str | Path, name: str = "") -> Path:
    """The lock file of ``folder`` (``name`` separates locks that may be held together, e.g. shards)."""
    return Path(folder) / (f"{LOCK_PREFIX}-{name}" if name else LOCK_PREFIX)


def is_lock_file(path: str | Path) -> bool:
    """True for a lock file name, which content checks of an output folder should ignore."""
    return Path(path).name.startswith(LOCK_PREFIX)


@contextlib.contextmanager
def folder_lock(folder: str | Path, name: str = "", what: str = "run") -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the block.

    Raises ``OutputError`` in one line when another process holds it. A folder this call
    created is removed again on exit if nothing but the lock was written into it.
    """
    folder = Path(folder).expanduser()
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
    path = lock_path(folder, name)
    fd = _acquire(path, folder, what)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # closing drops the lock
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when the run left the folder empty


def _acquire(path: Path, folder: Path, what: str) -> int:
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot write a lock file there ({exc.strerror or exc})") from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (process {holder})" if holder else ""
            raise OutputError(f"{folder}: another medidiff {what}{who} is writing into this folder; "
                              "wait for it to finish or choose another folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the holder removed this file as we opened it: take the new one
    raise OutputError(f"{folder}: could not take the folder lock {path.name}; try again")


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
