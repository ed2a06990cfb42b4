"""The real sample scans that ship with medidiff (held out from the built-in models' training)."""

from __future__ import annotations

from medidiff.io import Scan, load_scan
from medidiff.model_store.registry import BUILTIN_DIR

SAMPLES = BUILTIN_DIR / "samples"


def mr_sample() -> Scan:
    """Six held-out EPI brain slices (nibabel's example4d.nii.gz, volume 0, z 18-23), modality MR."""
    return load_scan(SAMPLES / "mr_heldout.nii.gz")


def microscopy_sample() -> Scan:
    """The held-out right half of scikit-image's cell.png, modality microscopy."""
    return load_scan(SAMPLES / "cell_heldout.tif")


def ct_sample() -> Scan:
    """A held-out CT slice in HU (pydicom's CT_small.dcm, a third patient), modality CT."""
    return load_scan(SAMPLES / "ct_heldout.nii.gz")
