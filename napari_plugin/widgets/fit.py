"""The *Fit to this scan* widget: learn the noise of one noisy layer from that layer alone, then denoise it.

The napari face of ``medidiff denoise MODEL|none IN OUT --fit``: runs
``medidiff.tasks.fit.fit_and_denoise_steps`` in a worker on the chosen image layer. No clean
data is needed: a small network is trained on the noisy scan itself (from scratch, or
fine-tuning the chosen model) for the time budget, and the consistent-Tweedie estimator of
``medidiff.tasks.fit`` then gives the denoised image, added as ``"<layer> denoised (fitted)"``
with the input layer's geometry. The training loss is drawn as it goes (the Train widget's
``LossCurve``). Cancel stops within one training step (or one estimator draw) and adds
nothing. The task's SURE self-check (the estimated gain of the result, no clean data;
``medidiff.tasks.denoise_selfcheck``) is added to the result line and the layer metadata, and its
"unlikely to help" warning reaches the viewer as a notification. With a name under *Keep as*,
the fitted model is saved in the user model folder under that name (``model_store.registry.user_model_dir``), so it appears, by name, in every medidiff
model list: a prior for scans like this one.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox, QWidget

from medidiff.choices import NoiseChoice
from medidiff.io.scan import Scan

from .base import TaskWidget
from .pickers import LayerPicker, ModelPicker
from .results import add_scan_layer
from .train import LossCurve
from .wording import FIT_TIPS, MODALITIES, NOISE_NAMES, NOISE_TIPS, number

__all__ = ["FitWidget", "FitOutcome"]

_SCRATCH = "nothing (a new small model)"
_MODEL = "the model above"


@dataclass(frozen=True)
class FitOutcome:
    """A Fit run's result (``medidiff.tasks.fit.FitResult``) and where the fitted model was kept (or None)."""

    result: Any
    saved: Path | None


class FitWidget(TaskWidget):
    """Fit a diffusion model to the chosen noisy image layer itself, then denoise that layer."""

    title = "Fit to this scan"
    run_text = "Fit and denoise"
    task = "medidiff.tasks.fit:fit_and_denoise_steps"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.layer_picker = LayerPicker(napari_viewer, "image", parent=self)
        self.layer_picker.setToolTip("The noisy image to learn from and to denoise (a 2D image, or a volume "
                                     "slice by slice)")
        self.start = QComboBox(self)
        for text, tip in ((_SCRATCH, "Train a new small network on this scan alone: no model needed"),
                          (_MODEL, "Fine-tune the model chosen above on this scan (often faster to a good result)")):
            self.start.addItem(text)
            self.start.setItemData(self.start.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.start.setToolTip(FIT_TIPS["start"])
        self.modality = QComboBox(self)
        for label, code, tip in MODALITIES:
            self.modality.addItem(label, code)
            self.modality.setItemData(self.modality.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.modality.setToolTip("What the scan is, for files that do not say: decides the noise model under auto")
        self.noise = QComboBox(self)
        for name in NoiseChoice.values():
            self.noise.addItem(name)
            self.noise.setItemData(self.noise.count() - 1, NOISE_TIPS[name], Qt.ItemDataRole.ToolTipRole)
        self.noise.setToolTip("What kind of noise the scan has; auto picks it from the modality")
        self.minutes = QDoubleSpinBox(self)
        self.minutes.setRange(0.01, 24 * 60)
        self.minutes.setDecimals(2)
        self.minutes.setValue(2.0)
        self.minutes.setSuffix(" min")
        self.minutes.setToolTip(FIT_TIPS["minutes"])
        self.max_steps = QSpinBox(self)
        self.max_steps.setRange(1, 1_000_000)
        self.max_steps.setValue(100_000)
        self.max_steps.setToolTip(FIT_TIPS["max_steps"])
        self.draws = QSpinBox(self)
        self.draws.setRange(1, 64)
        self.draws.setValue(8)
        self.draws.setToolTip(FIT_TIPS["draws"])
        self.seed = QSpinBox(self)
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip(FIT_TIPS["seed"])
        self.keep_as = QLineEdit(self)
        self.keep_as.setPlaceholderText("(do not keep the model)")
        self.keep_as.setToolTip(FIT_TIPS["save"])
        self.loss_curve = LossCurve(self)
        self.loss_curve.setToolTip("The training loss so far (log scale): it falls as the model learns the scan")
        self.form.insertRow(0, "Start from", self.start)
        self.form.addRow("Image", self.layer_picker)
        self.form.addRow("Modality", self.modality)
        self.form.addRow("Noise model", self.noise)
        self.form.addRow("Time budget", self.minutes)
        self.form.addRow("Step limit", self.max_steps)
        self.form.addRow("Draws", self.draws)
        self.form.addRow("Seed", self.seed)
        self.form.addRow("Keep as", self.keep_as)
        self.form.addRow("Loss", self.loss_curve)
        self.start.currentTextChanged.connect(lambda text: self.model_picker.setEnabled(text == _MODEL))
        self.model_picker.setEnabled(False)
        self.runner.progress.connect(self._progress)
        self.remember_controls(start=self.start, modality=self.modality, noise=self.noise, minutes=self.minutes,
                               max_steps=self.max_steps, draws=self.draws, seed=self.seed)
        self.model_picker.setEnabled(self.start.currentText() == _MODEL)

    def options(self) -> dict[str, Any]:
        """The ``fit_and_denoise_steps`` keyword arguments the controls describe (no device)."""
        return {"noise": self.noise.currentText(), "minutes": float(self.minutes.value()),
                "max_steps": int(self.max_steps.value()), "draws": int(self.draws.value()),
                "seed": int(self.seed.value())}

    def prepare_scan(self) -> Callable[[Scan, Callable[[str], None]], tuple[tuple[Any, ...], dict[str, Any]]]:
        from medidiff.errors import MedidiffError
        from medidiff.model_store.registry import check_name, user_model_dir

        chosen = self.modality.currentData()
        name = self.keep_as.text().strip()
        if name:
            name = check_name(name)
            if (user_model_dir() / name).exists():
                raise MedidiffError(f"{self.title}: a model called {name!r} exists already "
                                    f"({user_model_dir() / name}); choose another name under Keep as")
        options = {**self.options(), "keep_as": name, "fine_tune": self.start.currentText() == _MODEL}
        self.loss_curve.clear()  # a new run, a new curve

        def prepare(scan: Scan, warn: Callable[[str], None]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if chosen:
                scan = scan.with_array(scan.array, modality=str(chosen))
            return (scan,), dict(options)

        return prepare

    def _job(self, spec: str, args: tuple[Any, ...], options: dict[str, Any],
             axis: int | None = None) -> Generator[Any, None, Any]:
        # runs in the worker thread; the fitted network is the task's own copy, so Cancel acts
        # at its next step (one training step or one estimator draw), not through a network hook
        from medidiff.tasks.fit import fit_and_denoise_steps

        options = dict(options)
        keep_as = options.pop("keep_as")
        start = self.load_model(spec, options["device"]) if options.pop("fine_tune") else None
        self.job_model = start
        result = yield from fit_and_denoise_steps(start, *args, **options)
        saved = self._keep(result, keep_as, spec if start is not None else "") if keep_as else None
        return FitOutcome(result, saved)

    @staticmethod
    def _keep(result: Any, name: str, start: str) -> Path:
        """Save the fitted model as the user model ``name`` (written aside, then renamed into place)."""
        import shutil

        from medidiff.core.model import default_model_card
        from medidiff.model_store.registry import user_model_dir

        target = user_model_dir() / name
        partial = target.with_name(f".{name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        where = f" (fine-tuned from {start})" if start else ""
        card = default_model_card(result.model) + (
            f"\nFitted in the napari *Fit to this scan* widget to one noisy scan{where}, with no clean data: "
            "a prior for scans like it, not a general-purpose model.\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        result.model.save(partial, overwrite=True, model_card=card)
        partial.rename(target)
        return target

    def _progress(self, event: Any) -> None:
        loss = (event.values or {}).get("loss")
        if loss is not None:
            self.loss_curve.add(float(loss))

    def show_result_for(self, like: Any, outcome: FitOutcome) -> None:
        result = outcome.result
        style: dict[str, Any] = {}
        for key in ("colormap", "contrast_limits", "gamma"):
            try:
                style[key] = getattr(like, key)
            except Exception:  # a layer removed meanwhile: use napari's defaults
                pass
        if "colormap" in style:
            style["colormap"] = style["colormap"].name
        how = "time budget reached" if result.stopped_by_clock else "step limit reached"
        check = getattr(result, "self_check", None)  # the SURE gain estimate; its warning is a notification
        info = {"medidiff_fit": {"noise_model": result.noise_model, "reason": result.reason,
                                 "sigma": float(result.sigma), "steps": int(result.steps),
                                 "seconds": float(result.seconds), "options": dict(self._options),
                                 "model": str(outcome.saved) if outcome.saved else "",
                                 "self_check": None if check is None else check.to_dict()}}
        add_scan_layer(self.viewer, result.scan, f"{like.name} denoised (fitted)", "image", like=like,
                       metadata=info, **style)
        name = NOISE_NAMES.get(result.noise_model, result.noise_model)
        how_sigma = "given" if self._options.get("sigma") is not None else "estimated"
        if result.noise_model == NoiseChoice.POISSON_GAUSSIAN.value:  # sigma is of the stabilised image
            noise = f"{name} noise ({how_sigma})"
        else:
            noise = f"noise level {number(result.sigma)} ({name}, {how_sigma})"
        text = f"fitted in {result.steps} steps, {result.seconds:.0f} s ({how}); {noise}"
        if check is not None:
            text += f"; {check.line()}"
        if outcome.saved is not None:
            for widget in QApplication.allWidgets():  # every model list in the viewer learns the new model
                if isinstance(widget, ModelPicker):
                    widget.reload()
            text += f"; kept as {outcome.saved.name}, now in every medidiff model list"
            self.keep_as.setText("")
        self.result_label.setText(text)
        self.result_label.setToolTip(f"How it was decided: {result.reason}")
