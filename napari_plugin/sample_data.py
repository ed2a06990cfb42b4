"""npe2 sample data: a small real brain MRI shipped with the plugin.

The volume is nibabel's ``anatomical.nii`` test image (MIT licence), recompressed; see
``data_cards/napari-sample-brain-mri.md`` for its provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .layers import scan_to_layer_data

__all__ = ["SAMPLE_DIR", "BRAIN_MRI", "make_brain_mri"]

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
BRAIN_MRI = SAMPLE_DIR / "brain_mri.nii.gz"


def make_brain_mri() -> list[tuple[Any, dict[str, Any], str]]:
    """The sample brain MRI (T1, 2 mm, 33 x 41 x 25 voxels) as one image layer."""
    from medidiff.io import load_scan

    scan = load_scan(BRAIN_MRI, modality="MR")
    return [scan_to_layer_data(scan, "brain MRI (sample)", "image")]
