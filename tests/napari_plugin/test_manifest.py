"""The npe2 manifest is valid and importing the plugin stays light (no torch, no Qt)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import npe2
import pytest


def test_manifest_is_valid_and_complete():
    manifest = npe2.PluginManifest.from_distribution("medidiff")
    contrib = manifest.contributions
    assert [r.command for r in contrib.readers] == ["medidiff.get_reader"]
    assert contrib.readers[0].accepts_directories
    patterns = set(contrib.readers[0].filename_patterns)
    assert {"*.nii", "*.nii.gz", "*.dcm", "*.ome.tif", "*.ome.tiff"} <= patterns
    assert not {"*.tif", "*.tiff"} & patterns  # plain TIFFs go to napari's reader without a dialog
    writers = {(w.command, tuple(w.layer_types)) for w in contrib.writers}
    for fmt in ("nifti", "dicom", "tiff"):
        assert (f"medidiff.write_{fmt}_image", ("image",)) in writers
        assert (f"medidiff.write_{fmt}_labels", ("labels",)) in writers
    assert [s.key for s in contrib.sample_data] == ["brain_mri", "cell_microscopy"]
    props = contrib.configurations["medidiff"].properties
    assert props["model_folder"].default == "" and props["device"].default == "auto"
    assert props["parameters"].default == "{}"
    for command in contrib.commands:  # every python_name resolves
        module, attr = command.python_name.split(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr)), command.python_name


@pytest.mark.skipif(shutil.which("npe2") is None, reason="npe2 command line not installed")
def test_npe2_validate_passes():
    result = subprocess.run(["npe2", "validate", "medidiff"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_is_light():
    code = (
        "import sys\n"
        "import napari_medidiff.reader, napari_medidiff.writer, napari_medidiff.sample_data, napari_medidiff.layers\n"
        "heavy = [m for m in ('torch', 'monai', 'PyQt6', 'PyQt5', 'PySide6', 'qtpy') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"plugin import pulled in {result.stdout.strip()} {result.stderr[-500:]}"


def test_napari_offers_files_to_the_reader_by_name_as_intended():
    """npe2 picks candidate readers by file name only: check which names reach medidiff."""
    pm = npe2.PluginManager.instance()
    pm.discover()

    def offered(name: str) -> bool:
        return "medidiff" in {r.plugin_name for r in pm.iter_compatible_readers([name])}

    for name in ("brain.nii.gz", "ct.dcm", "cells.ome.tif", "IM000001", "1.2.840.113619.2.55.3.604688"):
        assert offered(name), name
    for name in ("photo.tif", "stack.tiff", "photo.png", "movie.mp4", "table.csv", "data.h5"):
        assert not offered(name), name
