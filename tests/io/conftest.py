"""Real test data shipped with nibabel, pydicom and scikit-image, plus small builders."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel
import numpy as np
import pytest
from pydicom.data import get_testdata_file

NIBABEL_DATA = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data"


def dicom_test_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not available offline")
    return Path(path)


def nibabel_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) of a scan reoriented to the closest RAS axes, to compare world contents."""
    img = nibabel.as_closest_canonical(nibabel.Nifti1Image(np.asarray(array.T), affine))
    return np.asarray(img.dataobj).T, img.affine


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders that an atomic write may have left behind."""
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name or p.name.startswith("."))


@pytest.fixture(scope="session")
def dicom_file():
    """``dicom_file("CT_small.dcm")``: the path of a pydicom test file (skip if unavailable)."""
    return dicom_test_file


@pytest.fixture(scope="session")
def canonical():
    return nibabel_canonical


@pytest.fixture(scope="session")
def temp_leftovers():
    return leftovers


@pytest.fixture(scope="session")
def anatomical_path() -> Path:
    return NIBABEL_DATA / "anatomical.nii"


@pytest.fixture(scope="session")
def example4d_path() -> Path:
    return NIBABEL_DATA / "example4d.nii.gz"


@pytest.fixture(scope="session")
def anatomical(anatomical_path):
    from medidiff.io import load_scan

    return load_scan(anatomical_path)


@pytest.fixture(scope="session")
def oblique_scan():
    """A float volume with an oblique, anisotropic, off-centre affine (no axis aligned)."""
    from medidiff.io import Scan

    a, b, c = np.deg2rad([20.0, -35.0, 50.0])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-12.345678, 98.7654321, -45.6789]
    rng = np.random.default_rng(0)
    array = rng.normal(100.0, 30.0, size=(6, 20, 17)).astype(np.float32)
    return Scan(array=array, spacing=(2.5, 0.9, 0.7), affine=affine, modality="MR")


@pytest.fixture
def anatomical_series(tmp_path, anatomical) -> Path:
    """anatomical.nii written out as a DICOM series folder (one file per slice)."""
    from medidiff.io import save_scan

    return save_scan(anatomical, tmp_path / "anat_series", format="dicom")
