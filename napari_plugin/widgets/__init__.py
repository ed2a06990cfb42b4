"""The medidiff task widgets (denoise, generate, anomaly, train) for napari.

Each widget is a thin ``QWidget``: it turns layers into ``Scan``s, runs the task's generator
(``medidiff.tasks.*_steps``) in a napari thread worker (``worker.TaskRunner``), and turns the
result back into layers (``napari_medidiff.layers``). No diffusion logic lives here, and torch
and the task modules are imported only when a run starts, so opening the plugin stays fast.

Import the widget modules directly (``napari_medidiff.widgets.denoise``); this package does not
import them eagerly.
"""
