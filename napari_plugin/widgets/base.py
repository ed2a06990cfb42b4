"""The base of every task widget: model and device pickers, a parameter form, Run/Cancel, the job.

A subclass names its task generator (``task = "medidiff.tasks.denoise:denoise_steps"``), adds
its rows to ``self.form``, and implements two methods on the main thread:

* ``job_arguments()`` reads the controls and returns ``(args, options)``: the task is called as
  ``steps(model, *args, **options)`` in the worker thread (``device`` is added when missing);
* ``show_result(result)`` turns the task's result into layers.

A widget that works on one image layer (``self.layer_picker``) can instead implement
``prepare_scan()`` (a function ``(scan, warn) -> (args, options)`` built from the controls on
the main thread, safe to call in the worker), ``show_result_for(layer, result)`` and, for a
folder of scans, ``output_paths(out_dir, name)`` and ``save_result(result, out_dir, name, scan)``;
with ``add_batch_row()`` it then runs on every image layer or on a folder too
(``napari_medidiff.widgets.batch``), and with ``add_slice_axis_row()`` a 2D model slices a
volume along the axis the user picks (``widgets.slice_axis``).

The base does the rest once for all widgets: it loads the model in the worker (``ModelCache``),
stops a run within one network call on Cancel (``worker.watch_network``), shows the task's
warnings as napari notifications, remembers every parameter for the next session, and cancels
the run (adding nothing) when the dock is closed.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget

from .batch import BatchControl, BatchItem, BatchOutcome, BatchProgress, batch_job, folder_items
from .pickers import DevicePicker, LayerPicker, ModelPicker, layer_modality, model_config, modality_family
from .preferences import control_value, preferences, set_control_value
from .results import input_scan
from .run_controls import RunControls
from .slice_axis import SliceAxisControl, along_axis
from .worker import ModelCache, TaskRunner, watch_network
from .wording import in_widget_words

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
        self.runner = TaskRunner(self.title, self, words=lambda text: in_widget_words(text, self.title))
        self.job_model: Any | None = None  # the model of the last run (set in the worker)
        self._options: dict[str, Any] = {}
        self._remembered: dict[str, QWidget] = {}
        self._release_when_done = False
        self.batch: BatchControl | None = None  # add_batch_row()
        self.slice_axis: SliceAxisControl | None = None  # add_slice_axis_row()
        self._input: Any | None = None  # the input layer of the last single-layer run
        self.controls.run_button.clicked.connect(self.run)
        self.controls.cancel_button.clicked.connect(self.cancel)
        self.runner.progress.connect(self.controls.show_progress)
        self.runner.progress.connect(self._batch_item_done)
        self.runner.network_call.connect(self.controls.show_network_calls)
        self.runner.warned.connect(self._show_warning)
        self.runner.succeeded.connect(self._on_succeeded)
        self.runner.failed.connect(lambda message: self.controls.status.setText(message))
        self.runner.finished.connect(self._on_finished)

    # -- to implement
    def job_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Read the controls (main thread): ``(args, options)`` for ``steps(model, *args, **options)``.

        Raise ``MedidiffError`` (or ``ValueError``) on bad input; it is shown, nothing runs. By
        default: ``prepare_scan()`` applied to the scan of ``self.layer_picker``'s layer.
        """
        layer = self.chosen_layer(self.layer_picker)
        self._input = layer
        return self.prepare_scan()(input_scan(layer), self._show_warning)

    def show_result(self, result: Any) -> None:
        """Turn a task result into layers (main thread); by default ``show_result_for`` the input layer."""
        self.show_result_for(self._input, result)

    def prepare_scan(self) -> Callable[[Any, Callable[[str], None]], tuple[tuple[Any, ...], dict[str, Any]]]:
        """Read the controls (main thread) and return ``prepare(scan, warn) -> (args, options)``.

        ``prepare`` must not touch Qt (batch runs call it in the worker); ``warn(message)``
        reports a problem with that scan (a notification).
        """
        raise NotImplementedError

    def show_result_for(self, layer: Any, result: Any) -> None:
        """Turn the result of the run on ``layer`` into layers named after it (main thread)."""
        raise NotImplementedError

    def output_paths(self, out_dir: Path, name: str) -> tuple[Path, ...]:
        """The files ``save_result`` writes for the scan file ``name`` (checked before a folder run)."""
        return (out_dir / name,)

    def save_result(self, result: Any, out_dir: Path, name: str, scan: Any) -> tuple[Path, ...]:
        """Write the result of the scan file ``name`` into ``out_dir`` (worker thread); the paths written."""
        raise NotImplementedError

    # -- optional rows
    def add_batch_row(self) -> BatchControl:
        """Add the *Run on* row (this layer / every image layer / a folder)."""
        self.batch = BatchControl(self)
        self.form.addRow("Run on", self.batch)
        self.batch.changed.connect(lambda mode: self.layer_picker.setEnabled(mode == "layer"))
        self.remember_controls(run_on=self.batch.combo, input_folder=self.batch.input_folder,
                               output_folder=self.batch.output_folder)
        return self.batch

    def add_slice_axis_row(self) -> SliceAxisControl:
        """Add the *Slice along* row, following the model and the input layer."""
        self.slice_axis = SliceAxisControl(self)
        self.form.addRow("Slice along", self.slice_axis)

        def update(*_: Any) -> None:
            from ..layers import METADATA_KEY

            layer = self.layer_picker.layer()
            record = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY) if layer is not None else None
            affine = record.get("affine") if isinstance(record, dict) else None
            code, fmt = layer_modality(layer) if layer is not None else ("", "")
            medical = modality_family(code, fmt) in ("MR", "CT") or (
                affine is not None and modality_family(code, fmt) != "microscopy")
            ndim = int(getattr(layer, "ndim", 2)) if layer is not None else 2
            self.slice_axis.update_for(model_config(self.model_picker.spec()), ndim, affine, medical)

        self.model_picker.changed.connect(update)
        self.layer_picker.currentTextChanged.connect(update)
        update()
        return self.slice_axis

    def batch_layers(self) -> list[Any]:
        """The layers *every image layer* runs on: the image layers, less the results of medidiff widgets."""
        layers = self.layer_picker._matching()
        return [layer for layer in layers
                if not any(str(k).startswith(("medidiff_denoise", "medidiff_anomaly", "medidiff_fit"))
                           for k in (layer.metadata or {}))]

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
        axis = self.slice_axis.axis() if self.slice_axis is not None else None  # None: nothing to choose
        mode = self.batch.mode() if self.batch is not None else "layer"
        if mode != "layer":
            return self._make_batch_job(mode, axis)
        args, options = self.job_arguments()
        options = dict(options)
        options.setdefault("device", self.device_picker.device())
        # what the result layers record: the options of this run, not whatever the controls show later
        self._options = {k: v for k, v in options.items() if k != "device"}
        return self._job(self.model_picker.spec(), args, options, axis)

    def _make_batch_job(self, mode: str, axis: int | None) -> Generator[Any, None, Any]:
        from medidiff.errors import MedidiffError

        assert self.batch is not None
        if mode == "layers":
            layers = self.batch_layers()
            if not layers:
                raise MedidiffError(f"{self.title}: no image layers to run on; open a scan first")
            items = [BatchItem(layer.name, layer=layer, scan=input_scan(layer)) for layer in layers]
            save, out_dir = None, None
        else:
            out_text = self.batch.output_folder.text()
            items = folder_items(self.batch.input_folder.text(), out_text, self.output_paths)
            save, out_dir = self.save_result, Path(out_text).expanduser()
        prepare = self.prepare_scan()
        opts = self.options() if hasattr(self, "options") else {}
        self._options = {k: v for k, v in opts.items() if k != "device"} if isinstance(opts, dict) else {}
        device = self.device_picker.device()

        def in_worker(scan: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return prepare(scan, lambda message: warnings.warn(message, stacklevel=2))

        return self._batch_job(self.model_picker.spec(), items, in_worker, device, axis, save, out_dir)

    def _job(self, spec: str, args: tuple[Any, ...], options: dict[str, Any],
             axis: int | None = None) -> Generator[Any, None, Any]:
        # runs in the worker thread
        module, name = self.task.split(":")
        steps = getattr(importlib.import_module(module), name)
        model = along_axis(self.load_model(spec, options["device"]), axis)
        self.job_model = model
        with watch_network(model, self.runner):
            return (yield from steps(model, *args, **options))

    def _batch_job(self, spec: str, items: list[BatchItem], prepare: Callable[[Any], Any], device: str,
                   axis: int | None, save: Any, out_dir: Path | None) -> Generator[Any, None, Any]:
        # runs in the worker thread
        module, name = self.task.split(":")
        steps = getattr(importlib.import_module(module), name)
        model = along_axis(self.load_model(spec, device), axis)
        self.job_model = model
        with watch_network(model, self.runner):
            return (yield from batch_job(model, steps, items, prepare, device, save, out_dir))

    def _batch_item_done(self, event: Any) -> None:
        """A batch item is done (main thread): its result layers, unless the run was cancelled."""
        if not isinstance(event, BatchProgress) or event.result is None or self.runner.cancel_requested:
            return
        self._show_safely(lambda: self.show_result_for(event.layer, event.result), event.result)

    # -- run / cancel
    def run(self) -> None:
        """Start the task in a worker thread (no-op while one runs)."""
        if self.runner.running:
            return
        from medidiff.errors import MedidiffError

        self.result_label.setText("")
        try:
            job = self.make_job()
        except Exception as exc:  # a bad input is one line; anything else is a bug, logged with its traceback
            from napari.utils.notifications import show_error

            from .worker import error_message

            if not isinstance(exc, (MedidiffError, ValueError)):
                LOG.exception("%s: could not start", self.title)
            message = str(exc) if isinstance(exc, (MedidiffError, ValueError)) else error_message(self.title, exc)
            message = in_widget_words(message, self.title)
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

        show_warning(f"{self.title}: {in_widget_words(message, self.title)}")

    def _on_succeeded(self, result: Any) -> None:
        if isinstance(result, BatchOutcome):
            where = f"; saved in {result.out_dir}" if result.out_dir is not None else ""
            self.result_label.setText(f"{len(result.names)} of {result.total} done{where}")
            return
        self._show_safely(lambda: self.show_result(result), result)

    def _show_safely(self, show: Callable[[], None], result: Any) -> None:
        try:
            show()
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
