"""The controls the CLI gained, in a real viewer: FDR masks (anomaly), self-ensemble and calibrated
intervals (denoise). Each widget run is compared with the task called directly on the same layer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from medidiff.core import noise as noise_lib  # noqa: E402
from medidiff.io import Scan, load_scan  # noqa: E402
from medidiff.model_store.registry import BUILTIN_DIR  # noqa: E402
from viewer_helpers import add_scan, cancel_after, dock, errors_since, n_records, run_widget, same_geometry  # noqa: E402

pytestmark = pytest.mark.qt

Q = 0.2


def _scan(arr: np.ndarray) -> Scan:
    return Scan(arr.astype(np.float32), (2.0, 2.0), np.diag([-2.0, 2.0, 2.2, 1.0]), "MR", {"format": "nifti"})


@pytest.fixture(scope="module")
def calibrated_folder(tiny_mr_model, mr_heldout_slices, tmp_path_factory):
    """A copy of the tiny model calibrated (default options: z-score, both FDR tables) on two healthy slices."""
    from medidiff.core.model import DiffusionModel
    from medidiff.tasks.anomaly import calibrate_threshold

    folder = tmp_path_factory.mktemp("napari_fdr") / "model"
    shutil.copytree(tiny_mr_model.path, folder)
    calibrate_threshold(DiffusionModel.load(folder), [_scan(mr_heldout_slices[k]) for k in (3, 4)], 99.0,
                        device="cpu")
    return folder


@pytest.fixture(scope="module")
def old_calibration_folder(calibrated_folder, tmp_path_factory):
    """The same calibration as one made before the scan-adaptive FDR method (no scan-adaptive table)."""
    folder = tmp_path_factory.mktemp("napari_fdr_old") / "model"
    shutil.copytree(calibrated_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("healthy_scores_scan_adaptive", "healthy_levels"):
        config["anomaly"].pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def lesion_slice(mr_heldout_slices):
    from medidiff.core.lesions import plant_lesion

    return _scan(plant_lesion(mr_heldout_slices[2], seed=1, kind="ellipse", radius=7, contrast=1.5).image)


def _anomaly(viewer, folder):
    from napari_medidiff.widgets.anomaly import AnomalyWidget

    widget = dock(viewer, AnomalyWidget)
    widget.device_picker.setCurrentIndex(widget.device_picker.findData("cpu"))
    widget.model_picker.set_spec(str(folder))
    return widget


def _denoise(viewer, spec: str):
    from napari_medidiff.widgets.denoise import DenoiseWidget

    widget = dock(viewer, DenoiseWidget)
    widget.device_picker.setCurrentIndex(widget.device_picker.findData("cpu"))
    widget.model_picker.set_spec(spec)
    return widget


# ----------------------------------------------------------------------------- anomaly: FDR masks


def test_fdr_mask_layer_equals_the_tasks_fdr_mask(make_napari_viewer, qtbot, calibrated_folder, lesion_slice):
    from medidiff.tasks.anomaly import detect_anomalies
    from napari_medidiff.layers import layer_to_scan

    viewer = make_napari_viewer()
    src = add_scan(viewer, lesion_slice, "lesion")
    widget = _anomaly(viewer, calibrated_folder)
    assert not widget.fdr_method.isEnabled() and widget.threshold.isEnabled()
    widget.fdr.setValue(Q)
    assert widget.fdr_method.isEnabled() and not widget.threshold.isEnabled()
    assert widget.fdr_method.currentData() is None  # the task's default, as the CLI without --fdr-method
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    assert widget.controls.progress_bar.maximum() > 1
    assert widget.controls.progress_bar.value() == widget.controls.progress_bar.maximum()
    labels = viewer.layers["lesion anomalies (FDR 20 %)"]
    assert "lesion anomalies" not in [layer.name for layer in viewer.layers]
    same_geometry(labels, src)
    expected = detect_anomalies(str(calibrated_folder), layer_to_scan(src), fdr=Q, seed=0, batch_size=8, device="cpu")
    assert expected.mask.array.sum() > 0  # the planted lesion is found, so the comparison means something
    np.testing.assert_array_equal(labels.data > 0, expected.mask.array > 0)
    info = labels.metadata["medidiff_anomaly"]["fdr"]
    assert info["q"] == Q and info["fdr_method"] == "scan-adaptive"
    assert "FDR 20 % mask (scan-adaptive)" in widget.result_label.text()
    # the threshold control does not redraw an FDR mask
    before = labels.data.copy()
    widget.fdr.setValue(0.0)
    widget.threshold.setValue(0.0)
    np.testing.assert_array_equal(labels.data, before)


def test_fdr_the_model_cannot_do_is_one_line_and_no_layer(make_napari_viewer, qtbot, tiny_mr_model,
                                                          old_calibration_folder, lesion_slice):
    viewer = make_napari_viewer()
    add_scan(viewer, lesion_slice, "lesion")
    # an old calibration: scan-adaptive asked for by name is refused by the task in one line
    widget = _anomaly(viewer, old_calibration_folder)
    widget.fdr.setValue(0.05)
    widget.fdr_method.setCurrentIndex(widget.fdr_method.findData("scan-adaptive"))
    start = n_records()
    assert run_widget(qtbot, widget) == "failed"
    errors = errors_since(start)
    assert len(errors) == 1 and "predates --fdr-method scan-adaptive" in errors[0] and "\n" not in errors[0]
    assert "predates" in widget.controls.status.text()
    assert [layer.name for layer in viewer.layers] == ["lesion"]
    # the default method falls back to plain there, as on the command line, and says so
    widget.fdr_method.setCurrentIndex(widget.fdr_method.findData(None))
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    assert viewer.layers["lesion anomalies (FDR 5 %)"].metadata["medidiff_anomaly"]["fdr"]["fdr_method"] == "plain"
    # no calibration at all: the task's one line, no layer
    bare = _anomaly(viewer, tiny_mr_model.path)
    bare.fdr.setValue(0.05)
    start = n_records()
    assert run_widget(qtbot, bare) == "failed"
    errors = errors_since(start)
    assert len(errors) == 1 and "no calibrated anomaly threshold" in errors[0] and "\n" not in errors[0]
    assert len(viewer.layers) == 3


# ----------------------------------------------------------------------------- denoise: flips and intervals


def test_average_over_flips_equals_the_tasks_ensemble(make_napari_viewer, qtbot, tiny_mr_model, mr_slices):
    from medidiff.tasks.denoise import denoise
    from napari_medidiff.layers import layer_to_scan

    viewer = make_napari_viewer()
    src = add_scan(viewer, mr_slices, "epi")
    widget = _denoise(viewer, str(tiny_mr_model.path))
    widget.ensemble.setCurrentIndex(widget.ensemble.findData(4))
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    out = viewer.layers["epi denoised"]
    assert out.metadata["medidiff_denoise"]["options"]["ensemble"] == 4
    scan = layer_to_scan(src)
    mine = denoise(tiny_mr_model, scan, ensemble=4, device="cpu").scan.array
    plain = denoise(tiny_mr_model, scan, device="cpu").scan.array
    span = float(np.ptp(scan.array))
    np.testing.assert_allclose(out.data, mine, atol=1e-5 * span)
    assert np.max(np.abs(mine - plain)) > 1e-3 * span  # the ensemble really changes the result
    # the self-ensemble is tweedie's: the control is off for the other methods
    widget.method.setCurrentText("ddim")
    assert not widget.ensemble.isEnabled() and widget.options()["ensemble"] == 1


@pytest.fixture(scope="module")
def noisy_mr_slice():
    """One held-out slice of the built-in MR sample with Rician noise inside mr2d's calibrated range."""
    scan = load_scan(BUILTIN_DIR / "samples" / "mr_heldout.nii.gz")
    clean = scan.array[2]
    noisy = noise_lib.add_noise(clean, "rician", 0.05, 0).astype(np.float32)
    return Scan(noisy, scan.spacing[1:], scan.affine, "MR", {"format": "nifti"})


def test_interval_coverage_adds_two_bound_layers(make_napari_viewer, qtbot, noisy_mr_slice):
    viewer = make_napari_viewer()
    src = add_scan(viewer, noisy_mr_slice, "mr")
    widget = _denoise(viewer, "mr2d")
    widget.coverage.setCurrentIndex(widget.coverage.findData(0.9))
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    result = viewer.layers["mr denoised"].data
    low, high = viewer.layers["mr lower bound (90 %)"], viewer.layers["mr upper bound (90 %)"]
    for bound in (low, high):
        assert bound.data.shape == src.data.shape
        same_geometry(bound, src)
        assert bound.metadata["medidiff_denoise"]["coverage"] == 0.9 and bound.metadata["study"] == "test-study"
    inside = (low.data <= result + 1e-3) & (result <= high.data + 1e-3)
    assert inside.mean() >= 0.99
    assert np.mean(high.data - low.data) > 0
    assert "90 % bounds added" in widget.result_label.text()
    # mr2d's bounds are calibrated for tweedie alone and for its 4-flip average, not for 8 flips: the task's
    # one line, no layer
    widget.ensemble.setCurrentIndex(widget.ensemble.findData(4))
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    widget.ensemble.setCurrentIndex(widget.ensemble.findData(8))
    start, before = n_records(), len(viewer.layers)
    assert run_widget(qtbot, widget) == "failed"
    errors = errors_since(start)
    assert len(errors) == 1 and "no interval calibration for tweedie x8" in errors[0] and "\n" not in errors[0]
    assert len(viewer.layers) == before


def test_intervals_on_a_model_without_calibration_refuse_in_one_line(make_napari_viewer, qtbot, tiny_mr_model,
                                                                     mr_slices):
    viewer = make_napari_viewer()
    add_scan(viewer, mr_slices, "epi")
    widget = _denoise(viewer, str(tiny_mr_model.path))
    widget.coverage.setCurrentIndex(widget.coverage.findData(0.9))
    start = n_records()
    assert run_widget(qtbot, widget) == "failed"
    errors = errors_since(start)
    assert len(errors) == 1 and "no interval calibration" in errors[0] and "\n" not in errors[0]
    assert "no interval calibration" in widget.controls.status.text()
    assert [layer.name for layer in viewer.layers] == ["epi"]


def test_new_choices_have_plain_tooltips_and_match_the_task(make_napari_viewer):
    from qtpy.QtCore import Qt

    from medidiff.choices import FdrMethod
    from medidiff.tasks.denoise_intervals import MAX_COVERAGE, MIN_COVERAGE
    from medidiff.tasks.ensemble import ENSEMBLE_SIZES
    from napari_medidiff.widgets.anomaly import AnomalyWidget
    from napari_medidiff.widgets.denoise import DenoiseWidget

    viewer = make_napari_viewer()
    den, ano = DenoiseWidget(viewer), AnomalyWidget(viewer)
    assert [den.ensemble.itemData(i) for i in range(den.ensemble.count())] == list(ENSEMBLE_SIZES)
    levels = [den.coverage.itemData(i) for i in range(den.coverage.count())]
    assert levels[0] is None and all(MIN_COVERAGE <= c <= MAX_COVERAGE for c in levels[1:])
    assert [ano.fdr_method.itemData(i) for i in range(1, ano.fdr_method.count())] == list(FdrMethod.values())
    for combo in (den.ensemble, den.coverage, ano.fdr_method):
        for i in range(combo.count()):
            tip = combo.itemData(i, Qt.ItemDataRole.ToolTipRole)
            assert tip and "\n" not in tip and "diffusion" not in tip.lower()
    den.deleteLater()
    ano.deleteLater()


def test_a_folder_run_writes_both_bounds(make_napari_viewer, qtbot, noisy_mr_slice, tmp_path):
    from medidiff.io import save_scan

    src = tmp_path / "scans"
    save_scan(noisy_mr_slice, src / "a.nii.gz")
    viewer = make_napari_viewer()
    widget = _denoise(viewer, "mr2d")
    widget.coverage.setCurrentIndex(widget.coverage.findData(0.8))
    widget.batch.set_mode("folder")
    widget.batch.input_folder.setText(str(src))
    out = tmp_path / "denoised"
    widget.batch.output_folder.setText(str(out))
    assert run_widget(qtbot, widget) == "succeeded", widget.controls.status.text()
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "interval-high", "interval-low"]
    result = load_scan(out / "a.nii.gz").array
    low, high = (load_scan(out / folder / "a.nii.gz") for folder in ("interval-low", "interval-high"))
    np.testing.assert_allclose(low.affine, noisy_mr_slice.affine, atol=1e-4)
    assert np.mean((low.array <= result + 1e-3) & (result <= high.array + 1e-3)) >= 0.99
    assert np.mean(high.array - low.array) > 0


def test_cancel_with_intervals_adds_no_layer(make_napari_viewer, qtbot, noisy_mr_slice):
    """mr2d on a 2x2 tiled slice with bounds: Cancel at the second network call stops within one call."""
    from viewer_helpers import RUN_TIMEOUT_MS

    tiled = np.ascontiguousarray(np.tile(noisy_mr_slice.array, (2, 2)))
    big = Scan(tiled, noisy_mr_slice.spacing, noisy_mr_slice.affine, "MR", dict(noisy_mr_slice.meta))
    viewer = make_napari_viewer()
    add_scan(viewer, big, "big")
    widget = _denoise(viewer, "mr2d")
    widget.coverage.setCurrentIndex(widget.coverage.findData(0.9))
    cancel_after(widget, widget.runner.network_call, 2)
    with qtbot.waitSignal(widget.runner.finished, timeout=RUN_TIMEOUT_MS):
        widget.controls.run_button.click()
    assert widget.runner.outcome == "cancelled", widget.controls.status.text()
    assert widget.runner.calls_after_cancel is not None and widget.runner.calls_after_cancel <= 1
    assert [layer.name for layer in viewer.layers] == ["big"]
