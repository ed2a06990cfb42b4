"""The task widgets' remembered settings: the model, the device and every widget's parameters.

Stored as napari plugin settings (npe2 ``configurations`` in ``napari.yaml``, napari >= 0.6: a
``medidiff.yaml`` next to napari's own settings, editable in Preferences). Where those are not
available (older napari, plugin not registered), a small JSON file under platformdirs' user
config folder is used instead.

The model is remembered by *name* when it is a built-in or imported model (``mr2d``), so a
settings file never pins an absolute path that moves with the installation; only a model
folder that has no name is remembered by its path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QAbstractButton, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox, QWidget

__all__ = ["PLUGIN_NAME", "Preferences", "preferences", "control_value", "set_control_value"]

LOG = logging.getLogger(__name__)
PLUGIN_NAME = "medidiff"
_SECTION = "medidiff"  # the configuration section in napari.yaml: get_plugin_settings("medidiff").medidiff
_TEXT_KEYS = ("model_folder", "device")
_PARAMETERS = "parameters"  # {widget title: {control name: value}}; JSON text in napari's settings


class Preferences:
    """The widgets' remembered choices across napari sessions (see the module docstring)."""

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

    def _read_json(self) -> dict[str, Any]:
        try:
            raw = json.loads(self._json_path.read_text())  # type: ignore[union-attr]
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def _write_json(self, key: str, value: Any) -> None:
        from medidiff.io.atomic import atomic_file

        data = self._read_json()
        data[key] = value
        try:
            with atomic_file(self._json_path, overwrite=True) as tmp:  # type: ignore[arg-type]
                tmp.write_text(json.dumps(data, indent=2) + "\n")
        except OSError as exc:  # a read-only home must not break a run
            LOG.warning("could not save widget settings to %s: %s", self._json_path, exc)

    def get(self, key: str, default: str = "") -> str:
        """The stored value of ``key`` (``model_folder`` or ``device``), or ``default``."""
        if key not in _TEXT_KEYS:
            raise KeyError(key)
        if self._section is not None:
            value = getattr(self._section, key, None)
        else:
            value = self._read_json().get(key)
        return str(value) if value else default

    def set(self, key: str, value: str) -> None:
        """Store ``key`` (napari settings save themselves; the JSON file is replaced atomically)."""
        if key not in _TEXT_KEYS:
            raise KeyError(key)
        if self._section is not None:
            if getattr(self._section, key, None) != value:
                setattr(self._section, key, value)
            return
        self._write_json(key, value)

    def _all_parameters(self) -> dict[str, Any]:
        if self._section is not None:
            try:
                stored = json.loads(getattr(self._section, _PARAMETERS, None) or "{}")
            except ValueError:  # a hand-edited settings file: start afresh
                stored = {}
        else:
            stored = self._read_json().get(_PARAMETERS)
        return dict(stored) if isinstance(stored, dict) else {}

    def parameters(self, widget: str) -> dict[str, Any]:
        """The parameters last used in the widget titled ``widget`` (``{}`` if none)."""
        found = self._all_parameters().get(widget)
        return dict(found) if isinstance(found, dict) else {}

    def set_parameters(self, widget: str, values: dict[str, Any]) -> None:
        """Remember ``values`` (plain JSON values) for the widget titled ``widget``."""
        stored = self._all_parameters()
        if stored.get(widget) == values:
            return
        stored[widget] = dict(values)
        if self._section is not None:
            setattr(self._section, _PARAMETERS, json.dumps(stored, sort_keys=True))  # napari saves on assignment
        else:
            self._write_json(_PARAMETERS, stored)


def preferences() -> Preferences:
    """A fresh view on the stored preferences (cheap; napari caches its settings objects)."""
    return Preferences()


def control_value(widget: QWidget) -> Any:
    """The value of a form control as plain JSON (combo text, spin value, check state, line text)."""
    if isinstance(widget, QComboBox):
        return widget.currentText()
    if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        return widget.value()
    if isinstance(widget, QAbstractButton):
        return widget.isChecked()
    if isinstance(widget, QLineEdit):
        return widget.text()
    raise TypeError(f"cannot remember a {type(widget).__name__}")


def set_control_value(widget: QWidget, value: Any) -> bool:
    """Put a remembered ``value`` back into a control; False when it no longer fits (left unchanged)."""
    try:
        if isinstance(widget, QComboBox):
            index = widget.findText(str(value))
            if index < 0:
                return False
            widget.setCurrentIndex(index)
        elif isinstance(widget, QSpinBox):
            if not widget.minimum() <= int(value) <= widget.maximum():
                return False
            widget.setValue(int(value))
        elif isinstance(widget, QDoubleSpinBox):
            if not widget.minimum() <= float(value) <= widget.maximum():
                return False
            widget.setValue(float(value))
        elif isinstance(widget, QAbstractButton):
            widget.setChecked(bool(value))
        elif isinstance(widget, QLineEdit):
            widget.setText(str(value))
        else:
            return False
    except (TypeError, ValueError):  # a hand-edited settings file: keep the default
        return False
    return True
