"""Run a medidiff task generator off the Qt main thread, with progress, cancel and clear errors.

``TaskRunner.start(job)`` hands a generator that yields ``medidiff.core.progress.Progress`` and
returns a result to a napari ``GeneratorWorker`` (``napari.qt.threading.create_worker``):

* each ``Progress`` the job yields is re-emitted as ``progress`` on the main thread;
* ``cancel()`` calls ``worker.quit()``: the worker stops before asking the generator for its
  next step. A step can be long (one sampling step of a large image is many sliding-window
  network calls), so ``watch_network(model, runner)`` also stops it *inside* a step: a forward
  pre-hook on the network raises ``NetworkCancelled`` at the next network call after Cancel,
  and counts the calls (``network_call`` signal) so the widget shows life within a step. The
  job is then closed (its ``finally`` blocks run, e.g. a task's own cleanup), its result, if
  any, is discarded, and ``cancelled`` is emitted;
* the warnings the job raises in its thread (``warnings.warn`` or a ``medidiff`` log warning,
  e.g. "the voxel size is far from the model's training spacing") are emitted as ``warned``
  and shown as napari warning notifications (``task_warnings``);
* an exception becomes one readable message, shown with ``napari.utils.notifications.show_error``
  (a ``MedidiffError``'s own message names the file and the problem) and emitted as ``failed``;
* on success ``succeeded`` carries the job's return value;
* whatever the outcome, ``medidiff.core.devices.release_memory()`` runs (in the worker thread;
  it frees cached accelerator memory and never runs a full ``gc.collect()``) and ``finished``
  is emitted last.

``ModelCache`` keeps the last loaded model so repeated runs in one open widget do not reload it.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal

from .task_warnings import relay_warnings

__all__ = ["TaskRunner", "ModelCache", "TaskError", "NetworkCancelled", "watch_network", "error_message"]

LOG = logging.getLogger(__name__)
REPORT_INTERVAL_S = 0.05  # the most often a job's network-call count is reported to the GUI


class TaskError(Exception):
    """A ``RuntimeError`` raised by a task, re-raised under another type.

    superqt's worker treats a ``RuntimeError`` from the generator as "the worker object was
    deleted" and silently drops it; torch reports most failures (out of memory, bad shapes) as
    ``RuntimeError``, so they are wrapped to reach ``errored``.
    """


class NetworkCancelled(BaseException):
    """Raised by ``watch_network``'s hook at the first network call after Cancel.

    A ``BaseException`` (like ``GeneratorExit``), so a task's ``except Exception`` cannot swallow it.
    """


_CANCELLED = object()  # what the driver returns when the job was stopped inside a network call


def error_message(title: str, exc: BaseException) -> str:
    """One line for the user: a ``MedidiffError``'s own message, otherwise the task, type and text."""
    from medidiff.errors import MedidiffError

    if isinstance(exc, MedidiffError):
        return str(exc)
    cause = exc.__cause__ if isinstance(exc, TaskError) and exc.__cause__ is not None else exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    if isinstance(cause, (ValueError, TypeError)) and text:
        return f"{title} failed: {text}"  # the tasks' own argument checks: the text says it all
    return f"{title} failed: {type(cause).__name__}: {text}" if text else f"{title} failed: {type(cause).__name__}"


class _Counter:
    """Counts the job's yields from the worker thread, and where cancel was asked."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.yielded = 0
        self.cancel_at: int | None = None
        self.calls = 0  # network calls made by the job
        self.calls_at_cancel: int | None = None
        self.last_report = 0.0  # when network_call was last emitted (time.monotonic)
        self.cancelled = threading.Event()


def _drive(job: Generator[Any, None, Any], counter: _Counter) -> Generator[Any, None, Any]:
    """The generator the worker iterates: forwards ``job``, counts yields, always cleans up."""
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            except NetworkCancelled:
                return _CANCELLED
            except RuntimeError as exc:
                raise TaskError(str(exc)) from exc
            with counter.lock:
                counter.yielded += 1
            yield event
    finally:
        job.close()  # a cancelled task's generator gets GeneratorExit at its current yield
        try:
            from medidiff.core.devices import release_memory

            release_memory()
        except Exception as exc:  # pragma: no cover - cleanup must never mask the real outcome
            LOG.warning("release_memory failed: %s", exc)


class TaskRunner(QObject):
    """Runs one task job at a time in a napari thread worker (see the module docstring)."""

    progress = Signal(object)  # medidiff.core.progress.Progress
    succeeded = Signal(object)  # the job's return value
    failed = Signal(str)  # the message shown to the user
    cancelled = Signal()
    finished = Signal()  # after succeeded / failed / cancelled
    network_call = Signal(int)  # network calls so far (from watch_network; emitted in the worker thread)
    warned = Signal(str)  # a medidiff warning logged by the job's thread

    def __init__(self, title: str, parent: QObject | None = None, notify: bool = True,
                 words: Callable[[str], str] | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.notify = notify
        self.words = words or (lambda text: text)  # the message in the widget's words (wording.in_widget_words)
        self.worker: Any | None = None
        self.job: Generator[Any, None, Any] | None = None
        self._driver: Generator[Any, None, Any] | None = None
        self._counter = _Counter()
        self._outcome = ""

    @property
    def running(self) -> bool:
        """Whether a job is under way (started and not yet finished)."""
        return self.worker is not None

    @property
    def steps_after_cancel(self) -> int | None:
        """Progress events the job yielded after ``cancel()`` was called (None if not cancelled)."""
        with self._counter.lock:
            if self._counter.cancel_at is None:
                return None
            return self._counter.yielded - self._counter.cancel_at

    @property
    def calls_after_cancel(self) -> int | None:
        """Network calls that started after ``cancel()`` (None if not cancelled or not watched)."""
        with self._counter.lock:
            if self._counter.calls_at_cancel is None:
                return None
            return self._counter.calls - self._counter.calls_at_cancel

    @property
    def cancel_requested(self) -> bool:
        """Whether ``cancel()`` was called for the current (or last) job."""
        return self._counter.cancelled.is_set()

    @property
    def network_calls(self) -> int:
        """Network calls the current (or last) job has started (counted by ``watch_network``)."""
        with self._counter.lock:
            return self._counter.calls

    def before_network_call(self) -> None:
        """Called (by ``watch_network``, in the worker thread) before each network call.

        Raises ``NetworkCancelled`` after Cancel; otherwise counts the call and reports the count
        (``network_call``), at most every ``REPORT_INTERVAL_S`` so fast GPU calls cannot flood
        the GUI thread with events.
        """
        now = time.monotonic()
        with self._counter.lock:
            if self._counter.cancelled.is_set():
                raise NetworkCancelled()
            self._counter.calls += 1
            calls = self._counter.calls
            due = calls == 1 or now - self._counter.last_report >= REPORT_INTERVAL_S
            if due:
                self._counter.last_report = now
        if due:
            self.network_call.emit(calls)

    @property
    def outcome(self) -> str:
        """How the last job ended: ``""`` (running or never run), ``succeeded``, ``failed`` or ``cancelled``."""
        return self._outcome

    def start(self, job: Generator[Any, None, Any]) -> None:
        """Run ``job`` (a generator yielding Progress and returning a result) in a worker thread."""
        if self.running:
            raise RuntimeError(f"{self.title} is already running")
        if not inspect.isgenerator(job):
            raise TypeError("job must be a generator")
        from napari.qt.threading import create_worker

        self.job = job
        self._counter = _Counter()
        self._outcome = ""
        self._driver = relay_warnings(_drive(job, self._counter), self.warned.emit)
        worker = create_worker(_passthrough, self._driver, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def cancel(self) -> None:
        """Ask the running job to stop at its next step (no-op when idle)."""
        if self.worker is None:
            return
        with self._counter.lock:
            if self._counter.cancel_at is None:
                self._counter.cancel_at = self._counter.yielded
                self._counter.calls_at_cancel = self._counter.calls
            self._counter.cancelled.set()
        self.worker.quit()

    def _on_yielded(self, event: Any) -> None:
        self.progress.emit(event)

    def _on_returned(self, value: Any) -> None:
        if value is _CANCELLED or self.cancel_requested:
            return  # a cancel that landed after the last step still discards the result
        self._outcome = "succeeded"
        self.succeeded.emit(value)

    def _on_errored(self, exc: BaseException) -> None:
        from medidiff.errors import MedidiffError

        self._outcome = "failed"
        message = self.words(error_message(self.title, exc))
        if not isinstance(exc, MedidiffError):  # a bug or an environment problem: keep the traceback
            LOG.error("%s failed", self.title, exc_info=(type(exc), exc, exc.__traceback__))
        if self.notify:
            from napari.utils.notifications import show_error

            show_error(message)
        self.failed.emit(message)

    def _on_aborted(self) -> None:
        self._outcome = "cancelled"

    def _on_finished(self) -> None:
        # the worker has left its loop; after a cancel the job is still suspended at a yield,
        # so close it here (runs its finally blocks and release_memory) before reporting
        if self._driver is not None:
            self._driver.close()
        self._driver = None
        self.worker = None
        if self._outcome in ("", "cancelled"):
            # quit() that lands after the last step still discards the result: a cancel too
            self._outcome = "cancelled"
            self.cancelled.emit()
        self.finished.emit()


@contextmanager
def watch_network(model: Any, runner: TaskRunner) -> Iterator[None]:
    """While the block runs, every call of ``model.network`` first asks ``runner.before_network_call()``.

    That counts the calls and raises ``NetworkCancelled`` once Cancel was pressed, so a long
    step (a sliding window over a large image) stops within one network call. Use inside the
    job (worker thread); the hook is removed when the block ends.
    """
    network = getattr(model, "network", None)
    if network is None or not hasattr(network, "register_forward_pre_hook"):
        yield
        return
    handle = network.register_forward_pre_hook(lambda _module, _args: runner.before_network_call())
    try:
        yield
    finally:
        handle.remove()


def _passthrough(gen: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """Generator function wrapper: ``create_worker`` needs a generator *function*."""
    return (yield from gen)


class ModelCache:
    """The last model a widget loaded, kept while the widget is open (``clear()`` frees it).

    ``get`` is called from the worker thread; the key is the resolved folder, the config's
    modification time (a retrained model is reloaded) and the device.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._model: Any | None = None
        self._device: Any | None = None

    def get(self, spec: str, device: str) -> Any:
        """The model for ``spec`` (a name or folder) on ``device``, loaded on first use."""
        from medidiff.errors import ModelError
        from medidiff.model_store.registry import find_model

        if not spec.strip():
            raise ModelError("no model chosen: pick a model name or a model folder (with config.json)")
        folder = Path(find_model(spec.strip())).resolve()
        config = folder / "config.json"
        key = (str(folder), config.stat().st_mtime_ns if config.is_file() else None, device)
        with self._lock:
            if self._key == key and self._model is not None:
                return self._model
            self._model, self._key = None, None
        from medidiff.core.devices import resolve_device
        from medidiff.core.model import DiffusionModel

        model = DiffusionModel.load(folder, device=resolve_device(device))
        with self._lock:
            self._model, self._key, self._device = model, key, model.device
        return model

    @property
    def loaded(self) -> bool:
        """Whether a model is held."""
        return self._model is not None

    def clear(self) -> None:
        """Drop the model and give its memory back."""
        with self._lock:
            had = self._model is not None
            self._model, self._key = None, None
        if had:
            from medidiff.core.devices import release_memory

            release_memory(self._device)
