"""In a real viewer: the *Slice along* control and the *Run on* batch modes (every layer, a folder)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from medidiff.io import Scan  # noqa: E402
from viewer_helpers import add_scan, dock, errors_since, n_records, run_widget, same_geometry  # noqa: E402

pytestmark = pytest.mark.qt


def _denoise(viewer, model):
    from napari_medidiff.widgets.denoise import DenoiseWidget

    widget = dock(viewer, DenoiseWidget)
    widget.device_picker.setCurrentIndex(widget.device_picker.findData("cpu"))
    widget.model_picker.set_spec(str(model.path))
    widget.noise.setCurrentText("gaussian")
    widget.sigma.setValue(40.0)  # a given noise level: the run depends on the slicing alone
    return widget


@pytest.fixture()
def cube(mr_volume) -> Scan:
    """A (24, 32, 32) block of the real EPI volume (oblique affine): every axis is a valid slicing."""
    return Scan(mr_volume.array[:, 30:62, 40:72].copy(), mr_volume.spacing, mr_volume.affine, "MR", {})


def test_slice_along_another_axis_runs_the_model_along_it(make_napari_viewer, qtbot, tiny_mr_model, cube):
    from medidiff.core.model import DiffusionModel
    from medidiff.tasks.denoise import denoise

    viewer = make_napari_viewer()
    source = add_scan(viewer, cube, "cube")
    widget = _denoise(viewer, tiny_mr_model)
    control = widget.slice_axis
    assert control.isEnabled() and control.axis() == 0 and "as the model learnt" in control.currentText()
    assert control.count() == 3 and control.toolTip()
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    along_z = viewer.layers["cube denoised"].data.copy()
    viewer.layers.remove("cube denoised")
    control.set_axis(2)
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    out = viewer.layers["cube denoised"]
    same_geometry(out, source)
    assert np.abs(out.data - along_z).mean() > 0.5, "slicing along x gave the result of slicing along z"
    # the same as the API with a model whose record says "slices along x" (the task's slice-axis setting)
    along_x = DiffusionModel.load(tiny_mr_model.path)
    along_x.config.slice_axis = 2
    api = denoise(along_x, cube, noise="gaussian", sigma=40.0, device="cpu").scan.array
    np.testing.assert_allclose(out.data, api, rtol=1e-5, atol=1e-3)
    # the model in the picker is unchanged (the run used a view of it)
    assert tiny_mr_model.config.slice_axis in (None, 0)


def test_a_3d_model_takes_the_whole_volume(make_napari_viewer, tmp_path, cube):
    from medidiff.core.model import DiffusionModel

    folder = tmp_path / "tiny3d"
    DiffusionModel.create(3, 16, preset="tiny", modality="MR").save(folder)
    viewer = make_napari_viewer()
    add_scan(viewer, cube, "cube")
    from napari_medidiff.widgets.anomaly import AnomalyWidget

    widget = dock(viewer, AnomalyWidget)
    widget.model_picker.set_spec(str(folder))
    assert widget.slice_axis.currentText() == "whole volume (3D model)"
    assert not widget.slice_axis.isEnabled() and widget.slice_axis.axis() is None


def _two_slices(mr_volume) -> tuple[Scan, Scan]:
    a = Scan(mr_volume.array[18].copy(), mr_volume.spacing[1:], mr_volume.affine, "MR", {})
    shifted = mr_volume.affine.copy()
    shifted[:3, 3] += (5.0, -7.0, 2.0)
    b = Scan(mr_volume.array[21, 8:72, 16:112].copy(), mr_volume.spacing[1:], shifted, "MR", {})
    return a, b


def test_every_image_layer_gets_its_own_result(make_napari_viewer, qtbot, tiny_mr_model, mr_volume):
    viewer = make_napari_viewer()
    a, b = _two_slices(mr_volume)
    first, second = add_scan(viewer, a, "first"), add_scan(viewer, b, "second")
    widget = _denoise(viewer, tiny_mr_model)
    widget.batch.set_mode("layers")
    assert not widget.layer_picker.isEnabled()
    totals = []
    widget.runner.progress.connect(lambda event: totals.append(event.total))
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    assert set(totals) == {2}, totals  # the bar counts layers
    for src in (first, second):
        out = viewer.layers[f"{src.name} denoised"]
        assert out.data.shape == src.data.shape
        same_geometry(out, src)
    assert [layer.name for layer in viewer.layers] == ["first", "second", "first denoised", "second denoised"]
    assert widget.result_label.text() == "2 of 2 done"
    # a second batch does not take the results of the first as inputs
    assert [layer.name for layer in widget.batch_layers()] == ["first", "second"]


def test_cancel_stops_the_batch_after_the_first_layer(make_napari_viewer, qtbot, tiny_mr_model, mr_volume):
    viewer = make_napari_viewer()
    a, b = _two_slices(mr_volume)
    add_scan(viewer, a, "first")
    add_scan(viewer, b, "second")
    widget = _denoise(viewer, tiny_mr_model)
    widget.batch.set_mode("layers")

    def on_inserted(event):
        if event.value.name.endswith("denoised"):
            widget.cancel()

    viewer.layers.events.inserted.connect(on_inserted)
    assert run_widget(qtbot, widget) == "cancelled"
    assert [layer.name for layer in viewer.layers] == ["first", "second", "first denoised"]


def test_a_folder_is_written_to_the_output_folder_never_the_input(make_napari_viewer, qtbot, tiny_mr_model,
                                                                  mr_volume, tmp_path):
    from medidiff.io import load_scan, save_scan

    src = tmp_path / "scans"
    a, b = _two_slices(mr_volume)
    save_scan(a, src / "a.nii.gz")
    save_scan(b, src / "b.nii.gz")
    before = sorted(p.name for p in src.iterdir())
    viewer = make_napari_viewer()
    widget = _denoise(viewer, tiny_mr_model)
    widget.batch.set_mode("folder")
    widget.batch.input_folder.setText(str(src))
    start = n_records()
    widget.controls.run_button.click()  # no output folder yet
    assert not widget.runner.running and any("no output folder" in m for m in errors_since(start))
    # the input folder (or a folder inside it) as output is refused in one line, before any work
    for bad in (src, src / "out"):
        widget.batch.output_folder.setText(str(bad))
        start = n_records()
        widget.controls.run_button.click()
        assert not widget.runner.running
        assert any("input" in m for m in errors_since(start)), errors_since(start)
    out = tmp_path / "denoised"
    widget.batch.output_folder.setText(str(out))
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert sorted(p.name for p in src.iterdir()) == before
    for name, ref in (("a.nii.gz", a), ("b.nii.gz", b)):
        done = load_scan(out / name)
        assert done.shape == ref.shape
        np.testing.assert_allclose(done.affine, ref.affine, atol=1e-4)
        assert np.abs(done.array - ref.array).mean() > 0  # denoised, not copied
    assert len(viewer.layers) == 0 and "saved in" in widget.result_label.text()
    # running again would overwrite: refused before any work
    start = n_records()
    widget.controls.run_button.click()
    assert not widget.runner.running and any("exists" in m for m in errors_since(start))


def test_anomaly_runs_on_every_layer_too(make_napari_viewer, qtbot, tiny_mr_model, mr_volume):
    import napari.layers

    from napari_medidiff.widgets.anomaly import AnomalyWidget

    viewer = make_napari_viewer()
    a, b = _two_slices(mr_volume)
    sources = [add_scan(viewer, a, "first"), add_scan(viewer, b, "second")]
    widget = dock(viewer, AnomalyWidget)
    widget.device_picker.setCurrentIndex(widget.device_picker.findData("cpu"))
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    widget.method.setCurrentText("ddpm")
    widget.threshold.setValue(30.0)
    widget.batch.set_mode("layers")
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    for src in sources:
        heat, labels = viewer.layers[f"{src.name} anomaly map"], viewer.layers[f"{src.name} anomalies"]
        assert isinstance(labels, napari.layers.Labels)
        for out in (heat, labels):
            assert out.data.shape == src.data.shape
            same_geometry(out, src)
