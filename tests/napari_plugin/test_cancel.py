"""Cancel stops a run within one network call, and closing the dock cancels its run, in a real viewer.

A single 512x512 image is one step of the denoise task (one Tweedie prediction), but with the
tiny model's 32x32 training size it is ~56 sliding-window network calls of 8 windows each; the
widget must stop inside that step, not after it.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from medidiff.io import Scan  # noqa: E402
from viewer_helpers import RUN_TIMEOUT_MS, add_scan, dock  # noqa: E402

pytestmark = pytest.mark.qt


@pytest.fixture()
def big_slice(mr_volume) -> Scan:
    """A 512x512 MR image: a real slice tiled to size, in-plane spacing kept."""
    plane = mr_volume.array[20]
    tiled = np.tile(plane, (512 // plane.shape[0] + 1, 512 // plane.shape[1] + 1))[:512, :512]
    return Scan(np.ascontiguousarray(tiled, dtype=np.float32), mr_volume.spacing[1:], mr_volume.affine, "MR", {})


def _denoise_widget(viewer, model):
    from napari_medidiff.widgets.denoise import DenoiseWidget

    widget = dock(viewer, DenoiseWidget)
    widget.model_picker.set_spec(str(model.path))
    widget.device_picker.setCurrentIndex(widget.device_picker.findData("cpu"))
    widget.method.setCurrentText("tweedie")  # the whole image is one step
    widget.noise.setCurrentText("gaussian")
    return widget


def test_cancel_stops_a_single_512_image_within_one_network_call(make_napari_viewer, qtbot, tiny_mr_model,
                                                                big_slice):
    viewer = make_napari_viewer()
    add_scan(viewer, big_slice, "big")
    widget = _denoise_widget(viewer, tiny_mr_model)
    calls, steps = [], []
    widget.runner.progress.connect(steps.append)

    def on_call(n):
        calls.append(n)
        if len(calls) == 2:
            assert "network call" in widget.controls.status.text()
            widget.controls.cancel_button.click()

    widget.runner.network_call.connect(on_call)
    with qtbot.waitSignal(widget.runner.finished, timeout=RUN_TIMEOUT_MS):
        widget.controls.run_button.click()
    assert widget.runner.outcome == "cancelled"
    # no network call started after Cancel, and the step (the whole image) was stopped inside
    assert widget.runner.calls_after_cancel == 0
    # the start event, then one step per finished window batch (issue 15): the image was stopped inside
    assert [e.step for e in steps] == list(range(len(steps))) and steps[-1].step < steps[-1].total
    assert widget.runner.network_calls < 40  # of the ~56 calls the image needs
    assert inspect.getgeneratorstate(widget.runner.job) == inspect.GEN_CLOSED
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert widget.controls.status.text() == "cancelled" and widget.controls.run_button.isEnabled()
    # the model is still cached and works for the next run: nothing was left hooked or broken
    widget.controls.progress_bar.reset()
    with qtbot.waitSignal(widget.runner.finished, timeout=RUN_TIMEOUT_MS):
        widget.controls.run_button.click()
    assert widget.runner.outcome == "succeeded", widget.controls.status.text()
    assert viewer.layers["big denoised"].data.shape == (512, 512)
    assert widget.runner.network_calls > 40  # this time the whole image was done


def test_closing_the_dock_mid_run_cancels_it_and_adds_no_layer(make_napari_viewer, qtbot, tiny_mr_model,
                                                              big_slice):
    viewer = make_napari_viewer()
    add_scan(viewer, big_slice, "big")
    widget = _denoise_widget(viewer, tiny_mr_model)
    closed = []

    def on_call(n):
        if not closed:
            closed.append(n)
            viewer.window.remove_dock_widget(widget)  # what the dock's close button does

    widget.runner.network_call.connect(on_call)
    with qtbot.waitSignal(widget.runner.finished, timeout=RUN_TIMEOUT_MS):
        widget.controls.run_button.click()
    assert closed and widget.runner.outcome == "cancelled"
    assert widget.runner.calls_after_cancel == 0
    qtbot.wait(300)  # nothing arrives later either
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert not widget.model_cache.loaded  # a closed widget frees its model
