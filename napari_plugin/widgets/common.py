"""Pieces every task widget shares: remembered choices, model/device/layer pickers, run controls,
and the helpers that add result ``Scan``s to the viewer as layers.

Nothing here imports torch: the device list is built the first time the picker is opened (or
when ``refresh()`` is called), and models are loaded by ``worker.ModelCache`` inside the worker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from medidiff.io.scan import Scan

from ..layers import layer_to_scan, scan_to_layer_data
from .worker import ModelCache, TaskRunner

__all__ = [
    "PLUGIN_NAME",
    "Preferences",
    "preferences",
    "model_config",
    "model_label",
    "ModelPicker",
    "DevicePicker",
    "LayerPicker",
    "RunControls",
    "TaskWidget",
    "add_scan_layer",
    "add_stacked_layer",
    "input_scan",
]

LOG = logging.getLogger(__name__)
PLUGIN_NAME = "medidiff"
_SECTION = "medidiff"  # the configuration section in napari.yaml: get_plugin_settings("medidiff").medidiff
_KEYS = ("model_folder", "device")


# ----------------------------------------------------------------------------- remembered choices


class Preferences:
    """The widgets' remembered choices (``model_folder``, ``device``) across napari sessions.

    Stored as napari plugin settings (npe2 ``configurations``, napari >= 0.6: a
    ``medidiff.yaml`` next to napari's own settings, editable in Preferences). Where those are
    not available (older napari, plugin not registered), a small JSON file under platformdirs'
    user config folder is used instead.
    """

    def __init__(self) -> None:
        self._section = self._napari_section()
        self._json_path: Path | None = None
        if self._section is None:
            from platformdirs import user_config_dir

            self._json_path = Path(user_config_dir("medidiff")) / "napari-widgets.json"

    @staticmethod
    def _napari_section() -> Any | None:
        try:
            from napari.settings import get_plugin_settings

            return getattr(get_plugin_settings(PLUGIN_NAME), _SECTION)
        except (ImportError, KeyError, AttributeError) as exc:
            LOG.info("napari plugin settings unavailable (%s); using a JSON file", exc)
            return None

    @property
    def backend(self) -> str:
        """``"napari"`` or the JSON file path in use (for the status tip and tests)."""
        return "napari" if self._section is not None else str(self._json_path)

    def _read_json(self) -> dict[str, str]:
        try:
            raw = json.loads(self._json_path.read_text())  # type: ignore[union-attr]
        except (OSError, ValueError):
            return {}
        return {k: str(v) for k, v in raw.items() if k in _KEYS} if isinstance(raw, dict) else {}

    def get(self, key: str, default: str = "") -> str:
        """The stored value of ``key`` (one of ``model_folder``, ``device``), or ``default``."""
        if key not in _KEYS:
            raise KeyError(key)
        if self._section is not None:
            value = getattr(self._section, key, None)
        else:
            value = self._read_json().get(key)
        return str(value) if value else default

    def set(self, key: str, value: str) -> None:
        """Store ``key`` (napari settings save themselves; the JSON file is replaced atomically)."""
        if key not in _KEYS:
            raise KeyError(key)
        if self._section is not None:
            if getattr(self._section, key, None) != value:
                setattr(self._section, key, value)
            return
        from medidiff.io.atomic import atomic_file

        data = self._read_json()
        data[key] = value
        try:
            with atomic_file(self._json_path, overwrite=True) as tmp:  # type: ignore[arg-type]
                tmp.write_text(json.dumps(data, indent=2) + "\n")
        except OSError as exc:  # a read-only home must not break a run
            LOG.warning("could not save widget settings to %s: %s", self._json_path, exc)


def preferences() -> Preferences:
    """A fresh view on the stored preferences (cheap; napari caches its settings objects)."""
    return Preferences()


# ----------------------------------------------------------------------------- models


def model_config(spec: str) -> dict[str, Any] | None:
    """The ``config.json`` of a model name or folder, read without torch; None if it is not one."""
    if not spec.strip():
        return None
    try:
        from medidiff.model_store.registry import find_model

        folder = find_model(spec.strip())
        raw = json.loads((Path(folder) / "config.json").read_text())
    except Exception:  # any problem is reported properly when the run loads the model
        return None
    return raw if isinstance(raw, dict) else None


def model_label(folder: str | Path | None) -> str:
    """A short name for a model folder: its name, or ``run/model`` for a training run's ``model`` folder."""
    if not folder:
        return "model"
    path = Path(folder)
    return f"{path.parent.name}/{path.name}" if path.name == "model" and path.parent.name else path.name


class ModelPicker(QWidget):
    """An editable list of known models (built-in and user models) plus a folder browser.

    The text is a model name or a model folder path; the last one used is remembered.
    """

    changed = Signal(str)

    def __init__(self, prefs: Preferences | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._prefs = prefs or preferences()
        self.combo = QComboBox(self)
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.combo.setToolTip("A model folder (with config.json and weights.safetensors) or a model name")
        self.browse_button = QToolButton(self)
        self.browse_button.setText("…")
        self.browse_button.setToolTip("Choose a model folder")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self.browse_button)
        self._fill()
        remembered = self._prefs.get("model_folder")
        if remembered:
            self.set_spec(remembered)
        # listeners want the model (a folder), not the short name shown
        self.combo.currentTextChanged.connect(lambda _text: self.changed.emit(self.spec()))
        self.browse_button.clicked.connect(self._browse)

    def _fill(self) -> None:
        try:
            from medidiff.model_store.registry import list_models

            entries = list_models()
        except Exception as exc:  # a broken user model folder must not stop the widget from opening
            LOG.warning("could not list models: %s", exc)
            entries = []
        for entry in entries:
            self.combo.addItem(entry.name, str(entry.path))
            self.combo.setItemData(self.combo.count() - 1, f"{entry.source}: {entry.path}\n{entry.summary}",
                                   Qt.ItemDataRole.ToolTipRole)

    def _browse(self) -> None:
        start = self.spec() if Path(self.spec()).expanduser().is_dir() else str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Choose a medidiff model folder", start)
        if folder:
            self.set_spec(folder)

    def spec(self) -> str:
        """The chosen model's folder, or the model name or folder typed in."""
        text = self.combo.currentText().strip()
        index = self.combo.currentIndex()
        if index >= 0 and self.combo.itemText(index) == text and self.combo.itemData(index):
            return str(self.combo.itemData(index))
        return text

    def set_spec(self, spec: str) -> None:
        """Choose ``spec``: a known name or folder is selected; an existing folder is added under a
        short name (its full path in the tooltip); anything else is typed in."""
        for index in range(self.combo.count()):
            if spec in (self.combo.itemText(index), self.combo.itemData(index)):
                self.combo.setCurrentIndex(index)
                return
        if spec and Path(spec).expanduser().is_dir():
            self.combo.addItem(model_label(spec), spec)
            self.combo.setItemData(self.combo.count() - 1, spec, Qt.ItemDataRole.ToolTipRole)
            self.combo.setCurrentIndex(self.combo.count() - 1)
        else:
            self.combo.setEditText(spec)

    def remember(self) -> None:
        """Store the current model for the next session (called when a run starts)."""
        if self.spec():
            self._prefs.set("model_folder", self.spec())


class DevicePicker(QComboBox):
    """Where to run: ``auto``, ``cpu``, and each working CUDA/MPS device.

    The full list needs torch, so it is built the first time the list is opened (or on
    ``refresh()``); until then it shows ``auto``, ``cpu`` and the remembered choice.
    """

    def __init__(self, prefs: Preferences | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._prefs = prefs or preferences()
        self._probed = False
        remembered = self._prefs.get("device", "auto")
        for name in dict.fromkeys(["auto", remembered, "cpu"]):
            self.addItem(name, name)
        self.setCurrentIndex(self.findData(remembered))
        self.setToolTip("auto = CUDA, then Apple MPS, then CPU")

    def refresh(self) -> None:
        """Replace the items with ``medidiff.core.devices.available_devices()`` (imports torch)."""
        from medidiff.core.devices import available_devices

        current = self.device()
        self.blockSignals(True)
        self.clear()
        for info in available_devices():
            self.addItem(info.label, info.name)
        if self.findData(current) < 0:  # e.g. a remembered cuda:1 on a machine without it
            current = "auto"
        self.setCurrentIndex(self.findData(current))
        self.blockSignals(False)
        self._probed = True

    def showPopup(self) -> None:  # noqa: N802 (Qt name)
        if not self._probed:
            self.refresh()
        super().showPopup()

    def device(self) -> str:
        """The chosen device name (``auto``, ``cpu``, ``cuda:0``, ``mps``)."""
        return str(self.currentData() or "auto")

    def remember(self) -> None:
        """Store the current device for the next session."""
        self._prefs.set("device", self.device())


class LayerPicker(QComboBox):
    """The viewer's layers of one type (``"image"`` or ``"labels"``), kept in sync with the layer list."""

    def __init__(self, viewer: Any, layer_type: str = "image", optional: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._layer_type = layer_type
        self._optional = optional
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved, events.changed):
            event.connect(self.refresh)
        self.refresh()

    def _matching(self) -> list[Any]:
        import napari.layers

        cls = {"image": napari.layers.Image, "labels": napari.layers.Labels}[self._layer_type]
        return [layer for layer in self._viewer.layers if isinstance(layer, cls)]

    def refresh(self, *_: Any) -> None:
        """Re-read the layer list, keeping the current choice when it still exists."""
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        if self._optional:
            self.addItem("(none)")
        for layer in self._matching():
            self.addItem(layer.name)
        index = self.findText(current)
        if index < 0 and not self._optional:
            # a new layer is the one the user most likely wants to work on
            index = self.count() - 1
        self.setCurrentIndex(max(index, 0))
        self.blockSignals(False)

    def showPopup(self) -> None:  # noqa: N802 (Qt name)
        self.refresh()  # catches renamed layers, which the layer list's events do not report
        super().showPopup()

    def layer(self) -> Any | None:
        """The chosen layer, or None."""
        name = self.currentText()
        for layer in self._matching():
            if layer.name == name:
                return layer
        return None

    def set_layer(self, name: str) -> None:
        """Choose the layer called ``name``."""
        self.refresh()
        index = self.findText(name)
        if index >= 0:
            self.setCurrentIndex(index)


class RunControls(QWidget):
    """A Run / Cancel button pair, a progress bar and a one-line status."""

    def __init__(self, run_text: str = "Run", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.run_button = QPushButton(run_text, self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)

    def set_running(self, running: bool, message: str = "") -> None:
        """Enable Cancel while running, Run otherwise; show ``message``."""
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress_bar.setRange(0, 0)  # busy until the first Progress says how many steps
        elif self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1)
        self.status.setText(message)

    def show_progress(self, event: Any) -> None:
        """Move the bar to a ``medidiff.core.progress.Progress`` event."""
        total = max(int(event.total), 1)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(min(int(event.step), total))
        text = event.message or ""
        if event.values:
            text += "  " + "  ".join(f"{k} {v:.4g}" for k, v in event.values.items())
        self.status.setText(text.strip())


# ----------------------------------------------------------------------------- layers <-> scans


def input_scan(layer: Any) -> Scan:
    """The ``Scan`` of an input layer (geometry from its transform; see ``napari_medidiff.layers``)."""
    return layer_to_scan(layer)


def _merge_metadata(kwargs: dict[str, Any], like: Any | None, extra: dict[str, Any] | None) -> None:
    if like is not None:
        # keep whatever else the input layer carried; the result's own geometry record wins
        kwargs["metadata"] = {**dict(getattr(like, "metadata", {}) or {}), **kwargs["metadata"]}
    if extra:
        kwargs["metadata"] = {**kwargs["metadata"], **extra}


def add_scan_layer(viewer: Any, scan: Scan, name: str, layer_type: str = "image", *, like: Any | None = None,
                   metadata: dict[str, Any] | None = None, **style: Any) -> Any:
    """Add ``scan`` as a new layer (geometry exact via ``scan_to_layer_data``) and return it.

    ``like`` is the input layer whose metadata the result inherits; ``style`` are extra layer
    arguments (``colormap``, ``opacity``, ``blending``, ``contrast_limits``...).
    """
    data, kwargs, kind = scan_to_layer_data(scan, name, layer_type)
    _merge_metadata(kwargs, like, metadata)
    kwargs.update(style)
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def add_stacked_layer(viewer: Any, scans: Sequence[Scan], name: str, layer_type: str = "image", *,
                      metadata: dict[str, Any] | None = None, **style: Any) -> Any:
    """Add same-shaped ``scans`` as one layer with a leading ``sample`` axis (slider), geometry of the first."""
    if not scans:
        raise ValueError("no scans to add")
    data0, kwargs, kind = scan_to_layer_data(scans[0], name, layer_type)
    data = np.stack([scan_to_layer_data(s, name, layer_type)[0] for s in scans]).astype(data0.dtype, copy=False)
    ndim = data0.ndim
    kwargs["scale"] = (1.0, *kwargs["scale"])
    kwargs["translate"] = (0.0, *kwargs.get("translate", (0.0,) * ndim))
    if kwargs.get("affine") is not None:
        affine = np.eye(ndim + 2)
        affine[1:, 1:] = np.asarray(kwargs["affine"])
        kwargs["affine"] = affine
    kwargs["axis_labels"] = ("sample", *kwargs["axis_labels"])
    if "units" in kwargs:
        kwargs["units"] = ("pixel", *kwargs["units"])
    _merge_metadata(kwargs, None, metadata)
    kwargs.update(style)
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


# ----------------------------------------------------------------------------- the widget base


class TaskWidget(QWidget):
    """Model, device, task parameters (subclasses add rows to ``self.form``), Run/Cancel and progress.

    Subclasses implement ``make_job()`` (main thread: read the controls, return a generator
    that runs in the worker thread, yields ``Progress`` and returns the task result) and
    ``show_result(result)`` (main thread: add layers). The loaded model is cached while the
    widget is shown and dropped when it is hidden or closed.
    """

    title = "task"
    run_text = "Run"

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
        self._release_when_done = False
        self.controls.run_button.clicked.connect(self.run)
        self.controls.cancel_button.clicked.connect(self.cancel)
        self.runner.progress.connect(self.controls.show_progress)
        self.runner.succeeded.connect(self._on_succeeded)
        self.runner.failed.connect(lambda message: self.controls.status.setText(message))
        self.runner.finished.connect(self._on_finished)

    # -- to implement
    def make_job(self) -> Any:
        """Read the controls (main thread) and return the job generator; raise MedidiffError on bad input."""
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
        self.controls.set_running(True, "loading the model…" if not self.model_cache.loaded else "starting…")
        self.runner.start(job)

    def cancel(self) -> None:
        """Stop the running task at its next step."""
        if self.runner.running:
            self.controls.status.setText("cancelling…")
            self.runner.cancel()

    def _on_succeeded(self, result: Any) -> None:
        try:
            self.show_result(result)
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

    def hideEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        # the model is kept only while the widget is open; a minimised window (spontaneous
        # hide) keeps it, and a running job keeps its own reference until it ends
        if not event.spontaneous():
            if self.runner.running:
                self._release_when_done = True
            else:
                self.model_cache.clear()
        super().hideEvent(event)
