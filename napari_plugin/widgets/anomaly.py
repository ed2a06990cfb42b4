"""The Detect anomalies widget: an image layer in; a heat-map overlay, a labels layer and a score out.

Runs ``medidiff.tasks.anomaly.detect_anomalies_steps`` in a worker. The map (scan intensity
units) is added as a semi-transparent ``inferno`` overlay and the mask ``map > threshold`` (inside
the scored foreground) as a labels layer, both with the input layer's geometry. Changing the
threshold after a run redraws the labels from the map without running the model again.
*False-discovery rate* q (0 = off) makes the mask the task's Benjamini-Hochberg mask instead
(``AnomalyOptions(fdr=q, fdr_method=...)``, as ``medidiff anomaly --fdr q --fdr-method M``): the
labels layer is then named for it (``"... anomalies (FDR 5 %)"``) and records the task's FDR
record; the threshold control is off while it is on. The map score (``--score``,
``--smooth-sigma``) is not offered: a calibrated model fixes both (any other value is refused
with "auto" or an FDR rate), and an uncalibrated model only has the plain residual.
*Run on* runs it on every image layer (map and labels per layer) or on a folder of scans (maps
under the scans' names, masks in ``masks/``); *Slice along* picks the axis a 2D model walks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox, QWidget

from medidiff.choices import AnomalyMethod, Direction
from medidiff.io.scan import Scan
from medidiff.tasks.anomaly.options import AnomalyOptions

from .base import TaskWidget
from .pickers import LayerPicker, model_config
from .results import add_scan_layer
from .wording import FDR_METHOD_CHOICES, FDR_METHOD_TIP, FDR_TIP, percent

__all__ = ["AnomalyWidget", "METHODS", "DIRECTIONS"]

METHODS = AnomalyMethod.values()
DIRECTIONS = Direction.values()
_CALIBRATED = "as calibrated"
_AUTO = -1.0  # the threshold spin box's "auto" value (maps are >= 0, so no real threshold is negative)
_MAX_FDR = 0.5  # a mask expected to be more than half false is no use


class AnomalyWidget(TaskWidget):
    """Detect anomalies in the chosen image layer with a model trained on healthy scans."""

    title = "Detect anomalies"
    run_text = "Detect"
    task = "medidiff.tasks.anomaly:detect_anomalies_steps"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.layer_picker = LayerPicker(napari_viewer, "image", parent=self)
        self.method = QComboBox(self)
        self.method.addItem(_CALIBRATED)
        self.method.addItems(METHODS)
        self.method.setToolTip("ddpm: Gaussian noise; simplex: AnoDDPM simplex noise; patched: pDDPM, one "
                               "noised patch at a time. 'as calibrated' uses the model's calibrated options")
        self.direction = QComboBox(self)
        self.direction.addItem(_CALIBRATED)
        self.direction.addItems(DIRECTIONS)
        self.direction.setToolTip("both: |scan - reconstruction|; bright/dark: only voxels brighter/darker")
        self.threshold = QDoubleSpinBox(self)
        self.threshold.setRange(_AUTO, 1e9)
        self.threshold.setDecimals(3)
        self.threshold.setSpecialValueText("auto (calibrated)")
        self.threshold.setValue(_AUTO)
        self.threshold.setToolTip("Map value above which a voxel is anomalous (intensity units for a plain map, "
                                  "healthy spreads for a calibrated z-score map); auto uses the threshold "
                                  "calibrated on healthy scans")
        self.fdr = QDoubleSpinBox(self)
        self.fdr.setRange(0.0, _MAX_FDR)
        self.fdr.setDecimals(2)
        self.fdr.setSingleStep(0.01)
        self.fdr.setSpecialValueText("off (use the threshold)")
        self.fdr.setValue(0.0)
        self.fdr.setToolTip(FDR_TIP)
        self.fdr_method = QComboBox(self)
        for label, value, tip in FDR_METHOD_CHOICES:
            self.fdr_method.addItem(label, value)
            self.fdr_method.setItemData(self.fdr_method.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.fdr_method.setToolTip(FDR_METHOD_TIP)
        self.seed = QSpinBox(self)
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("The same seed gives the same map")
        self.batch_size = QSpinBox(self)
        self.batch_size.setRange(1, 256)
        self.batch_size.setValue(8)
        self.batch_size.setToolTip("Slices the network takes at once: lower it if memory runs out")
        self.form.addRow("Image", self.layer_picker)
        self.add_batch_row()
        self.form.addRow("Method", self.method)
        self.form.addRow("Direction", self.direction)
        self.form.addRow("Threshold", self.threshold)
        self.form.addRow("False-discovery rate", self.fdr)
        self.form.addRow("FDR method", self.fdr_method)
        self.form.addRow("Seed", self.seed)
        self.form.addRow("Batch size", self.batch_size)
        self.add_slice_axis_row()
        self._last: tuple[Any, Any, Any] | None = None  # (result, map layer, labels layer)
        self.threshold.valueChanged.connect(self._threshold_changed)
        self.fdr.valueChanged.connect(self._fdr_changed)
        self.model_picker.changed.connect(self._model_changed)
        self._model_changed(self.model_picker.spec())
        self.remember_controls(method=self.method, direction=self.direction, threshold=self.threshold,
                               fdr=self.fdr, fdr_method=self.fdr_method, seed=self.seed, batch_size=self.batch_size)
        self._fdr_changed(self.fdr.value())
        self.watch_input(self.layer_picker)

    def _fdr_changed(self, value: float) -> None:
        """An FDR mask replaces the threshold: the threshold control is off while a rate is set."""
        self.threshold.setEnabled(value <= 0)
        self.fdr_method.setEnabled(value > 0)

    def _model_changed(self, spec: str) -> None:
        cfg = model_config(spec)
        if cfg is not None and "threshold" not in (cfg.get("anomaly") or {}):
            self.controls.status.setText("this model has no calibrated threshold: set one "
                                         "(or run `medidiff anomaly calibrate`)")
        else:
            self.controls.status.setText("")

    def options(self) -> AnomalyOptions:
        """The :class:`AnomalyOptions` the controls describe (the same object the task and CLI use)."""
        thr = self.threshold.value()
        q = self.fdr.value()
        fdr = q if q > 0 else None
        return AnomalyOptions(
            method=None if self.method.currentText() == _CALIBRATED else self.method.currentText(),
            direction=None if self.direction.currentText() == _CALIBRATED else self.direction.currentText(),
            threshold="auto" if thr <= _AUTO or fdr is not None else thr,
            fdr=fdr,
            fdr_method=self.fdr_method.currentData() if fdr is not None else None,
            seed=self.seed.value(),
            batch_size=self.batch_size.value(),
            device=self.device_picker.device(),
        )

    def prepare_scan(self) -> Callable[[Scan, Callable[[str], None]], tuple[tuple[Any, ...], dict[str, Any]]]:
        """``prepare(scan, warn) -> ((scan, options), {})`` for ``detect_anomalies_steps``."""
        options = self.options()
        return lambda scan, warn: ((scan, options), {})

    def output_paths(self, out_dir: Path, name: str) -> tuple[Path, ...]:
        """The map as ``out_dir / name``, the mask as ``out_dir / masks / name``."""
        return (out_dir / name, out_dir / "masks" / name)

    def save_result(self, result: Any, out_dir: Path, name: str, scan: Scan) -> tuple[Path, ...]:
        from medidiff.io import save_scan

        return (save_scan(result.map, out_dir / name, source=scan),
                save_scan(result.mask, out_dir / "masks" / name, source=scan))

    def show_result_for(self, like: Any, result: Any) -> None:
        info = {"medidiff_anomaly": {"score": float(result.score), "threshold": float(result.threshold),
                                     "options": dict(result.options)}}
        if result.fdr is not None:
            info["medidiff_anomaly"]["fdr"] = _plain_json(result.fdr)
        top = float(np.max(result.map.array)) if result.map.array.size else 0.0
        thr = float(result.threshold)  # an FDR mask that flags nothing has an infinite threshold
        limits = (0.0, max(top, thr if np.isfinite(thr) else 0.0, 1e-6))
        heat = add_scan_layer(self.viewer, result.map, f"{like.name} anomaly map", "image", like=like, metadata=info,
                              colormap="inferno", opacity=0.5, blending="additive", contrast_limits=limits)
        name = f"{like.name} anomalies"
        if result.fdr is not None:  # the mask is the FDR mask: the layer says so
            name = f"{name} (FDR {percent(result.fdr['q'])})"
        labels = add_scan_layer(self.viewer, result.mask, name, "labels", like=like,
                                metadata=info, opacity=0.6)
        self._last = (result, heat, labels)
        self._show_score(result.score, result.threshold, int(np.count_nonzero(labels.data)), result.fdr)

    def _show_score(self, score: float, threshold: float, voxels: int, fdr: dict[str, Any] | None = None) -> None:
        if fdr is not None:  # the mask's threshold is the one Benjamini-Hochberg chose, not a verdict on the scan
            self.result_label.setText(f"score {score:.4g}; FDR {percent(fdr['q'])} mask ({fdr['fdr_method']}): "
                                      f"{voxels} voxels flagged")
            return
        verdict = "above" if score > threshold else "below"
        self.result_label.setText(f"score {score:.4g} ({verdict} threshold {threshold:.4g}); "
                                  f"{voxels} voxels flagged")

    def _threshold_changed(self, value: float) -> None:
        """Redraw the last run's labels for a new threshold (the map does not change)."""
        if self._last is None or value <= _AUTO:
            return
        result, _, labels = self._last
        if result.fdr is not None:  # an FDR mask is not a threshold of the user's: it stays as the task made it
            return
        if labels not in self.viewer.layers:
            self._last = None
            return
        mask = result.map.array > value
        if result.foreground is not None:
            mask &= result.foreground.array > 0
        labels.data = mask.astype(labels.data.dtype)
        labels.metadata["medidiff_anomaly"] = {**labels.metadata.get("medidiff_anomaly", {}), "threshold": value}
        self._show_score(result.score, value, int(np.count_nonzero(mask)))


def _plain_json(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers (layer metadata stays plain and comparable)."""
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
