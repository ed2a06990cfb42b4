"""The pickers every task widget shows: the model, the device and the input layer.

Nothing here imports torch: the device list is built the first time the picker is opened (or
when ``refresh()`` is called), and models are loaded by ``worker.ModelCache`` inside the worker.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QSizePolicy, QToolButton, QWidget

from .preferences import Preferences, preferences

__all__ = ["model_config", "model_label", "modality_family", "layer_modality", "ModelPicker", "DevicePicker",
           "LayerPicker"]

LOG = logging.getLogger(__name__)
_MODALITY_ROLE = Qt.ItemDataRole.UserRole + 1  # the model's modality, on each item
_NAME_ROLE = Qt.ItemDataRole.UserRole + 2  # the registered model name ("" for a browsed folder)
_MICROSCOPY = {"SM", "GM", "XC", "MICROSCOPY", "FLUORESCENCE", "WIDEFIELD", "CONFOCAL"}


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


def modality_family(modality: str | None, source_format: str | None = None) -> str:
    """``"MR"``, ``"CT"``, ``"microscopy"`` or ``""``: what a scan or a model is about, for matching them.

    A TIFF without a modality counts as microscopy (as the denoise task's ``noise="auto"`` does).
    """
    code = (modality or "").strip().upper()
    if code in ("MR", "MRI"):
        return "MR"
    if code == "CT":
        return "CT"
    if code in _MICROSCOPY or (code in ("", "OT") and (source_format or "").lower().lstrip(".") in ("tif", "tiff")):
        return "microscopy"
    return ""


def layer_modality(layer: Any) -> tuple[str, str]:
    """``(modality, source format)`` a layer's scan record says (``("", "")`` for a plain layer)."""
    from ..layers import METADATA_KEY

    record = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY)
    if not isinstance(record, dict):
        return "", ""
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    return str(record.get("modality") or ""), str(meta.get("format") or "")


class ModelPicker(QWidget):
    """An editable list of known models (built-in and user models) plus a folder browser.

    The text is a model name or a model folder path; the last one used is remembered (by name
    when it has one). Until the user picks a model by hand, ``prefer_modality`` follows the
    input layer: an MR layer gets an MR model, not whichever model sorts first.
    """

    changed = Signal(str)

    def __init__(self, prefs: Preferences | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._prefs = prefs or preferences()
        self.chosen_by_hand = False
        self.combo = QComboBox(self)
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.combo.setToolTip("A model name or a model folder (with config.json and weights.safetensors)")
        self.browse_button = QToolButton(self)
        self.browse_button.setText("…")
        self.browse_button.setToolTip("Choose a model folder")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self.browse_button)
        self.reload()
        remembered = self._prefs.get("model_folder")
        if remembered:
            self.set_spec(remembered)
        # listeners want the model (a folder), not the short name shown
        self.combo.currentTextChanged.connect(lambda _text: self.changed.emit(self.spec()))
        self.combo.activated.connect(self._picked_by_hand)  # user interaction only
        self.browse_button.clicked.connect(self._browse)

    def reload(self) -> None:
        """Re-read the model list (built-in and user models), keeping the current choice."""
        current = self.spec() if self.combo.count() else ""
        self.combo.blockSignals(True)
        self.combo.clear()
        try:
            from medidiff.model_store.registry import list_models

            entries = list_models(warn=False)
        except Exception as exc:  # a broken user model folder must not stop the widget from opening
            LOG.warning("could not list models: %s", exc)
            entries = []
        for entry in entries:
            self.combo.addItem(entry.name, str(entry.path))
            index = self.combo.count() - 1
            self.combo.setItemData(index, f"{entry.source}: {entry.path}\n{entry.summary}", Qt.ItemDataRole.ToolTipRole)
            self.combo.setItemData(index, entry.modality, _MODALITY_ROLE)
            self.combo.setItemData(index, entry.name, _NAME_ROLE)
        self.combo.blockSignals(False)
        if current:
            self.set_spec(current)

    def _picked_by_hand(self, *_: Any) -> None:
        self.chosen_by_hand = True

    def _browse(self) -> None:
        start = self.spec() if Path(self.spec()).expanduser().is_dir() else str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Choose a medidiff model folder", start)
        if folder:
            self.set_spec(folder)
            self.chosen_by_hand = True

    def spec(self) -> str:
        """The chosen model's folder, or the model name or folder typed in."""
        text = self.combo.currentText().strip()
        index = self.combo.currentIndex()
        if index >= 0 and self.combo.itemText(index) == text and self.combo.itemData(index):
            return str(self.combo.itemData(index))
        return text

    def name(self) -> str:
        """The chosen model's registered name when it has one (``mr2d``), else what ``spec()`` gives."""
        index = self.combo.currentIndex()
        if index >= 0 and self.combo.itemText(index) == self.combo.currentText().strip():
            registered = self.combo.itemData(index, _NAME_ROLE)
            if registered:
                return str(registered)
        return self.spec()

    def modality(self) -> str:
        """The chosen model's modality family (``modality_family``), ``""`` when unknown."""
        index = self.combo.currentIndex()
        if index >= 0 and self.combo.itemText(index) == self.combo.currentText().strip():
            stored = self.combo.itemData(index, _MODALITY_ROLE)
            if stored is not None:
                return modality_family(str(stored))
        cfg = model_config(self.spec()) or {}
        return modality_family(str(cfg.get("modality", "")))

    def set_spec(self, spec: str) -> None:
        """Choose ``spec``: a known name or folder is selected; an existing folder is added under a
        short name (its full path in the tooltip); anything else is typed in."""
        for index in range(self.combo.count()):
            if spec in (self.combo.itemText(index), self.combo.itemData(index)):
                self.combo.setCurrentIndex(index)
                return
        if spec and Path(spec).expanduser().is_dir():
            cfg = model_config(spec) or {}
            self.combo.addItem(model_label(spec), spec)
            index = self.combo.count() - 1
            self.combo.setItemData(index, spec, Qt.ItemDataRole.ToolTipRole)
            self.combo.setItemData(index, str(cfg.get("modality", "")), _MODALITY_ROLE)
            self.combo.setCurrentIndex(index)
        else:
            self.combo.setEditText(spec)

    def prefer_modality(self, family: str) -> bool:
        """Switch to a model for ``family`` (``modality_family``) when the current one is for another.

        Does nothing once the user has picked a model by hand, or when no listed model fits.
        Returns whether the choice changed.
        """
        if self.chosen_by_hand or not family or self.modality() == family:
            return False
        for index in range(self.combo.count()):
            if modality_family(str(self.combo.itemData(index, _MODALITY_ROLE) or "")) == family:
                self.combo.setCurrentIndex(index)
                return True
        return False

    def remember(self) -> None:
        """Store the current model for the next session (called when a run starts): its name if it has one."""
        if self.spec():
            self._prefs.set("model_folder", self.name())


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
        self.setToolTip(f"The {layer_type} layer to work on (the list follows the viewer's layers)")
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
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

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
