"""The controls users expect, in a real viewer: modality, a model that fits the layer, remembered
parameters, plain words, and the task's warnings as notifications."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from medidiff.choices import DenoiseMethod, NoiseChoice  # noqa: E402
from medidiff.io import Scan  # noqa: E402
from viewer_helpers import add_scan, dock, run_widget  # noqa: E402

pytestmark = pytest.mark.qt


@pytest.fixture()
def plain_slice(mr_volume) -> Scan:
    """One real MR slice that records no modality (as a NIfTI would): modality OT."""
    return Scan(mr_volume.array[20].copy(), mr_volume.spacing[1:], mr_volume.affine, "OT", {"format": "nifti"})


def _denoise(viewer):
    from napari_medidiff.widgets.denoise import DenoiseWidget

    widget = dock(viewer, DenoiseWidget)
    widget.device_picker.setCurrentIndex(widget.device_picker.findData("cpu"))
    return widget


def test_modality_control_changes_the_noise_model(make_napari_viewer, qtbot, tiny_mr_model, plain_slice):
    viewer = make_napari_viewer()
    add_scan(viewer, plain_slice, "slice")
    widget = _denoise(viewer)
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    assert widget.noise.currentText() == "auto"
    found = {}
    for label in ("from the file", "MR", "CT", "other"):
        widget.modality.setCurrentText(label)
        assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
        layer = viewer.layers["slice denoised"]
        found[label] = (layer.metadata["medidiff_denoise"]["noise_model"], widget.result_label.text())
        viewer.layers.remove(layer)
    assert found["MR"][0] == "rician" and found["CT"][0] == "gaussian" and found["other"][0] == "gaussian"
    # the file records no modality: the scan is taken to be what the (MR) model is for
    assert found["from the file"][0] == "rician"
    # plain words, not jargon
    gain = r"(; estimated gain: .*)?"  # the self-check's line, when it ran
    assert re.fullmatch(r"noise level \d+\.\d \(Rician, estimated; MR bias removed\)" + gain, found["MR"][1]), found["MR"][1]
    assert re.fullmatch(r"noise level \d+\.\d \(Gaussian, estimated\)" + gain, found["CT"][1]), found["CT"][1]


def test_model_picker_follows_the_layer_modality(make_napari_viewer, plain_slice):
    viewer = make_napari_viewer()
    widget = _denoise(viewer)
    add_scan(viewer, plain_slice.with_array(plain_slice.array, modality="MR"), "mr")
    assert widget.model_picker.name() == "mr2d"  # not ct2d or micro2d, which sort first
    add_scan(viewer, plain_slice.with_array(plain_slice.array * 10 - 1000, modality="CT"), "ct")
    widget.layer_picker.set_layer("ct")
    assert widget.model_picker.name() == "ct2d"
    widget.layer_picker.set_layer("mr")
    assert widget.model_picker.name() == "mr2d"
    add_scan(viewer, plain_slice.with_array(plain_slice.array, meta={"format": "tiff"}), "cells")
    widget.layer_picker.set_layer("cells")  # a TIFF that records no modality: microscopy
    assert widget.model_picker.name() == "micro2d"
    widget.layer_picker.set_layer("mr")
    assert widget.model_picker.name() == "mr2d"
    widget.modality.setCurrentText("microscopy")  # the user says what it is
    assert widget.model_picker.name() == "micro2d"
    # once the user picks a model by hand, the layer no longer changes it
    widget.model_picker.combo.setCurrentIndex(widget.model_picker.combo.findText("mr2d"))
    widget.model_picker.combo.activated.emit(widget.model_picker.combo.currentIndex())
    widget.layer_picker.set_layer("cells")
    assert widget.model_picker.name() == "mr2d"


def test_every_parameter_is_remembered_and_the_model_by_name(make_napari_viewer, qtbot, plain_slice):
    from napari import settings

    from napari_medidiff.widgets.denoise import DenoiseWidget
    from medidiff.model_store.registry import find_model

    viewer = make_napari_viewer()
    add_scan(viewer, plain_slice, "slice")
    first = _denoise(viewer)
    first.model_picker.set_spec(str(find_model("mr2d")))  # chosen by folder: remembered by name
    chosen = {"modality": "MR", "method": "ddim", "noise": "gaussian", "sigma": 12.5, "strength": 1.5,
              "steps": 2, "samples": 3, "seed": 11, "batch_size": 2}
    for name, value in chosen.items():
        control = getattr(first, name)
        control.setCurrentText(value) if isinstance(value, str) else control.setValue(value)
    assert run_widget(qtbot, first) == "succeeded", first.controls.status.text()
    assert settings.get_plugin_settings("medidiff").medidiff.model_folder == "mr2d"
    settings._clear_plugin_settings_cache()  # a new napari session reads the saved file again
    second = DenoiseWidget(viewer)
    assert second.model_picker.name() == "mr2d"
    for name, value in chosen.items():
        control = getattr(second, name)
        got = control.currentText() if isinstance(value, str) else control.value()
        assert got == value, name
    second.deleteLater()


def test_methods_and_noise_models_have_plain_tooltips(make_napari_viewer):
    from qtpy.QtCore import Qt

    widget = _denoise(make_napari_viewer())
    for combo, values in ((widget.method, DenoiseMethod.values()), (widget.noise, NoiseChoice.values())):
        assert [combo.itemText(i) for i in range(combo.count())] == list(values)  # the lists of medidiff.choices
        for i in range(combo.count()):
            tip = combo.itemData(i, Qt.ItemDataRole.ToolTipRole)
            assert tip and "\n" not in tip and "diffusion" not in tip.lower()


@pytest.mark.filterwarnings("default")
def test_task_warning_becomes_a_notification_every_run(make_napari_viewer, qtbot, tiny_mr_model, plain_slice,
                                                      notifications):
    from napari.utils.notifications import NotificationSeverity

    viewer = make_napari_viewer()
    # 0.5 mm pixels: 4x finer than the 2 mm the model was trained at
    fine = Scan(plain_slice.array, (0.5, 0.5), np.diag([0.5, 0.5, 0.5, 1.0]), "MR", {})
    add_scan(viewer, fine, "fine")
    widget = _denoise(viewer)
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    for _ in range(2):  # Python shows a repeated warning once; the viewer must show it each run
        assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
        qtbot.wait(50)
    warned = [str(n.message) for n in notifications if n.severity == NotificationSeverity.WARNING]
    spacing = [m for m in warned if m.startswith("Denoise: ") and "trained at 2x2 mm" in m]
    assert len(spacing) == 2, warned


def test_a_model_for_another_modality_is_a_warning(make_napari_viewer, qtbot, plain_slice, notifications):
    from napari.utils.notifications import NotificationSeverity

    viewer = make_napari_viewer()
    add_scan(viewer, plain_slice.with_array(plain_slice.array, modality="MR"), "mr")
    widget = _denoise(viewer)
    widget.model_picker.set_spec("micro2d")
    assert run_widget(qtbot, widget) in ("succeeded", "failed")  # the warning comes first either way
    warned = [str(n.message) for n in notifications if n.severity == NotificationSeverity.WARNING]
    assert any("micro2d is for microscopy images but this scan is MR" in m for m in warned), warned
