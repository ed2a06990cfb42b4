"""The Train widget in a real viewer: a tiny model trained on an open layer within a time budget,
added to every model list, and usable by the Denoise widget; Cancel adds no model."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from medidiff.io import Scan  # noqa: E402
from viewer_helpers import RUN_TIMEOUT_MS, add_scan, cancel_after, dock, run_widget  # noqa: E402

pytestmark = pytest.mark.qt


@pytest.fixture()
def mr_train_layer_scan(mr_train_scan) -> Scan:
    return Scan(mr_train_scan.array[:6].copy(), mr_train_scan.spacing, mr_train_scan.affine, "OT", {})


def _train_widget(viewer):
    from napari_medidiff.widgets.train import TrainWidget

    widget = dock(viewer, TrainWidget)
    widget.device_picker.setCurrentIndex(widget.device_picker.findData("cpu"))
    widget.image_size.setValue(32)
    widget.batch_size.setValue(4)
    return widget


def test_train_on_an_open_layer_then_denoise_with_it(make_napari_viewer, qtbot, mr_train_layer_scan, mr_volume):
    from medidiff.model_store.registry import list_models
    from napari_medidiff.widgets.denoise import DenoiseWidget

    viewer = make_napari_viewer()
    add_scan(viewer, mr_train_layer_scan, "epi train")
    denoiser = dock(viewer, DenoiseWidget)  # open before training: its list must learn the new model
    widget = _train_widget(viewer)
    assert [i.text() for i in widget.layers.selectedItems()] == ["epi train"]
    assert widget.name.text() == "epi-train-model"
    widget.modality.setCurrentText("MR")
    widget.minutes.setValue(0.05)  # 3 s
    widget.max_steps.setValue(100_000)
    widget.preview_every.setValue(2)
    losses = []
    widget.runner.progress.connect(lambda e: losses.append(e.values["loss"]) if "loss" in (e.values or {}) else None)
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    assert len(losses) >= 2 and len(widget.loss_curve.values) == len(losses)
    assert "time budget reached" in widget.result_label.text()
    shown = widget.preview.pixmap()
    assert shown is not None and not shown.isNull() and shown.width() > 0  # samples drawn as it trained
    entry = {e.name: e for e in list_models()}["epi-train-model"]
    assert entry.source == "user" and entry.modality == "MR"
    combo = denoiser.model_picker.combo
    assert combo.findText("epi-train-model") >= 0
    # the new model denoises a held-out slice
    denoiser.model_picker.set_spec("epi-train-model")
    held_out = Scan(mr_volume.array[20].copy(), mr_volume.spacing[1:], mr_volume.affine, "MR", {})
    add_scan(viewer, held_out, "held out")
    denoiser.layer_picker.set_layer("held out")
    denoiser.noise.setCurrentText("gaussian")
    denoiser.device_picker.setCurrentIndex(denoiser.device_picker.findData("cpu"))
    assert run_widget(qtbot, denoiser) == "succeeded", denoiser.controls.status.text()
    assert viewer.layers["held out denoised"].data.shape == held_out.shape
    # the same name again is refused with one line
    widget.name.setText("epi-train-model")
    widget.controls.run_button.click()
    assert not widget.runner.running and "exists already" in widget.controls.status.text()


def test_cancelled_training_adds_no_model(make_napari_viewer, qtbot, mr_train_layer_scan):
    from medidiff.model_store.registry import list_models

    viewer = make_napari_viewer()
    add_scan(viewer, mr_train_layer_scan, "epi train")
    widget = _train_widget(viewer)
    widget.name.setText("never-made")
    widget.preview_every.setValue(0)
    cancel_after(widget, widget.runner.progress, 3)
    with qtbot.waitSignal(widget.runner.finished, timeout=RUN_TIMEOUT_MS):
        widget.controls.run_button.click()
    assert widget.runner.outcome == "cancelled"
    assert widget.runner.steps_after_cancel is not None and widget.runner.steps_after_cancel <= 1
    assert "never-made" not in {e.name for e in list_models()}
