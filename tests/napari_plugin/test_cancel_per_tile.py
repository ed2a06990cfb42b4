"""Progress per sliding-window tile, and Cancel within one tile batch, in a real viewer (issue 15).

A single 512x512 image with the tiny model (32x32 training size) is 21 x 21 = 441 windows, 8
per network call: 56 calls. Each call is one progress step, so the bar moves while the one
image is denoised, and Cancel pressed at the first tile stops the run before the next batch.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from medidiff.io import Scan  # noqa: E402
from viewer_helpers import RUN_TIMEOUT_MS, add_scan, dock  # noqa: E402

pytestmark = pytest.mark.qt

CALLS = 2 * 56  # ceil(21 * 21 / 8) window batches, and as many again for the task's self-check pass


@pytest.fixture()
def big_slice(mr_volume) -> Scan:
    """A 512x512 MR image: a real slice tiled to size, in-plane spacing kept."""
    plane = mr_volume.array[20]
    tiled = np.tile(plane, (512 // plane.shape[0] + 1, 512 // plane.shape[1] + 1))[:512, :512]
    return Scan(np.ascontiguousarray(tiled, dtype=np.float32), mr_volume.spacing[1:], mr_volume.affine, "MR", {})


def test_progress_moves_per_tile_and_cancel_stops_within_one_tile(make_napari_viewer, qtbot, tiny_mr_model,
                                                                 big_slice):
    from napari_medidiff.widgets.denoise import DenoiseWidget

    viewer = make_napari_viewer()
    add_scan(viewer, big_slice, "big")
    widget = dock(viewer, DenoiseWidget)
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    widget.device_picker.setCurrentIndex(widget.device_picker.findData("cpu"))
    widget.method.setCurrentText("tweedie")  # one prediction of the whole image: one step before tiles
    widget.noise.setCurrentText("gaussian")
    # the widget's cached model (the run reuses it): count its network calls, and which came after Cancel
    model = widget.model_cache.get(str(tiny_mr_model.path), "cpu")
    started: list[bool] = []  # per network call: was Cancel already pressed when it started?
    handle = model.network.register_forward_pre_hook(lambda *_: started.append(widget.runner.cancel_requested))
    try:
        events = []

        def cancel_at_first_tile(event):
            events.append(event)
            if event.step >= 1 and not widget.runner.cancel_requested:
                widget.controls.cancel_button.click()

        widget.runner.progress.connect(cancel_at_first_tile)
        with qtbot.waitSignal(widget.runner.finished, timeout=RUN_TIMEOUT_MS):
            widget.controls.run_button.click()
        widget.runner.progress.disconnect(cancel_at_first_tile)
        qtbot.wait(300)  # nothing arrives later either
        assert widget.runner.outcome == "cancelled"
        assert events[0].step == 0 and {e.total for e in events} == {CALLS}  # the total counts tiles
        assert 1 <= events[-1].step < CALLS // 2  # a tile step arrived long before the image was done
        assert sum(started) <= 1  # at most one more window batch after Cancel
        assert widget.runner.steps_after_cancel <= 1
        assert len(started) <= events[-1].step + 2
        assert [layer.name for layer in viewer.layers] == ["big"]  # no result layer

        # uncancelled: the bar moves once per tile batch, and ends full
        values: list[int] = []
        widget.controls.progress_bar.valueChanged.connect(values.append)
        started.clear()
        with qtbot.waitSignal(widget.runner.finished, timeout=RUN_TIMEOUT_MS):
            widget.controls.run_button.click()
        assert widget.runner.outcome == "succeeded", widget.controls.status.text()
        assert len(started) == CALLS and not any(started)
        moved = [v for v in values if 0 < v < CALLS]
        assert len(set(moved)) > 1  # the bar moved more than once before the end
        assert widget.controls.progress_bar.maximum() == CALLS and values[-1] == CALLS
        assert viewer.layers["big denoised"].data.shape == (512, 512)
    finally:
        handle.remove()
