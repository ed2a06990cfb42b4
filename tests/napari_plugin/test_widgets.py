"""The task widgets in a real napari viewer (PyQt6; run under ``xvfb-run -a``).

Every run uses the session's tiny MR model on real MR slices (a few slices of nibabel's
example4d EPI volume, which has an oblique affine), so the tasks really run, in a real worker
thread, and the result layers are checked for geometry.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from medidiff.io import Scan  # noqa: E402
from viewer_helpers import add_scan, cancel_after, dock, errors_since, n_records, run_widget, same_geometry  # noqa: E402

pytestmark = pytest.mark.qt

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
README_SHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "napari-denoise.png"


def _save_shot(widget, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert widget.grab().save(str(path))
    return path


# ----------------------------------------------------------------------------- denoise


def test_denoise_widget_end_to_end(make_napari_viewer, qtbot, tiny_mr_model, mr_slices):
    from napari_medidiff.widgets.denoise import DenoiseWidget

    viewer = make_napari_viewer()
    src = add_scan(viewer, mr_slices, "epi")
    widget = dock(viewer, DenoiseWidget)
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    widget.device_picker.refresh()  # the real device list (needs torch); cpu is always there
    assert widget.device_picker.findData("cpu") >= 0
    widget.device_picker.setCurrentIndex(widget.device_picker.findData("cpu"))
    widget.method.setCurrentText("posterior")
    widget.samples.setValue(2)
    widget.steps.setValue(2)
    widget.noise.setCurrentText("gaussian")
    widget.sigma.setValue(40.0)

    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()

    denoised = viewer.layers["epi denoised"]
    unc = viewer.layers["epi uncertainty"]
    for out in (denoised, unc):
        assert out.data.shape == src.data.shape
        same_geometry(out, src)
        assert out.metadata["study"] == "test-study"
    # a real denoiser changed the image but kept it close (not zeros, not a copy)
    diff = np.abs(denoised.data - src.data)
    assert 0 < diff.mean() < 0.5 * np.abs(src.data).mean()
    assert float(unc.data.max()) > 0
    assert denoised.metadata["medidiff_denoise"]["options"]["method"] == "posterior"
    assert widget.result_label.text().startswith("noise level 40.0 (Gaussian, given); estimated gain: ")
    assert widget.model_cache.loaded  # kept for the next run while the widget is open
    # the choices are remembered for the next session (napari plugin settings)
    from napari.settings import get_plugin_settings

    section = get_plugin_settings("medidiff").medidiff
    assert section.model_folder == str(tiny_mr_model.path)
    assert section.device == "cpu"
    _save_shot(widget, "widget-denoise.png")
    widget.hide()  # closing the widget frees the model
    assert not widget.model_cache.loaded


def test_denoise_on_plain_layer_keeps_scale_and_translate(make_napari_viewer, qtbot, tiny_mr_model, mr_slices):
    """A layer added by hand with scale=spacing (no medidiff metadata) keeps its scale/translate."""
    from napari_medidiff.widgets.denoise import DenoiseWidget

    viewer = make_napari_viewer()
    src = viewer.add_image(mr_slices.array[1], scale=mr_slices.spacing[1:], translate=(5.0, -7.5), name="slice")
    widget = dock(viewer, DenoiseWidget)
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    out = viewer.layers["slice denoised"]
    assert out.data.shape == src.data.shape
    same_geometry(out, src)


# ----------------------------------------------------------------------------- generate


def test_generate_widget_end_to_end_keeps_viewer_responsive(make_napari_viewer, qtbot, tiny_mr_model):
    """N images come back as one stacked layer with the model's spacing; the event loop turns meanwhile."""
    from qtpy.QtCore import QTimer

    from napari_medidiff.widgets.generate import GenerateWidget

    viewer = make_napari_viewer()
    widget = dock(viewer, GenerateWidget)
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    assert widget.sampler.findText("ddim") >= 0 and widget.sampler.findText("euler") < 0  # a DDPM model
    assert not widget.label.isEnabled()  # no class conditioning on this model
    widget.n.setValue(3)
    widget.steps.setValue(8)
    widget.sampler.setCurrentText("ddim")
    widget.seed.setValue(7)

    ticks_while_running = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks_while_running.append(1) if widget.runner.running else None)
    timer.start()
    progress = []
    widget.runner.progress.connect(progress.append)
    try:
        assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    finally:
        timer.stop()
    # the run took many timer periods and the main thread served them while the worker computed
    assert len(ticks_while_running) >= 3
    assert len(progress) >= 8 and progress[-1].step == progress[-1].total

    from napari_medidiff.widgets.pickers import model_label

    layer = viewer.layers[f"generated ({model_label(tiny_mr_model.path)})"]
    assert layer.data.shape == (3, *tiny_mr_model.config.image_size)
    np.testing.assert_allclose(layer.scale[1:], tiny_mr_model.config.spacing)
    assert layer.scale[0] == 1.0
    assert layer.metadata["medidiff_generate"]["options"]["seed"] == 7
    seeds = layer.metadata["medidiff_generate"]["seeds"]
    assert len(set(seeds)) == 3
    # three different real-valued images, not copies or blanks
    flat = layer.data.reshape(3, -1)
    assert np.isfinite(flat).all() and flat.std(axis=1).min() > 0
    assert not np.allclose(flat[0], flat[1])
    _save_shot(widget, "widget-generate.png")


def test_cancel_stops_within_one_step(make_napari_viewer, qtbot, tiny_mr_model):
    import inspect

    from napari_medidiff.widgets.generate import GenerateWidget

    viewer = make_napari_viewer()
    widget = dock(viewer, GenerateWidget)
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    widget.n.setValue(2)
    widget.steps.setValue(500)  # far more than the test will let it do
    received = cancel_after(widget, widget.runner.progress, 3)
    assert run_widget(qtbot, widget) == "cancelled"
    # the worker asked the task for at most one more step after Cancel, and the task was closed
    assert widget.runner.steps_after_cancel is not None and widget.runner.steps_after_cancel <= 1
    assert inspect.getgeneratorstate(widget.runner.job) == inspect.GEN_CLOSED
    assert len(received) < 10 and received[-1].step < received[-1].total
    assert not any(layer.name.startswith("generated") for layer in viewer.layers)
    assert widget.controls.run_button.isEnabled() and not widget.controls.cancel_button.isEnabled()
    assert widget.controls.status.text() == "cancelled"


# ----------------------------------------------------------------------------- anomaly


def test_anomaly_widget_end_to_end(make_napari_viewer, qtbot, tiny_mr_model, mr_slices):
    from napari_medidiff.widgets.anomaly import AnomalyWidget

    viewer = make_napari_viewer()
    src = add_scan(viewer, mr_slices, "epi")
    widget = dock(viewer, AnomalyWidget)
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    assert "no calibrated threshold" in widget.controls.status.text()
    widget.method.setCurrentText("ddpm")
    widget.threshold.setValue(30.0)

    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    heat = viewer.layers["epi anomaly map"]
    labels = viewer.layers["epi anomalies"]
    import napari.layers

    assert isinstance(labels, napari.layers.Labels)
    for out in (heat, labels):
        assert out.data.shape == src.data.shape
        same_geometry(out, src)
        assert out.metadata["study"] == "test-study"
    assert heat.colormap.name == "inferno" and 0 < heat.opacity < 1
    info = heat.metadata["medidiff_anomaly"]
    assert info["threshold"] == 30.0
    assert f"score {info['score']:.4g}" in widget.result_label.text()
    foreground = widget._last[0].foreground.array > 0
    np.testing.assert_array_equal(labels.data > 0, (heat.data > 30.0) & foreground)
    _save_shot(widget, "widget-anomaly.png")
    # a new threshold redraws the labels from the same map, no rerun
    flagged = int(np.count_nonzero(labels.data))
    widget.threshold.setValue(float(np.percentile(heat.data, 50)))
    assert int(np.count_nonzero(labels.data)) > flagged
    assert not widget.runner.running


# ----------------------------------------------------------------------------- errors


def test_bad_model_folder_is_a_notification_not_a_crash(make_napari_viewer, qtbot, tmp_path, mr_slices):
    from napari_medidiff.widgets.denoise import DenoiseWidget

    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{ this is not json")
    viewer = make_napari_viewer()
    add_scan(viewer, mr_slices, "epi")
    widget = dock(viewer, DenoiseWidget)
    widget.model_picker.set_spec(str(bad))
    start = n_records()
    assert run_widget(qtbot, widget) == "failed"
    errors = errors_since(start)
    assert len(errors) == 1 and str(bad) in errors[0] and "JSON" in errors[0]
    assert [layer.name for layer in viewer.layers] == ["epi"]
    assert widget.controls.run_button.isEnabled()
    assert str(bad) in widget.controls.status.text()


def test_no_input_layer_is_a_notification(make_napari_viewer, qtbot, tiny_mr_model):
    from napari_medidiff.widgets.anomaly import AnomalyWidget

    viewer = make_napari_viewer()
    widget = dock(viewer, AnomalyWidget)
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    start = n_records()
    widget.controls.run_button.click()
    assert not widget.runner.running
    errors = errors_since(start)
    assert len(errors) == 1 and "choose an image layer" in errors[0]


def test_runtime_error_in_a_task_reaches_the_user(qtbot):
    """superqt drops RuntimeErrors from generators; the runner must still report them (torch raises those)."""
    from medidiff.core.progress import Progress
    from napari_medidiff.widgets.worker import TaskRunner

    def job():
        yield Progress(1, 3, "first")
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    runner = TaskRunner("Denoise")
    failed = []
    runner.failed.connect(failed.append)
    start = n_records()
    with qtbot.waitSignal(runner.finished, timeout=30_000):
        runner.start(job())
    assert runner.outcome == "failed"
    assert failed == ["Denoise failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"]
    assert errors_since(start) == failed


# ----------------------------------------------------------------------------- manifest, settings


@pytest.mark.parametrize("display_name, cls_path", [
    ("Denoise", "denoise.DenoiseWidget"),
    ("Generate synthetic images", "generate.GenerateWidget"),
    ("Detect anomalies", "anomaly.AnomalyWidget"),
    ("Train a model", "train.TrainWidget"),
    ("Fit to this scan", "fit.FitWidget"),
])
def test_manifest_widgets_open_from_the_plugin(make_napari_viewer, display_name, cls_path):
    import importlib

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("medidiff", display_name)
    module, cls = cls_path.split(".")
    assert type(widget) is getattr(importlib.import_module(f"napari_medidiff.widgets.{module}"), cls)


def test_choices_are_remembered_between_sessions(make_napari_viewer, tiny_mr_model):
    from napari import settings

    from napari_medidiff.widgets.denoise import DenoiseWidget

    viewer = make_napari_viewer()
    first = DenoiseWidget(viewer)
    first.model_picker.set_spec(str(tiny_mr_model.path))
    first.device_picker.setCurrentIndex(first.device_picker.findData("cpu"))
    first.model_picker.remember()
    first.device_picker.remember()
    settings._clear_plugin_settings_cache()  # a new napari session reads the saved file again
    second = DenoiseWidget(viewer)
    assert first.prefs.backend == "napari"
    assert second.model_picker.spec() == str(tiny_mr_model.path)
    assert second.device_picker.device() == "cpu"
    first.deleteLater()
    second.deleteLater()


def test_widget_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import napari_medidiff.widgets.denoise, napari_medidiff.widgets.generate, "
            "napari_medidiff.widgets.anomaly, napari_medidiff.widgets.train, napari_medidiff.widgets.fit; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_viewer_screenshot_with_denoise_widget(make_napari_viewer, qtbot, tiny_mr_model, mr_volume):
    """A real screenshot of the docked widget after a run (for the README when asked to refresh it).

    ``MEDIDIFF_UPDATE_DOCS_SCREENSHOT=1`` also copies it to docs/images/napari-denoise.png.
    """
    import os

    from napari_medidiff.widgets.denoise import DenoiseWidget

    rng = np.random.default_rng(0)
    clean = mr_volume.array[20]
    noisy = clean + rng.normal(0.0, 0.1 * float(np.ptp(clean)), clean.shape).astype(np.float32)
    scan = Scan(noisy, mr_volume.spacing[1:], mr_volume.affine, "MR", {})
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1100, 640)
    add_scan(viewer, scan, "noisy EPI slice")
    widget = dock(viewer, DenoiseWidget)
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    widget.noise.setCurrentText("gaussian")
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    out = viewer.layers["noisy EPI slice denoised"]
    # the model really removed noise: closer to the clean slice than the input was
    assert np.abs(out.data - clean).mean() < 0.7 * np.abs(noisy - clean).mean()
    viewer.canvas.grid.enabled = True
    viewer.reset_view()
    qtbot.wait(200)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "viewer-denoise.png"
    viewer.window.screenshot(str(path), canvas_only=False)
    assert path.stat().st_size > 10_000
    if os.environ.get("MEDIDIFF_UPDATE_DOCS_SCREENSHOT") == "1":
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SHOT)


def test_preferences_fall_back_to_a_json_file(tmp_path, monkeypatch):
    """Without napari plugin settings (plugin not registered: napari raises KeyError) a JSON file keeps them."""
    from napari import settings

    from napari_medidiff.widgets.preferences import Preferences

    def unregistered(plugin=None, path_dir=None):
        raise KeyError(f"Plugin named '{plugin}' does not exist.")

    monkeypatch.setattr(settings, "get_plugin_settings", unregistered)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    prefs = Preferences()
    assert prefs.backend == str(tmp_path / "config" / "medidiff" / "napari-widgets.json")
    assert prefs.get("device", "auto") == "auto"
    prefs.set("device", "cpu")
    prefs.set("model_folder", "/models/mr")
    again = Preferences()
    assert again.get("device") == "cpu" and again.get("model_folder") == "/models/mr"
    prefs.set_parameters("Denoise", {"method": "ddim", "steps": 3})
    assert Preferences().parameters("Denoise") == {"method": "ddim", "steps": 3}
    assert Preferences().parameters("Train") == {}
