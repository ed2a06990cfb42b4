"""The Denoise widget: an image layer in, a denoised layer (and, for ``posterior``, an uncertainty layer) out.

Runs ``medidiff.tasks.denoise.denoise_steps`` in a worker; the outputs keep the input layer's
scale, translate, affine and metadata.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox, QWidget

from medidiff.choices import DenoiseMethod, NoiseChoice

from .base import TaskWidget
from .pickers import LayerPicker
from .results import add_scan_layer, input_scan

__all__ = ["DenoiseWidget", "METHODS", "NOISE_CHOICES"]

# mirrors medidiff.tasks.denoise (not imported here: that pulls in torch)
METHODS = DenoiseMethod.values()
NOISE_CHOICES = NoiseChoice.values()
_METHOD_TIPS = {
    "tweedie": "one network call: the posterior mean (best PSNR for its cost)",
    "ddim": "a few deterministic steps: sharper, slightly lower PSNR",
    "posterior": "several stochastic runs: their mean plus a per-voxel uncertainty layer",
}


class DenoiseWidget(TaskWidget):
    """Denoise the chosen image layer with a diffusion model."""

    title = "Denoise"
    run_text = "Denoise"
    task = "medidiff.tasks.denoise:denoise_steps"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.layer_picker = LayerPicker(napari_viewer, "image", parent=self)
        self.method = QComboBox(self)
        for name in METHODS:
            self.method.addItem(name)
            self.method.setItemData(self.method.count() - 1, _METHOD_TIPS[name], Qt.ItemDataRole.ToolTipRole)
        self.noise = QComboBox(self)
        self.noise.addItems(NOISE_CHOICES)
        self.noise.setToolTip("auto picks from the modality: MR -> Rician, microscopy -> Poisson-Gaussian, "
                              "else Gaussian")
        self.sigma = QDoubleSpinBox(self)
        self.sigma.setRange(0.0, 1e9)
        self.sigma.setDecimals(3)
        self.sigma.setSpecialValueText("auto (estimate)")
        self.sigma.setToolTip("noise standard deviation in the scan's units; auto estimates it from the image")
        self.strength = QDoubleSpinBox(self)
        self.strength.setRange(0.05, 10.0)
        self.strength.setSingleStep(0.1)
        self.strength.setValue(1.0)
        self.strength.setToolTip("scales the noise level the model removes: > 1 smooths more, < 1 less")
        self.steps = QSpinBox(self)
        self.steps.setRange(1, 1000)
        self.steps.setValue(5)
        self.samples = QSpinBox(self)
        self.samples.setRange(2, 256)
        self.samples.setValue(8)
        self.seed = QSpinBox(self)
        self.seed.setRange(0, 2**31 - 1)
        self.form.addRow("Image", self.layer_picker)
        self.form.addRow("Method", self.method)
        self.form.addRow("Noise model", self.noise)
        self.form.addRow("Noise σ", self.sigma)
        self.form.addRow("Strength", self.strength)
        self.form.addRow("Steps", self.steps)
        self.form.addRow("Samples", self.samples)
        self.form.addRow("Seed", self.seed)
        self.method.currentTextChanged.connect(self._method_changed)
        self._method_changed(self.method.currentText())

    def _method_changed(self, method: str) -> None:
        self.steps.setEnabled(method in ("ddim", "posterior"))
        self.samples.setEnabled(method == "posterior")
        self.seed.setEnabled(method == "posterior")

    def options(self) -> dict[str, Any]:
        """The task options the controls describe (``denoise_steps`` keyword arguments)."""
        sigma = self.sigma.value()
        return {
            "method": self.method.currentText(),
            "noise": self.noise.currentText(),
            "sigma": None if sigma == self.sigma.minimum() else sigma,
            "strength": self.strength.value(),
            "steps": self.steps.value(),
            "samples": self.samples.value(),
            "seed": self.seed.value(),
            "device": self.device_picker.device(),
        }

    def job_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        layer = self.chosen_layer(self.layer_picker)
        self._input = layer
        return (input_scan(layer),), self.options()

    def show_result(self, result: Any) -> None:
        like = self._input
        style: dict[str, Any] = {}
        for key in ("colormap", "contrast_limits", "gamma"):
            try:
                style[key] = getattr(like, key)
            except Exception:  # a layer removed meanwhile: use napari's defaults
                pass
        if "colormap" in style:
            style["colormap"] = style["colormap"].name
        info = {"medidiff_denoise": {"noise_model": result.noise_model, "reason": result.reason,
                                     "sigma": _plain(result.sigma), "timestep": _plain(result.timestep),
                                     "options": dict(self._options)}}
        add_scan_layer(self.viewer, result.scan, f"{like.name} denoised", "image", like=like, metadata=info, **style)
        if result.uncertainty is not None:
            add_scan_layer(self.viewer, result.uncertainty, f"{like.name} uncertainty", "image", like=like,
                           metadata=info, colormap="magma", visible=False)
        sigma = _plain(result.sigma)
        sigma_text = f"{sigma:.4g}" if isinstance(sigma, float) else f"{min(sigma):.4g}–{max(sigma):.4g} (per slice)"
        self.result_label.setText(f"noise model {result.noise_model}, σ = {sigma_text} ({result.reason})")


def _plain(value: Any) -> Any:
    """A float, or a list of floats for per-slice values (numpy arrays do not belong in metadata)."""
    try:
        return float(value)
    except TypeError:
        return [float(v) for v in value]
