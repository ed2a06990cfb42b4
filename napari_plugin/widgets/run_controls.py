"""Run / Cancel buttons, the progress bar and the one-line status of a task widget."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

__all__ = ["RunControls"]


class RunControls(QWidget):
    """A Run / Cancel button pair, a progress bar and a one-line status."""

    def __init__(self, run_text: str = "Run", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.run_button = QPushButton(run_text, self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self._step_text = ""
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)

    def set_running(self, running: bool, message: str = "") -> None:
        """Enable Cancel while running, Run otherwise; show ``message``."""
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress_bar.setRange(0, 0)  # busy until the first Progress says how many steps
            self._step_text = ""
        elif self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1)
        self.status.setText(message)

    def show_progress(self, event: Any) -> None:
        """Move the bar to a ``medidiff.core.progress.Progress`` event."""
        total = max(int(event.total), 1)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(min(int(event.step), total))
        text = event.message or ""
        if event.values:
            text += "  " + "  ".join(f"{k} {v:.4g}" for k, v in event.values.items())
        self._step_text = text.strip()
        self.status.setText(self._step_text)

    def show_network_calls(self, calls: int) -> None:
        """Show that the network is working inside a step (``calls`` network calls so far this run)."""
        if self.cancel_button.isEnabled():
            prefix = f"{self._step_text}  " if self._step_text else ""
            self.status.setText(f"{prefix}(network call {calls})")
