"""The *Fit to this scan* widget in a real viewer: learn a noisy layer's own noise, denoise it, keep the model.

The noisy layer is a crop of the held-out cell microscopy sample with Poisson-Gaussian noise
(as in tests/tasks/test_fit.py); the clean crop is used only to score the result.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from medidiff.io import Scan  # noqa: E402
from viewer_helpers import add_scan, dock, run_widget, same_geometry  # noqa: E402

pytestmark = pytest.mark.qt

LEVEL = 0.1  # Poisson-Gaussian, total std 10% of the range at the brightest value (tests/tasks/test_fit.py)
ROOT = Path(__file__).resolve().parents[2]
STEPS = 40  # training steps: the step limit ends training (reproducible), not the clock


@pytest.fixture(scope="module")
def noisy_cells() -> tuple[Scan, np.ndarray]:
    """A 128x128 crop of the held-out microscopy sample with noise: (noisy scan, clean array for scoring)."""
    from medidiff.builtin.sample_scans import microscopy_sample
    from medidiff.core import noise as noise_lib

    sample = microscopy_sample()
    clean = sample.array[200:328, 60:188].copy()
    noisy = noise_lib.add_noise(clean, "poisson-gaussian", LEVEL, rng=1).astype(np.float32)
    return Scan(noisy, sample.spacing, sample.affine, "microscopy", {"format": "tiff"}), clean


def _fit(viewer):
    from napari_medidiff.widgets.fit import FitWidget

    widget = dock(viewer, FitWidget)
    widget.device_picker.setCurrentIndex(widget.device_picker.findData("cpu"))
    return widget


def test_fit_denoises_the_layer_and_keeps_the_model(make_napari_viewer, qtbot, noisy_cells):
    from medidiff.core.metrics import psnr
    from napari_medidiff.widgets.denoise import DenoiseWidget

    scan, clean = noisy_cells
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1100, 760)
    source = add_scan(viewer, scan, "noisy cells")
    widget = _fit(viewer)
    other = DenoiseWidget(viewer)  # another widget's model list (not docked) learns the kept model too
    assert not widget.model_picker.isEnabled()  # from scratch by default: no model needed
    for control in (widget.start, widget.minutes, widget.max_steps, widget.draws, widget.keep_as, widget.loss_curve):
        assert control.toolTip()
    widget.minutes.setValue(5.0)
    widget.max_steps.setValue(STEPS)
    widget.draws.setValue(2)
    widget.keep_as.setText("cells-fit")
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    out = viewer.layers["noisy cells denoised (fitted)"]
    same_geometry(out, source)
    span = float(clean.max() - clean.min())
    noisy_db, fit_db = psnr(clean, scan.array, span), psnr(clean, np.asarray(out.data), span)
    assert fit_db > noisy_db + 8.0, (noisy_db, fit_db)  # the margin of tests/tasks/test_fit.py
    assert len(widget.loss_curve.values) == STEPS  # the curve was drawn step by step
    assert out.metadata["medidiff_fit"]["steps"] == STEPS and "kept as cells-fit" in widget.result_label.text()
    # the self-check's estimated gain is in the result line and the layer metadata, like the Denoise widget's
    check = out.metadata["medidiff_fit"]["self_check"]
    assert check is not None and check["denoiser"] == "fit (2 draws)"
    assert "; estimated gain: " in widget.result_label.text() and "(SURE, no clean data" in widget.result_label.text()
    if check["consistent"] and check["mse"] >= 0.1 * check["noise_var"]:  # a resolved estimate: near the true gain
        assert abs(check["gain_db"] - (fit_db - noisy_db)) < 3.0, (check["gain_db"], fit_db - noisy_db)
    for picker in (widget.model_picker, other.model_picker):
        assert picker.combo.findText("cells-fit") >= 0
    _screenshot(viewer, qtbot)
    # the kept model is a model: the Denoise widget runs it
    other.device_picker.setCurrentIndex(other.device_picker.findData("cpu"))
    other.model_picker.set_spec("cells-fit")
    other.layer_picker.set_layer("noisy cells")
    assert run_widget(qtbot, other) == "succeeded", other.controls.status.text()
    assert "noisy cells denoised" in viewer.layers


def test_cancel_stops_the_fit_and_adds_nothing(make_napari_viewer, qtbot, noisy_cells):
    from medidiff.model_store.registry import user_model_dir

    scan, _ = noisy_cells
    viewer = make_napari_viewer()
    add_scan(viewer, scan, "noisy cells")
    widget = _fit(viewer)
    widget.minutes.setValue(10.0)
    widget.max_steps.setValue(100_000)
    widget.keep_as.setText("never-kept")
    seen = []

    def on_progress(event):
        if "loss" in (event.values or {}):
            seen.append(event)
            if len(seen) == 3:
                widget.cancel()

    widget.runner.progress.connect(on_progress)
    assert run_widget(qtbot, widget) == "cancelled"
    assert widget.runner.steps_after_cancel <= 1
    assert [layer.name for layer in viewer.layers] == ["noisy cells"]
    assert not (user_model_dir() / "never-kept").exists()
    assert widget.controls.status.text() == "cancelled"


def _screenshot(viewer, qtbot) -> None:
    """The viewer with the Fit widget after a run (``MEDIDIFF_UPDATE_DOCS_SCREENSHOT=1``: also for the README)."""
    viewer.canvas.grid.enabled = True
    viewer.reset_view()
    qtbot.wait(200)
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    path = ROOT / "test-artifacts" / "viewer-fit.png"
    viewer.window.screenshot(str(path), canvas_only=False)
    assert path.stat().st_size > 10_000
    if os.environ.get("MEDIDIFF_UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(path, ROOT / "docs" / "images" / "napari-fit.png")
