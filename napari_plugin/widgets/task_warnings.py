"""The warnings a task raises in its worker thread, relayed to the widget that runs it.

Tasks report "this works, but mind this" (a voxel size far from the model's training spacing,
a scan outside what the model has seen) as ``warnings.warn(...)`` (the CLI prints those as
``warning: ...``) or as ``medidiff`` log warnings. In the viewer they must become notifications
of the widget that ran the task, every time, not only the first time Python's warning filter
lets a message through.

``relay_warnings(gen, emit)`` runs each step of ``gen`` with both kinds routed to ``emit(text)``,
but only for the thread running the step: ``warnings.showwarning`` is wrapped once by a
dispatcher that looks the current thread up in a table (other threads' warnings go where they
went before), and a logging handler filters by thread. No ``warnings.catch_warnings`` (it swaps
process-wide state and is not thread-safe). Python's ``default`` filter action shows a message
once per process, so the dispatcher clears the ``__warningregistry__`` mark a relayed message
leaves behind; a filter that ignores warnings altogether is respected.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Callable, Generator
from typing import Any

__all__ = ["relay_warnings"]

_LOCK = threading.Lock()
_ROUTES: dict[int, Callable[[str], None]] = {}  # thread id -> emit


def _dispatcher(previous: Callable[..., Any]) -> Callable[..., Any]:
    def showwarning(message, category, filename, lineno, file=None, line=None):
        with _LOCK:
            emit = _ROUTES.get(threading.get_ident())
        if emit is None:
            return previous(message, category, filename, lineno, file, line)
        _forget(str(message), category)
        emit(str(message))
        return None

    showwarning._medidiff_relay = True  # type: ignore[attr-defined]
    return showwarning


def _forget(text: str, category: type) -> None:
    """Drop the 'already shown' marks of a relayed message, so the next run shows it again."""
    for module in list(sys.modules.values()):
        registry = getattr(module, "__warningregistry__", None)
        if isinstance(registry, dict):
            for key in [k for k in registry if isinstance(k, tuple) and k[:2] == (text, category)]:
                registry.pop(key, None)


def _install() -> None:
    # pytest and napari replace showwarning too; wrap whatever is current when a run starts
    if not getattr(warnings.showwarning, "_medidiff_relay", False):
        warnings.showwarning = _dispatcher(warnings.showwarning)


class _LogRelay(logging.Handler):
    def __init__(self, emit: Callable[[str], None], thread: int) -> None:
        super().__init__(logging.WARNING)
        self._emit, self._thread = emit, thread

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            try:
                self._emit(record.getMessage())
            except RuntimeError:  # pragma: no cover - the receiver was deleted meanwhile
                pass


def relay_warnings(gen: Generator[Any, None, Any], emit: Callable[[str], None]) -> Generator[Any, None, Any]:
    """Forward ``gen``; while each of its steps runs, its thread's warnings go to ``emit``."""
    logger = logging.getLogger("medidiff")
    while True:
        thread = threading.get_ident()
        handler = _LogRelay(emit, thread)
        logger.addHandler(handler)
        _install()
        with _LOCK:
            _ROUTES[thread] = emit
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        finally:
            with _LOCK:
                _ROUTES.pop(thread, None)
            logger.removeHandler(handler)
        try:
            yield event
        except GeneratorExit:
            gen.close()
            raise
