"""``medidiff demo --napari``: the sample scan loaded and the three widgets docked."""

from __future__ import annotations

import pytest


@pytest.mark.qt
def test_demo_viewer_has_sample_and_widgets(qtbot):
    from napari_medidiff.demo import WIDGETS, open_demo_viewer

    viewer = open_demo_viewer(run=False)
    try:
        assert len(viewer.layers) == 1
        layer = viewer.layers[0]
        assert tuple(layer.scale) == (2.0, 2.0, 2.0)
        docked = set(viewer.window.dock_widgets.keys())
        for name in WIDGETS:
            assert any(name in key for key in docked), (name, docked)
    finally:
        viewer.close()
