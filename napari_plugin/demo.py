"""``medidiff demo --napari``: a viewer with the sample scan and the task widgets docked."""

from __future__ import annotations

WIDGETS = ("Denoise", "Generate synthetic images", "Detect anomalies", "Train a model", "Fit to this scan")


def open_demo_viewer(run: bool = True):
    """Open napari with the sample brain MRI loaded and medidiff's widgets docked (tabbed).

    ``run=False`` returns the viewer without entering the event loop (for tests).
    """
    import napari

    viewer = napari.Viewer(title="medidiff demo")
    from napari_medidiff.layers import use_radiological_view

    viewer.open_sample("medidiff", "brain_mri")
    use_radiological_view(viewer)
    for name in WIDGETS:
        viewer.window.add_plugin_dock_widget("medidiff", name, tabify=True)
    if run:
        napari.run()
    return viewer
