"""npe2 sample data: a small real brain MRI and a microscopy image shipped with the plugin.

The volume is nibabel's ``anatomical.nii`` test image (MIT licence), recompressed; see
``data_cards/napari-sample-brain-mri.md`` for its provenance. The microscopy image is the
held-out right half of scikit-image's ``cell.png`` that the built-in ``micro2d`` model never saw
(``medidiff.builtin.sample_scans.microscopy_sample``; ``data_cards/skimage-sample-images.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .layers import scan_to_layer_data

__all__ = ["SAMPLE_DIR", "BRAIN_MRI", "make_brain_mri", "make_cell_microscopy"]

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
BRAIN_MRI = SAMPLE_DIR / "brain_mri.nii.gz"


def make_brain_mri() -> list[tuple[Any, dict[str, Any], str]]:
    """The sample brain MRI (T1, 2 mm, 33 x 41 x 25 voxels) as one image layer."""
    from medidiff.io import load_scan

    scan = load_scan(BRAIN_MRI, modality="MR")
    return [scan_to_layer_data(scan, "brain MRI (sample)", "image")]


def make_cell_microscopy() -> list[tuple[Any, dict[str, Any], str]]:
    """The held-out microscopy sample (a 660 x 275 cell image, pixel units) as one image layer."""
    from medidiff.builtin.sample_scans import microscopy_sample

    return [scan_to_layer_data(microscopy_sample(), "cell microscopy (sample)", "image")]
