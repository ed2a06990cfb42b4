"""The base of every task widget: model and device pickers, a parameter form, Run/Cancel, the job.

A subclass names its task generator (``task = "medidiff.tasks.denoise:denoise_steps"``), adds
its rows to ``self.form``, and implements two methods on the main thread:

* ``job_arguments()`` reads the controls and returns ``(args, options)``: the task is called as
  ``steps(model, *args, **options)`` in the worker thread (``device`` is added when missing);
* ``show_result(result)`` turns the task's result into layers.

The base does the rest once for all widgets: it loads the model in the worker (``ModelCache``),
stops a run within one network call on Cancel (``worker.watch_network``), shows the task's
warnings as napari notifications, remembers every parameter for the next session, and cancels
the run (adding nothing) when the dock is closed.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Generator
from typing import Any

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget

from .pickers import DevicePicker, LayerPicker, ModelPicker, layer_modality, modality_family
from .preferences import control_value, preferences, set_control_value
from .run_controls import RunControls
from .worker import ModelCache, TaskRunner, watch_network

__all__ = ["TaskWidget"]

LOG = logging.getLogger(__name__)


class TaskWidget(QWidget):
    """Model, device, task parameters (subclasses add rows to ``self.form``), Run/Cancel and progress.

    The loaded model is cached while the widget is shown and dropped when it is hidden or closed.
    """

    title = "task"
    run_text = "Run"
    task = ""  # "module:generator function" of the task's generator twin

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.prefs = preferences()
        self.model_picker = ModelPicker(self.prefs, self)
        self.device_picker = DevicePicker(self.prefs, self)
        self.form = QFormLayout()
        self.form.addRow("Model", self.model_picker)
        self.form.addRow("Device", self.device_picker)
        self.controls = RunControls(self.run_text, self)
        self.result_label = QLabel("", self)
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.controls)
        layout.addWidget(self.result_label)
        layout.addStretch(1)
        self.model_cache = ModelCache()
        self.runner = TaskRunner(self.title, self)
        self.job_model: Any | None = None  # the model of the last run (set in the worker)
        self._options: dict[str, Any] = {}
        self._remembered: dict[str, QWidget] = {}
        self._release_when_done = False
        self.controls.run_button.clicked.connect(self.run)
        self.controls.cancel_button.clicked.connect(self.cancel)
        self.runner.progress.connect(self.controls.show_progress)
        self.runner.network_call.connect(self.controls.show_network_calls)
        self.runner.warned.connect(self._show_warning)
        self.runner.succeeded.connect(self._on_succeeded)
        self.runner.failed.connect(lambda message: self.controls.status.setText(message))
        self.runner.finished.connect(self._on_finished)

    # -- to implement
    def job_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Read the controls (main thread): ``(args, options)`` for ``steps(model, *args, **options)``.

        Raise ``MedidiffError`` (or ``ValueError``) on bad input; it is shown, nothing runs.
        """
        raise NotImplementedError

    def show_result(self, result: Any) -> None:
        """Turn a task result into layers (main thread)."""
        raise NotImplementedError

    # -- helpers for subclasses
    def load_model(self, spec: str, device: str) -> Any:
        """The model (cached); call from the job, i.e. in the worker thread."""
        return self.model_cache.get(spec, device)

    def chosen_layer(self, picker: LayerPicker, what: str = "an image layer") -> Any:
        """The picker's layer; a ``MedidiffError`` telling the user to choose one when there is none."""
        from medidiff.errors import MedidiffError

        layer = picker.layer()
        if layer is None:
            raise MedidiffError(f"{self.title}: no input; open a scan or choose {what} first")
        return layer

    def watch_input(self, picker: LayerPicker, modality: Any | None = None) -> None:
        """Follow the input layer (and a modality control, if any) with the model picker's default:
        an MR layer gets an MR model until the user picks a model by hand."""

        def update(*_: Any) -> None:
            layer = picker.layer()
            code, fmt = layer_modality(layer) if layer is not None else ("", "")
            chosen = modality.currentData() if modality is not None else None
            if chosen:
                code, fmt = str(chosen), ""
            if self.model_picker.prefer_modality(modality_family(code, fmt)):
                self.controls.status.setText(f"model {self.model_picker.name()} chosen for this "
                                             f"{modality_family(code, fmt)} image")

        picker.currentTextChanged.connect(update)
        if modality is not None:
            modality.currentIndexChanged.connect(update)
        update()

    def remember_controls(self, **controls: QWidget) -> None:
        """Remember these controls' values across sessions (saved on Run) and restore them now."""
        stored = self.prefs.parameters(self.title)
        for name, control in controls.items():
            self._remembered[name] = control
            if name in stored:
                set_control_value(control, stored[name])

    def _save_parameters(self) -> None:
        values = {name: control_value(control) for name, control in self._remembered.items()}
        if values:
            self.prefs.set_parameters(self.title, values)

    # -- the job
    def make_job(self) -> Generator[Any, None, Any]:
        """Read the controls (main thread) and return the job generator; raises on bad input."""
        args, options = self.job_arguments()
        options = dict(options)
        options.setdefault("device", self.device_picker.device())
        # what the result layers record: the options of this run, not whatever the controls show later
        self._options = {k: v for k, v in options.items() if k != "device"}
        return self._job(self.model_picker.spec(), args, options)

    def _job(self, spec: str, args: tuple[Any, ...], options: dict[str, Any]) -> Generator[Any, None, Any]:
        # runs in the worker thread
        module, name = self.task.split(":")
        steps = getattr(importlib.import_module(module), name)
        model = self.load_model(spec, options["device"])
        self.job_model = model
        with watch_network(model, self.runner):
            return (yield from steps(model, *args, **options))

    # -- run / cancel
    def run(self) -> None:
        """Start the task in a worker thread (no-op while one runs)."""
        if self.runner.running:
            return
        from medidiff.errors import MedidiffError

        self.result_label.setText("")
        try:
            job = self.make_job()
        except (MedidiffError, ValueError) as exc:
            from napari.utils.notifications import show_error

            message = str(exc)
            self.controls.status.setText(message)
            show_error(message)
            return
        self.model_picker.remember()
        self.device_picker.remember()
        self._save_parameters()
        self.controls.set_running(True, "loading the model…" if not self.model_cache.loaded else "starting…")
        self.runner.start(job)

    def cancel(self) -> None:
        """Stop the running task within one network call; its result is discarded."""
        if self.runner.running:
            self.controls.cancel_button.setEnabled(False)
            self.controls.status.setText("cancelling…")
            self.runner.cancel()

    def _show_warning(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        show_warning(f"{self.title}: {message}")

    def _on_succeeded(self, result: Any) -> None:
        try:
            self.show_result(result)
            for message in getattr(result, "warnings", None) or ():
                self._show_warning(str(message))
        except Exception as exc:  # a result that cannot be shown must not take napari down
            from napari.utils.notifications import show_error

            from .worker import error_message

            LOG.exception("%s: could not show the result", self.title)
            show_error(error_message(f"{self.title} (showing the result)", exc))

    def _on_finished(self) -> None:
        outcome = self.runner.outcome
        status = self.controls.status.text()
        if outcome == "cancelled":
            status = "cancelled"
        elif outcome == "succeeded":
            status = "done"
        self.controls.set_running(False, status)
        if outcome == "succeeded":
            self.controls.progress_bar.setValue(self.controls.progress_bar.maximum())
        if self._release_when_done and not self.isVisible():
            self.model_cache.clear()
        self._release_when_done = False

    def _closed(self) -> None:
        """The dock was closed: stop the run (nothing is added) and free the model."""
        if self.runner.running:
            self.cancel()
            self._release_when_done = True
        else:
            self.model_cache.clear()

    def event(self, event: QEvent) -> bool:  # noqa: D102 (Qt override)
        # napari's dock close button takes the widget out of its dock (setParent(None))
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self._closed()
        return super().event(event)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self._closed()
        super().closeEvent(event)

    def hideEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        # the model is kept only while the widget is open; a minimised window (spontaneous
        # hide) keeps it, and a running job keeps its own reference until it ends
        if not event.spontaneous():
            if self.runner.running:
                self._release_when_done = True
            else:
                self.model_cache.clear()
        super().hideEvent(event)
