"""Batch mode of the task widgets: *Run on* this layer, every image layer, or a folder of scans.

``BatchControl`` is the row of controls (the choice, and for a folder its input and output
folders). ``batch_job`` is the job the widget runs in its worker for the batch modes: one
task run per item, in order, with one model. Each item's inner progress is passed on with the
item count (the bar counts items: step ``i`` of ``n`` while item ``i + 1`` runs), and when an
item is done the job yields a :class:`BatchProgress` carrying it: for layers the result (the
widget adds its layers then, on the main thread, so a cancelled batch keeps what was done),
for a folder the files it wrote. A folder's results are written under the scans' own file
names in the output folder with ``medidiff.io.save_scan``, which never writes onto, or into,
an input (``check_output_path``); every output name is checked before the first run, so a
batch never stops half-way on a name clash. Cancel stops the batch within one network call.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QVBoxLayout, QWidget

from medidiff.core.progress import Progress, relay

from .wording import RUN_ON, RUN_ON_TIPS

__all__ = ["BatchControl", "BatchItem", "BatchProgress", "BatchOutcome", "batch_job", "folder_items"]


@dataclass(frozen=True)
class BatchProgress(Progress):
    """An item of a batch is done: ``layer`` (its input layer) and ``result``, or the ``saved`` files."""

    layer: Any = None
    result: Any = None
    saved: tuple[Path, ...] = ()


@dataclass(frozen=True)
class BatchOutcome:
    """What a batch run did: items done (names) out of ``total``, and the output folder (folder mode)."""

    names: tuple[str, ...]
    total: int
    out_dir: Path | None = None
    saved: tuple[Path, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch: a layer (its scan read on the main thread) or a scan file (read in the worker)."""

    name: str
    layer: Any = None
    scan: Any = None
    path: Path | None = None


def folder_items(in_dir: str, out_dir: str, outputs: Callable[[Path, str], Sequence[Path]]) -> list[BatchItem]:
    """The scans of folder ``in_dir``, after checking that every output (``outputs(out_dir, name)``) may be written.

    Raises ``OutputError``/``ScanError`` (one line) for a missing or empty input folder, an
    output folder that is, or lies inside, the input folder, or an output that exists already.
    """
    from medidiff.core.data import scan_paths
    from medidiff.errors import OutputError, ScanError
    from medidiff.io.atomic import check_output_path

    if not in_dir.strip():
        raise ScanError(None, "Run on a folder: no input folder chosen; choose the folder of scans to process")
    if not out_dir.strip():
        raise OutputError("Run on a folder: no output folder chosen; choose where the results are saved "
                          "(not the input folder)")
    src, dst = Path(in_dir).expanduser(), Path(out_dir).expanduser()
    if not src.is_dir():
        raise ScanError(src, "is not a folder; choose a folder of scans")
    check_output_path(dst, overwrite=True, inputs=[src])  # not the input folder, nor inside it
    paths = scan_paths([src])
    if not paths:
        raise ScanError(src, "holds no scans (NIfTI, DICOM, TIFF, PNG)")
    for path in paths:
        for out in outputs(dst, path.name):
            check_output_path(out, overwrite=False, inputs=[src, path])
    return [BatchItem(path.name, path=path) for path in paths]


def batch_job(model: Any, steps: Callable[..., Generator[Any, None, Any]], items: Sequence[BatchItem],
              prepare: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]], device: str,
              save: Callable[[Any, Path, str, Any], tuple[Path, ...]] | None = None,
              out_dir: Path | None = None) -> Generator[Progress, None, BatchOutcome]:
    """Run ``steps(model, *args, **options)`` on every item (``prepare(scan) -> (args, options)``), one after another.

    In the worker thread. With ``save`` (folder mode), ``save(result, out_dir, name, scan)`` writes
    an item's outputs and returns their paths; otherwise each result rides on its ``BatchProgress``.
    """
    from medidiff.io import load_scan

    n = len(items)
    names: list[str] = []
    saved: list[Path] = []
    for i, item in enumerate(items):
        yield Progress(step=i, total=n, message=f"{item.name} ({i + 1} of {n})")
        scan = item.scan if item.scan is not None else load_scan(item.path)
        args, options = prepare(scan)
        options = {**options, "device": options.get("device", device)}
        result = yield from relay(steps(model, *args, **options), step=i, total=n,
                                  message=f"{item.name} ({i + 1} of {n})", advance=False)
        names.append(item.name)
        if save is not None and out_dir is not None:
            written = tuple(save(result, out_dir, item.name, scan))
            saved.extend(written)
            yield BatchProgress(step=i + 1, total=n, message=f"{item.name} saved", saved=written)
        else:
            yield BatchProgress(step=i + 1, total=n, message=f"{item.name} done", layer=item.layer, result=result)
    return BatchOutcome(tuple(names), n, out_dir, tuple(saved))


def _browse_row(parent: QWidget, tip: str) -> tuple[QWidget, QLineEdit]:
    row = QWidget(parent)
    edit = QLineEdit(row)
    edit.setToolTip(tip)
    button = QPushButton("…", row)
    button.setToolTip(tip)
    button.setMaximumWidth(32)
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit)
    layout.addWidget(button)

    def browse() -> None:
        folder = QFileDialog.getExistingDirectory(parent, tip, edit.text())
        if folder:
            edit.setText(folder)

    button.clicked.connect(browse)
    return row, edit


class BatchControl(QWidget):
    """*Run on*: this layer / every image layer / a folder (with input and output folder fields)."""

    changed = Signal(str)  # the mode

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox(self)
        for key, label in RUN_ON.items():
            self.combo.addItem(label, key)
            self.combo.setItemData(self.combo.count() - 1, RUN_ON_TIPS[key], Qt.ItemDataRole.ToolTipRole)
        self.combo.setToolTip(RUN_ON_TIPS["control"])
        self._in_row, self.input_folder = _browse_row(self, RUN_ON_TIPS["input"])
        self._out_row, self.output_folder = _browse_row(self, RUN_ON_TIPS["output"])
        self.input_folder.setPlaceholderText("folder of scans")
        self.output_folder.setPlaceholderText("output folder")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self._in_row)
        layout.addWidget(self._out_row)
        self.combo.currentIndexChanged.connect(self._mode_changed)
        self._mode_changed()

    def mode(self) -> str:
        """``"layer"``, ``"layers"`` or ``"folder"``."""
        return str(self.combo.currentData())

    def set_mode(self, mode: str) -> None:
        """Choose ``"layer"``, ``"layers"`` or ``"folder"``."""
        self.combo.setCurrentIndex(self.combo.findData(mode))

    def _mode_changed(self, *_: Any) -> None:
        folder = self.mode() == "folder"
        self._in_row.setVisible(folder)
        self._out_row.setVisible(folder)
        self.changed.emit(self.mode())
