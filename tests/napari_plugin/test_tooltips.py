"""Every control of every task widget says, in one plain line, what it does (its tooltip)."""

from __future__ import annotations

import importlib

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.qt


@pytest.mark.parametrize("cls_path", ["denoise.DenoiseWidget", "anomaly.AnomalyWidget", "fit.FitWidget",
                                      "train.TrainWidget", "generate.GenerateWidget"])
def test_every_control_has_a_one_line_tooltip(make_napari_viewer, cls_path):
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QFormLayout, QLineEdit

    module, name = cls_path.split(".")
    widget = getattr(importlib.import_module(f"napari_medidiff.widgets.{module}"), name)(make_napari_viewer())
    kinds = (QComboBox, QAbstractSpinBox, QLineEdit, QAbstractButton)
    checked = 0
    for row in range(widget.form.rowCount()):
        item = widget.form.itemAt(row, QFormLayout.ItemRole.FieldRole)
        field = item.widget() if item is not None else None
        if field is None:
            continue
        for control in [field, *field.findChildren(kinds)]:
            if not isinstance(control, kinds) or isinstance(control.parent(), (QComboBox, QAbstractSpinBox)):
                continue  # the line edit inside a combo or spin box is part of it
            label = widget.form.labelForField(field)
            where = f"{name} row {label.text() if label is not None else row}: {type(control).__name__}"
            tip = control.toolTip()
            assert tip and "\n" not in tip, where
            checked += 1
    assert checked >= 6
    widget.deleteLater()
