"""The Denoise widget: an image layer in, a denoised layer (and, for ``posterior``, an uncertainty layer) out.

Runs ``medidiff.tasks.denoise.denoise_steps`` in a worker; the outputs keep the input layer's
scale, translate, affine and metadata. The *Modality* control says what the scan is when the
file does not (a NIfTI records no modality): it decides the noise model under ``auto`` and the
model picked by default. Left at "from the file", a scan whose file records no modality is
taken to be what the chosen model is for (an MR NIfTI with an MR model gets Rician noise). Every control is remembered for the next session.
*Run on* runs it on every image layer or on a folder of scans (``widgets.batch``); *Slice along*
picks the axis a 2D model walks through a volume (``widgets.slice_axis``).
*Average over flips* is the task's self-ensemble (``ensemble=1|4|8``, ``--ensemble``; tweedie
only, so the control is off for the other methods). *Interval coverage* (``coverage=``, as
``--interval LOW,HIGH --coverage C``) adds a lower and an upper bound layer with the result's
geometry; a model without an interval calibration for the method is refused by the task in one
line, shown like every task error. The task's self-check (an estimated gain without clean data,
``medidiff.tasks.denoise_selfcheck``) is added to the result line and the layer metadata; its
"unlikely to help" warning reaches the viewer as a notification like every task warning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox, QWidget

from medidiff.choices import DenoiseMethod, NoiseChoice
from medidiff.io.scan import Scan

from .base import TaskWidget
from .pickers import LayerPicker, modality_family
from .results import add_scan_layer
from .wording import (COVERAGE_CHOICES, COVERAGE_TIP, ENSEMBLE_CHOICES, ENSEMBLE_TIP, FAMILY_CODES, METHOD_TIPS,
                      MODALITIES, NOISE_TIPS, noise_summary, percent)

__all__ = ["DenoiseWidget", "METHODS", "NOISE_CHOICES"]

METHODS = DenoiseMethod.values()
NOISE_CHOICES = NoiseChoice.values()
_BOUND_FOLDERS = ("interval-low", "interval-high")  # where a folder run writes the two bounds


def _combo(parent: QWidget, items: tuple[str, ...], tips: dict[str, str]) -> QComboBox:
    combo = QComboBox(parent)
    for name in items:
        combo.addItem(name)
        combo.setItemData(combo.count() - 1, tips[name], Qt.ItemDataRole.ToolTipRole)
    return combo


class DenoiseWidget(TaskWidget):
    """Denoise the chosen image layer with a diffusion model."""

    title = "Denoise"
    run_text = "Denoise"
    task = "medidiff.tasks.denoise:denoise_steps"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.layer_picker = LayerPicker(napari_viewer, "image", parent=self)
        self.modality = QComboBox(self)
        for label, code, tip in MODALITIES:
            self.modality.addItem(label, code)
            self.modality.setItemData(self.modality.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.modality.setToolTip("What the scan is, for files that do not say: decides the noise model "
                                 "(under auto) and the default model")
        self.method = _combo(self, METHODS, METHOD_TIPS)
        self.method.setToolTip("How the noise is removed; hover over each choice for what it does")
        self.noise = _combo(self, NOISE_CHOICES, NOISE_TIPS)
        self.noise.setToolTip("What kind of noise the scan has; auto picks it from the modality")
        self.sigma = QDoubleSpinBox(self)
        self.sigma.setRange(0.0, 1e9)
        self.sigma.setDecimals(3)
        self.sigma.setSpecialValueText("auto (estimate)")
        self.sigma.setToolTip("How strong the noise is (its standard deviation, in the scan's own units); "
                              "auto measures it on the image")
        self.strength = QDoubleSpinBox(self)
        self.strength.setRange(0.05, 10.0)
        self.strength.setSingleStep(0.1)
        self.strength.setValue(1.0)
        self.strength.setToolTip("More than 1 smooths more, less than 1 keeps more texture")
        self.steps = QSpinBox(self)
        self.steps.setRange(1, 1000)
        self.steps.setValue(5)
        self.steps.setToolTip("Refining passes (ddim, posterior): more is slower")
        self.samples = QSpinBox(self)
        self.samples.setRange(2, 256)
        self.samples.setValue(8)
        self.samples.setToolTip("Random passes averaged (posterior): more gives a smoother result and "
                                "a better uncertainty map, and takes longer")
        self.ensemble = QComboBox(self)
        for size, label, tip in ENSEMBLE_CHOICES:
            self.ensemble.addItem(label, size)
            self.ensemble.setItemData(self.ensemble.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.ensemble.setToolTip(ENSEMBLE_TIP)
        self.coverage = QComboBox(self)
        for label, value, tip in COVERAGE_CHOICES:
            self.coverage.addItem(label, value)
            self.coverage.setItemData(self.coverage.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.coverage.setToolTip(COVERAGE_TIP)
        self.seed = QSpinBox(self)
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("The same seed gives the same result (posterior)")
        self.batch_size = QSpinBox(self)
        self.batch_size.setRange(1, 256)
        self.batch_size.setValue(8)
        self.batch_size.setToolTip("Slices the network takes at once: lower it if memory runs out")
        self.form.addRow("Image", self.layer_picker)
        self.add_batch_row()
        self.form.addRow("Modality", self.modality)
        self.form.addRow("Method", self.method)
        self.form.addRow("Noise model", self.noise)
        self.form.addRow("Noise level", self.sigma)
        self.form.addRow("Strength", self.strength)
        self.form.addRow("Steps", self.steps)
        self.form.addRow("Samples", self.samples)
        self.form.addRow("Average over flips", self.ensemble)
        self.form.addRow("Interval coverage", self.coverage)
        self.form.addRow("Seed", self.seed)
        self.form.addRow("Slices per call", self.batch_size)
        self.add_slice_axis_row()
        self.method.currentTextChanged.connect(self._method_changed)
        self.remember_controls(modality=self.modality, method=self.method, noise=self.noise, sigma=self.sigma,
                               strength=self.strength, steps=self.steps, samples=self.samples, ensemble=self.ensemble,
                               coverage=self.coverage, seed=self.seed, batch_size=self.batch_size)
        self._method_changed(self.method.currentText())
        self.watch_input(self.layer_picker, self.modality)

    def _method_changed(self, method: str) -> None:
        self.steps.setEnabled(method in ("ddim", "posterior"))
        self.samples.setEnabled(method == "posterior")
        self.seed.setEnabled(method == "posterior")
        self.ensemble.setEnabled(method == "tweedie")  # the task averages over flips for tweedie only

    def options(self) -> dict[str, Any]:
        """The task options the controls describe (``denoise_steps`` keyword arguments, no device)."""
        sigma = self.sigma.value()
        return {
            "method": self.method.currentText(),
            "noise": self.noise.currentText(),
            "sigma": None if sigma == self.sigma.minimum() else sigma,
            "strength": self.strength.value(),
            "steps": self.steps.value(),
            "samples": self.samples.value(),
            # a disabled control does not apply: other methods are run without the self-ensemble
            "ensemble": int(self.ensemble.currentData()) if self.method.currentText() == "tweedie" else 1,
            "coverage": self.coverage.currentData(),
            "seed": self.seed.value(),
            "batch_size": self.batch_size.value(),
        }

    def prepare_scan(self) -> Callable[[Scan, Callable[[str], None]], tuple[tuple[Any, ...], dict[str, Any]]]:
        """``prepare(scan, warn)``: the scan with the modality the controls say, and the task options."""
        chosen = self.modality.currentData()
        model_family = self.model_picker.modality()
        model_name = self.model_picker.name()
        options = self.options()

        def prepare(scan: Scan, warn: Callable[[str], None]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if chosen:  # the user says what the scan is: that wins over the file (which may not say)
                scan = scan.with_array(scan.array, modality=str(chosen))
            elif modality_family(scan.modality, scan.meta.get("format")) == "":
                # the file does not say (a NIfTI): take the scan to be what the chosen model is for
                code = FAMILY_CODES.get(model_family)
                if code:
                    scan = scan.with_array(scan.array, modality=code)
            scan_family = modality_family(scan.modality, scan.meta.get("format"))
            if scan_family and model_family and scan_family != model_family:
                warn(f"the model {model_name} is for {model_family} images but this scan is {scan_family}: "
                     f"expect a poor result; choose a {scan_family} model (or set Modality if the scan is "
                     "mislabelled)")
            return (scan,), dict(options)

        return prepare

    def save_result(self, result: Any, out_dir: Path, name: str, scan: Scan) -> tuple[Path, ...]:
        """Write the denoised scan as ``out_dir / name`` (and its uncertainty in ``out_dir / uncertainty``)."""
        from medidiff.io import save_scan

        written = [save_scan(result.scan, out_dir / name, source=scan)]
        if result.uncertainty is not None:
            written.append(save_scan(result.uncertainty, out_dir / "uncertainty" / name, source=scan))
        if result.interval is not None:
            for folder, bound in zip(_BOUND_FOLDERS, result.interval):
                written.append(save_scan(bound, out_dir / folder / name, source=scan))
        return tuple(written)

    def output_paths(self, out_dir: Path, name: str) -> tuple[Path, ...]:
        extra = (out_dir / "uncertainty" / name,) if self.method.currentText() == "posterior" else ()
        if self.coverage.currentData() is not None:
            extra = (*extra, *(out_dir / folder / name for folder in _BOUND_FOLDERS))
        return (out_dir / name, *extra)

    def show_result_for(self, like: Any, result: Any) -> None:
        style: dict[str, Any] = {}
        for key in ("colormap", "contrast_limits", "gamma"):
            try:
                style[key] = getattr(like, key)
            except Exception:  # a layer removed meanwhile: use napari's defaults
                pass
        if "colormap" in style:
            style["colormap"] = style["colormap"].name
        summary = noise_summary(result, self._options.get("sigma") is not None)
        check = getattr(result, "self_check", None)  # the SURE gain estimate; its warning is a notification
        if check is not None:
            summary = f"{summary}; {check.line()}"
        info = {"medidiff_denoise": {"noise_model": result.noise_model, "summary": summary, "reason": result.reason,
                                     "sigma": _plain(result.sigma), "timestep": _plain(result.timestep),
                                     "options": dict(self._options),
                                     "self_check": None if check is None else check.to_dict()}}
        add_scan_layer(self.viewer, result.scan, f"{like.name} denoised", "image", like=like, metadata=info, **style)
        if result.uncertainty is not None:
            top = float(np.max(result.uncertainty.array)) if result.uncertainty.array.size else 0.0
            add_scan_layer(self.viewer, result.uncertainty, f"{like.name} uncertainty", "image", like=like,
                           metadata=info, colormap="magma", visible=False, contrast_limits=(0.0, max(top, 1e-6)))
        if result.interval is not None:
            level = percent(result.coverage)
            for bound, side in zip(result.interval, ("lower", "upper")):
                bound_info = {"medidiff_denoise": {**info["medidiff_denoise"], "interval": side,
                                                   "coverage": float(result.coverage)}}
                add_scan_layer(self.viewer, bound, f"{like.name} {side} bound ({level})", "image", like=like,
                               metadata=bound_info, visible=False, **style)
            summary = f"{summary}; {level} bounds added"
        self.result_label.setText(summary)
        self.result_label.setToolTip(f"How it was decided: {result.reason}")


def _plain(value: Any) -> list[float]:
    """Per-item values as a list of floats (numpy arrays do not belong in layer metadata)."""
    return [float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64))]
