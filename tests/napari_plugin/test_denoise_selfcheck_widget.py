"""The Denoise widget shows the task's self-check: the estimated gain in its result line, and the
"unlikely to help" warning as a napari notification (run under ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from medidiff.core import noise as noise_lib  # noqa: E402
from medidiff.io import Scan  # noqa: E402
from medidiff.io.scan import affine_from_spacing  # noqa: E402
from viewer_helpers import add_scan, dock, run_widget  # noqa: E402

pytestmark = pytest.mark.qt


@pytest.mark.filterwarnings("default")
def test_unhelpful_scan_is_a_notification_and_the_gain_is_shown(make_napari_viewer, qtbot, tiny_mr_model,
                                                                notifications):
    import skimage.data
    from napari.utils.notifications import NotificationSeverity
    from napari_medidiff.widgets.denoise import DenoiseWidget

    clean = skimage.data.camera().astype(np.float32)[::4, ::4][:96, :128]  # a photograph, nothing like the model's EPI
    noisy = noise_lib.add_noise(clean, "gaussian", 0.01, np.random.default_rng(5)).astype(np.float32)
    viewer = make_napari_viewer()
    add_scan(viewer, Scan(noisy, (2.0, 2.0), affine_from_spacing((2.0, 2.0)), "MR", {}), "photo")
    widget = dock(viewer, DenoiseWidget)
    widget.device_picker.setCurrentIndex(widget.device_picker.findData("cpu"))
    widget.model_picker.set_spec(str(tiny_mr_model.path))
    widget.noise.setCurrentText("gaussian")
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    qtbot.wait(50)
    warned = [str(n.message) for n in notifications if n.severity == NotificationSeverity.WARNING]
    assert any(m.startswith("Denoise: ") and "the model is unlikely to help this scan" in m for m in warned), warned
    assert "estimated gain: " in widget.result_label.text() and "SURE" in widget.result_label.text()
    check = viewer.layers["photo denoised"].metadata["medidiff_denoise"]["self_check"]
    assert check["gain_db"] < 1.0 and "unlikely to help" in check["warning"]
