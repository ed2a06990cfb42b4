"""The Generate widget: N synthetic images from a model, added as one stacked layer (slider = sample).

Runs ``medidiff.tasks.generate.generate_steps`` in a worker. Images carry the model's training
spacing and orientation (or, for mask-conditioned models, the mask layer's geometry); the
masks they were conditioned on come back as a stacked labels layer.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox, QWidget

from medidiff.choices import SAMPLERS_FOR

from .base import TaskWidget
from .pickers import LayerPicker, model_config, model_label
from .results import add_stacked_layer, input_scan
from .wording import SAMPLER_TIPS

__all__ = ["GenerateWidget", "SAMPLERS"]

# mirrors medidiff.core.sampling.SAMPLERS (not imported here: that pulls in torch)
SAMPLERS = SAMPLERS_FOR
_DEFAULT = "default"
_CYCLE = "(each class in turn)"


class GenerateWidget(TaskWidget):
    """Generate synthetic images with a diffusion model."""

    title = "Generate synthetic images"
    run_text = "Generate"
    task = "medidiff.tasks.generate:generate_steps"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.n = QSpinBox(self)
        self.n.setRange(1, 10_000)
        self.n.setValue(4)
        self.n.setToolTip("How many new images to make")
        self.seed = QSpinBox(self)
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("The same seed gives the same images")
        self.sampler = QComboBox(self)
        self.sampler.setToolTip("How the images are drawn; hover over each choice for what it does")
        self.steps = QSpinBox(self)
        self.steps.setRange(1, 1000)
        self.steps.setValue(20)
        self.steps.setToolTip("Refining passes per image: more is slower and usually cleaner")
        self.guidance = QDoubleSpinBox(self)
        self.guidance.setRange(0.0, 20.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setValue(1.0)
        self.guidance.setToolTip("How strongly images follow the chosen class (class-conditioned models); 1 = no push")
        self.label = QComboBox(self)
        self.label.setToolTip("Which kind of image to make (models trained with classes); cycle takes each in turn")
        self.mask_picker = LayerPicker(napari_viewer, "labels", optional=True, parent=self)
        self.mask_picker.setToolTip("label maps to condition on (mask-conditioned models): a 2D labels "
                                    "layer, or a stack of them (one per sample, repeated in order)")
        self.batch_size = QSpinBox(self)
        self.batch_size.setRange(1, 256)
        self.batch_size.setValue(4)
        self.batch_size.setToolTip("Images made at once: lower it if memory runs out")
        self.form.addRow("Images", self.n)
        self.form.addRow("Seed", self.seed)
        self.form.addRow("Sampler", self.sampler)
        self.form.addRow("Steps", self.steps)
        self.form.addRow("Class", self.label)
        self.form.addRow("Guidance", self.guidance)
        self.form.addRow("Masks", self.mask_picker)
        self.form.addRow("Batch size", self.batch_size)
        self.model_picker.changed.connect(self._model_changed)
        self._model_changed(self.model_picker.spec())
        self.remember_controls(n=self.n, seed=self.seed, sampler=self.sampler, steps=self.steps,
                               guidance=self.guidance, batch_size=self.batch_size)

    def _model_changed(self, spec: str) -> None:
        """Offer the samplers, classes and mask input this model supports (read from its config.json)."""
        cfg = model_config(spec) or {}
        kind = str((cfg.get("schedule") or {}).get("kind", ""))
        current = self.sampler.currentText()
        self.sampler.clear()
        self.sampler.addItem(_DEFAULT)
        self.sampler.addItems(SAMPLERS.get(kind, SAMPLERS["ddpm"] + SAMPLERS["rflow"]))
        for index in range(self.sampler.count()):
            tip = SAMPLER_TIPS.get(self.sampler.itemText(index), "")
            self.sampler.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)
        self.sampler.setCurrentText(current if self.sampler.findText(current) >= 0 else _DEFAULT)
        names = list(cfg.get("class_names") or [])
        k = int(cfg.get("num_classes") or 0)
        self.label.clear()
        if k:
            self.label.addItem(_CYCLE)
            self.label.addItems(names if len(names) == k else [str(i) for i in range(k)])
        else:
            self.label.addItem("(the model has no classes)")
        self.label.setEnabled(bool(k))
        self.guidance.setEnabled(bool(k))
        self.mask_picker.setEnabled(bool(cfg.get("mask_classes")))

    def options(self) -> dict[str, Any]:
        """The ``generate_steps`` keyword arguments the controls describe (without masks)."""
        label = self.label.currentText() if self.label.isEnabled() else _CYCLE
        return {
            "seed": self.seed.value(),
            "sampler": None if self.sampler.currentText() == _DEFAULT else self.sampler.currentText(),
            "steps": self.steps.value(),
            "guidance": self.guidance.value() if self.guidance.isEnabled() else 1.0,
            "labels": None if label in (_CYCLE, "") else label,
            "batch_size": self.batch_size.value(),
            "device": self.device_picker.device(),
        }

    def _masks(self) -> list[Any] | None:
        layer = self.mask_picker.layer() if self.mask_picker.isEnabled() else None
        if layer is None:
            return None
        scan = input_scan(layer)
        dims = int((model_config(self.model_picker.spec()) or {}).get("spatial_dims") or scan.ndim)
        if scan.ndim == dims + 1:  # a stack of label maps: one per sample (training geometry)
            return [scan.array[i] for i in range(scan.shape[0])]
        return [scan]

    def job_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.n.value(),), {"masks": self._masks(), **self.options()}

    def show_result(self, result: Any) -> None:
        if not result.scans:
            self.result_label.setText("nothing generated")
            return
        name = f"generated ({model_label(self.job_model.path if self.job_model is not None else None)})"
        info = {"medidiff_generate": {"seeds": [int(s) for s in result.seeds],
                                      "labels": [None if v is None else int(v) for v in result.labels],
                                      "options": {k: v for k, v in self._options.items() if k != "masks"}}}
        add_stacked_layer(self.viewer, result.scans, name, "image", metadata=info, colormap="gray")
        if result.masks:
            add_stacked_layer(self.viewer, result.masks, f"{name} masks", "labels", metadata=info, opacity=0.4)
        shape = "x".join(str(s) for s in result.scans[0].shape)
        self.result_label.setText(f"{len(result.scans)} images of {shape} (seed {self._options['seed']}); "
                                  "move the first slider to browse them")
