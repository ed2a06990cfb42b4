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


def _unhelpful(**advice):
    """The self-check's real warning text for a scan it estimates at -0.5 dB (``advice``: fit_advice's)."""
    import warnings

    from medidiff.tasks.denoise_selfcheck import SelfCheck, warn_if_unhelpful

    check = SelfCheck(gain_db=-0.5, mse=1.1, noise_var=1.0, consistent=True, stderr_db=0.1, denoiser="tweedie",
                      region="foreground", voxels=10, total=10)
    bad = SelfCheck(**{**check.to_dict(), "mse": -0.5, "consistent": False})  # SURE below zero: noise level too high
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for c in (check, bad):
            warn_if_unhelpful(c, "scan.nii", **advice)
    return [str(w.message) for w in caught]


def test_every_task_advice_is_in_the_widgets_own_words():
    """The self-check's advice names CLI options; each widget's table must cover every variant it can get."""
    from medidiff.tasks.fit import fit_advice
    from napari_medidiff.widgets.wording import in_widget_words

    denoise = _unhelpful()
    fit = [m for clock in (True, False) for m in _unhelpful(**fit_advice(clock, 5.0, 80, False))]  # no sigma control
    assert len(denoise) == 2 and len(fit) == 4 and all("--" in m for m in denoise + fit)  # they do name options
    for title, messages in (("Denoise", denoise), ("Fit to this scan", fit)):
        for message in messages:
            plain = in_widget_words(message, title)
            assert "--" not in plain and plain.startswith("scan.nii: "), (title, plain)
    assert "the Fit to this scan widget" in in_widget_words(denoise[0], "Denoise")
    assert "Time budget" in in_widget_words(fit[0], "Fit to this scan")
    assert "Step limit" in in_widget_words(fit[2], "Fit to this scan")


@pytest.mark.filterwarnings("default")
def test_task_warnings_and_errors_name_the_widgets_controls(make_napari_viewer, qtbot, notifications):
    """A warning and an error raised inside a running job reach the viewer in the widget's words."""
    import warnings

    from medidiff.core.progress import Progress
    from medidiff.errors import InvalidScanError

    widget = _denoise(make_napari_viewer())
    [advice, _] = _unhelpful()

    def job():
        warnings.warn(advice, UserWarning)
        yield Progress(1, 2, "denoising")
        raise InvalidScanError("scan.nii", "its noise is beyond the noisiest level the model was trained on; "
                                           "lower --strength or --sigma, or use a model trained for this noise")

    with qtbot.waitSignal(widget.runner.finished, timeout=30_000):
        widget.runner.start(job())
    qtbot.wait(50)
    shown = [m for m in notifications.messages() if "scan.nii" in m]
    assert any("try the Fit to this scan widget" in m for m in shown), shown
    assert any("lower Strength or Noise level" in m for m in shown), shown
    assert "lower Strength or Noise level" in widget.controls.status.text()
    assert not any("--" in m for m in shown), shown
