"""The Train widget: a small model trained on the open layers, within a time budget, ready to use.

Runs ``medidiff.tasks.train.train_steps`` in a worker on the chosen image layers (as ``Scan``s,
modality from the *Modality* control or the layers). The loss is drawn as it goes. Training
stops at whichever comes first: the step limit or the time budget (the task's generator is then
closed, which writes its checkpoint). Every *Preview every* steps the task draws a few samples from the model so far (a PNG in the run
folder), shown under the loss. The model is copied into the user model folder under the
name given, so it appears, by name, in every medidiff widget's model list. Cancel stops at the
next step and adds no model. The run folder (log, checkpoint) is kept next to the user models
in ``napari-runs/NAME``.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QImage, QPainter, QPen, QPixmap, QPolygonF
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QLineEdit,
    QListWidget,
    QSpinBox,
    QWidget,
)

from .base import TaskWidget
from .pickers import ModelPicker
from .results import input_scan
from .wording import MODALITIES

__all__ = ["TrainWidget", "TrainOutcome", "LossCurve"]


@dataclass(frozen=True)
class TrainOutcome:
    """What a Train run made: the model's name and folder, the losses, and why it stopped."""

    name: str
    folder: Path
    losses: tuple[float, ...]
    seconds: float
    stopped_by_budget: bool


class LossCurve(QWidget):
    """A small line plot of the training loss (log scale), redrawn as values arrive."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: list[float] = []
        self.setMinimumHeight(70)
        self.setToolTip("Training loss (log scale): it should fall, then flatten")

    def clear(self) -> None:
        self.values = []
        self.update()

    def add(self, value: float) -> None:
        if value > 0:
            self.values.append(float(value))
            self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        import math

        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().base())
        if len(self.values) < 2:
            return
        logs = [math.log10(v) for v in self.values]
        low, high = min(logs), max(logs)
        span = (high - low) or 1.0
        w, h = max(self.width() - 4, 1), max(self.height() - 4, 1)
        n = len(logs) - 1
        points = QPolygonF([QPointF(2 + w * i / n, 2 + h * (1 - (v - low) / span)) for i, v in enumerate(logs)])
        painter.setPen(QPen(self.palette().text().color(), 1.5))
        painter.drawPolyline(points)


def _with_preview(event: Any, png: Path) -> Any:
    """``event`` with the sample grid the task just saved as its preview (8-bit gray), if there is one."""
    if not png.is_file():
        return event
    from PIL import Image

    with Image.open(png) as img:
        preview = np.asarray(img.convert("L"))
    return dataclasses.replace(event, preview=preview)


def _default_name(layer_name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", layer_name).strip("-")[:40] or "my"
    return f"{stem}-model"


class TrainWidget(TaskWidget):
    """Train a small diffusion model on the chosen image layers."""

    title = "Train"
    run_text = "Train"
    task = "medidiff.tasks.train:train_steps"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.form.setRowVisible(0, False)  # no model goes in: one comes out
        self.layers = QListWidget(self)
        self.layers.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.layers.setToolTip("The image layers to learn from (2D images or volumes, taken slice by slice)")
        self.layers.setMaximumHeight(100)
        self.name = QLineEdit(self)
        self.name.setToolTip("The new model's name: it appears under this name in every model list")
        self.modality = QComboBox(self)
        for label, code, tip in MODALITIES:
            self.modality.addItem(label, code)
            self.modality.setItemData(self.modality.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.modality.setToolTip("What the images are (recorded in the model, so it is offered for such scans)")
        self.minutes = QDoubleSpinBox(self)
        self.minutes.setRange(0.05, 24 * 60)
        self.minutes.setValue(5.0)
        self.minutes.setSuffix(" min")
        self.minutes.setToolTip("Training stops after this long (counted from the first step; or at the step "
                                "limit); longer is better")
        self.max_steps = QSpinBox(self)
        self.max_steps.setRange(10, 1_000_000)
        self.max_steps.setValue(3000)
        self.max_steps.setToolTip("Training stops after this many steps (or when the time is up)")
        self.image_size = QSpinBox(self)
        self.image_size.setRange(16, 512)
        self.image_size.setSingleStep(16)
        self.image_size.setValue(32)
        self.image_size.setToolTip("Patch size the model learns on (pixels); larger images are processed in tiles")
        self.batch_size = QSpinBox(self)
        self.batch_size.setRange(1, 512)
        self.batch_size.setValue(16)
        self.batch_size.setToolTip("Patches per step: more is smoother but slower per step")
        self.seed = QSpinBox(self)
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("The same seed and settings give the same model")
        self.preview_every = QSpinBox(self)
        self.preview_every.setRange(0, 1_000_000)
        self.preview_every.setValue(200)
        self.preview_every.setSpecialValueText("never")
        self.preview_every.setToolTip("Draw a few sample images from the model every this many steps, to see "
                                      "what it has learnt (takes a moment each time)")
        self.loss_curve = LossCurve(self)
        self.preview = QLabel(self)
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setToolTip("Samples drawn from the model so far")
        self.form.addRow("Images", self.layers)
        self.form.addRow("Name", self.name)
        self.form.addRow("Modality", self.modality)
        self.form.addRow("Time budget", self.minutes)
        self.form.addRow("Step limit", self.max_steps)
        self.form.addRow("Patch size", self.image_size)
        self.form.addRow("Batch size", self.batch_size)
        self.form.addRow("Seed", self.seed)
        self.form.addRow("Preview every", self.preview_every)
        self.form.addRow("Loss", self.loss_curve)
        self.form.addRow("Samples", self.preview)
        self.runner.progress.connect(self._progress)
        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.moved, events.changed):
            event.connect(self._refresh_layers)
        self._refresh_layers()
        self.remember_controls(modality=self.modality, minutes=self.minutes, max_steps=self.max_steps,
                               image_size=self.image_size, batch_size=self.batch_size, seed=self.seed,
                               preview_every=self.preview_every)

    def _image_layers(self) -> list[Any]:
        import napari.layers

        return [layer for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]

    def _refresh_layers(self, *_: Any) -> None:
        chosen = {item.text() for item in self.layers.selectedItems()}
        if not chosen:  # the viewer's own selection is what the user most likely means
            chosen = {layer.name for layer in self.viewer.layers.selection}
        self.layers.clear()
        for layer in self._image_layers():
            self.layers.addItem(layer.name)
            if layer.name in chosen:
                self.layers.item(self.layers.count() - 1).setSelected(True)
        if not self.layers.selectedItems() and self.layers.count():
            self.layers.item(self.layers.count() - 1).setSelected(True)
        if not self.name.text() and self.layers.selectedItems():
            self.name.setText(_default_name(self.layers.selectedItems()[0].text()))

    def chosen_layers(self) -> list[Any]:
        """The image layers chosen in the list (in viewer order)."""
        names = {item.text() for item in self.layers.selectedItems()}
        return [layer for layer in self._image_layers() if layer.name in names]

    def job_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        from medidiff.errors import MedidiffError
        from medidiff.model_store.registry import check_name, user_model_dir

        layers = self.chosen_layers()
        if not layers:
            raise MedidiffError("Train: no images; open a scan and choose it in the Images list")
        name = check_name(self.name.text().strip())
        target = user_model_dir() / name
        if target.exists():
            raise MedidiffError(f"Train: a model called {name!r} exists already ({target}); choose another name")
        modality = self.modality.currentData()
        scans = [input_scan(layer) for layer in layers]
        if modality:
            scans = [s.with_array(s.array, modality=str(modality)) for s in scans]
        self.loss_curve.clear()
        self.preview.clear()
        options = {"preview_every": self.preview_every.value(), "name": name, "minutes": self.minutes.value(), "steps": self.max_steps.value(),
                   "image_size": self.image_size.value(), "batch_size": self.batch_size.value(),
                   "seed": self.seed.value(), "modality": str(modality) if modality else None,
                   "layers": [layer.name for layer in layers]}
        return (scans,), options

    def _job(self, spec: str, args: tuple[Any, ...], options: dict[str, Any],
             axis: int | None = None) -> Generator[Any, None, Any]:
        # runs in the worker thread; a time budget is not a task option, so this drives the
        # task itself: after the budget it closes the generator, which checkpoints the model
        from medidiff.model_store.registry import user_model_dir
        from medidiff.tasks.train import TrainConfig, train_steps

        (scans,) = args
        name = options["name"]
        run_dir = user_model_dir().parent / "napari-runs" / name
        config = TrainConfig(dims=2, preset="tiny", image_size=options["image_size"], steps=options["steps"],
                             batch_size=options["batch_size"], seed=options["seed"], device=options["device"],
                             modality=options["modality"], checkpoint_every=0, checkpoint_minutes=0.0,
                             sample_every=options["preview_every"],
                             command=f"napari Train widget on layers {', '.join(options['layers'])}")
        steps = train_steps(scans, run_dir, config, overwrite=True)
        budget = 60.0 * float(options["minutes"])
        losses: list[float] = []
        start = time.monotonic()  # restarted at the first step: the budget is for training, not set-up
        by_budget = False
        try:
            while True:
                try:
                    event = next(steps)
                except StopIteration:
                    break
                if "loss" in (event.values or {}):
                    if not losses:
                        start = time.monotonic()
                    losses.append(float(event.values["loss"]))
                    event = _with_preview(event, run_dir / "samples" / f"step_{event.step:07d}.png")
                yield event
                if losses and time.monotonic() - start >= budget:
                    by_budget = True
                    break
        finally:
            steps.close()  # after the budget (or on Cancel) this writes the run's checkpoint
        return self._publish(run_dir / "model", user_model_dir() / name, name, losses,
                             time.monotonic() - start, by_budget)

    @staticmethod
    def _publish(model_dir: Path, target: Path, name: str, losses: list[float], seconds: float,
                 by_budget: bool) -> TrainOutcome:
        """Copy the trained model into the user model folder (a temporary copy renamed into place)."""
        from medidiff.errors import OutputError

        if not (model_dir / "config.json").is_file():
            raise OutputError(f"{model_dir}: training ended without a model (no step finished)")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(model_dir, partial)
        partial.rename(target)
        return TrainOutcome(name, target, tuple(losses), seconds, by_budget)

    def _progress(self, event: Any) -> None:
        loss = (event.values or {}).get("loss")
        if loss is not None:
            self.loss_curve.add(float(loss))
        if event.preview is not None:
            image = np.ascontiguousarray(event.preview, dtype=np.uint8)
            h, w = image.shape
            qimage = QImage(image.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
            self.preview.setPixmap(QPixmap.fromImage(qimage).scaledToWidth(min(4 * w, 320)))

    def show_result(self, result: TrainOutcome) -> None:
        for widget in QApplication.allWidgets():  # every model list in the viewer learns the new model
            if isinstance(widget, ModelPicker):
                widget.reload()
        tail = result.losses[-20:]
        final = sum(tail) / len(tail) if tail else float("nan")
        why = "time budget reached" if result.stopped_by_budget else "step limit reached"
        self.result_label.setText(f"model {result.name!r}: {len(result.losses)} steps in {result.seconds:.0f} s "
                                  f"({why}), final loss {final:.3g}; it is now in every medidiff model list")
        self.name.setText("")
