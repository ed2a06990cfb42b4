"""Helpers for the widget tests in a real viewer: add a scan layer, dock a widget, run it."""

from __future__ import annotations

import numpy as np

from medidiff.io import Scan

RUN_TIMEOUT_MS = 300_000  # generous: the CPU is shared; tests are not timed


def add_scan(viewer, scan: Scan, name: str):
    from napari_medidiff.layers import scan_to_layer_data

    data, kwargs, _ = scan_to_layer_data(scan, name, "image")
    kwargs["metadata"]["study"] = "test-study"  # any extra metadata must ride along to the results
    return viewer.add_image(data, **kwargs)


def dock(viewer, widget_cls):
    widget = widget_cls(viewer)
    viewer.window.add_dock_widget(widget, name=widget.title)
    return widget


def run_widget(qtbot, widget, timeout=RUN_TIMEOUT_MS):
    with qtbot.waitSignal(widget.runner.finished, timeout=timeout):
        widget.controls.run_button.click()
    return widget.runner.outcome


def same_geometry(out, ref) -> None:
    np.testing.assert_allclose(out.scale, ref.scale)
    np.testing.assert_allclose(out.translate, ref.translate)
    np.testing.assert_allclose(out.affine.affine_matrix, ref.affine.affine_matrix)


def errors_since(start: int) -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(n.message) for n in notification_manager.records[start:]
            if n.severity == NotificationSeverity.ERROR]


def n_records() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def cancel_after(widget, signal, n: int) -> list:
    """Record what ``signal`` (a runner signal) emits and click Cancel on its ``n``-th emission; returns the record."""
    seen: list = []

    def on_event(event):
        seen.append(event)
        if len(seen) == n:
            widget.controls.cancel_button.click()

    signal.connect(on_event)
    return seen
