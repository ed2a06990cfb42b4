"""Scans on disk for the napari plugin tests, all written with ``medidiff.io``.

The oblique volume has no axis aligned with RAS and an off-centre origin, so any slip in
the Scan <-> napari geometry (axis order, transpose, scale vs affine) moves voxels.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel
import numpy as np
import pytest

NIBABEL_DATA = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data"


def rotation(degrees_xyz) -> np.ndarray:
    a, b, c = np.deg2rad(degrees_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def ras_of(affine: np.ndarray, index_zyx) -> np.ndarray:
    """RAS mm of array index ``(z, y, x)`` (or ``(y, x)``) under a Scan affine, in napari world order."""
    idx = list(index_zyx)[::-1] + [0] * (3 - len(index_zyx))
    ras = (np.asarray(affine) @ np.array([*idx, 1.0]))[:3]
    return ras[::-1][: len(index_zyx)] if len(index_zyx) == 3 else ras[:2][::-1]


@pytest.fixture(scope="session")
def ras_world():
    """``ras_world(affine, index)``: the napari world position a voxel must have (RAS reversed)."""
    return ras_of


@pytest.fixture(scope="session", name="rotation")
def rotation_fixture():
    """``rotation((ax, ay, az))``: a 3x3 rotation matrix from angles in degrees."""
    return rotation


@pytest.fixture(scope="session")
def oblique_scan():
    """A (6, 20, 17) float volume, spacing (2.5, 0.9, 0.7), rotated about all three axes."""
    from medidiff.io import Scan

    affine = np.eye(4)
    affine[:3, :3] = rotation([20.0, -35.0, 50.0]) @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-12.345678, 98.7654321, -45.6789]
    rng = np.random.default_rng(0)
    array = rng.normal(100.0, 30.0, size=(6, 20, 17)).astype(np.float32)
    return Scan(array=array, spacing=(2.5, 0.9, 0.7), affine=affine, modality="MR", meta={"unit": "mm"})


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("napari_plugin_data")


@pytest.fixture(scope="session")
def oblique_nifti(data_dir, oblique_scan) -> Path:
    from medidiff.io import save_scan

    return save_scan(oblique_scan, data_dir / "oblique.nii.gz")


@pytest.fixture(scope="session")
def ct_series(data_dir, oblique_scan) -> Path:
    """A DICOM CT series folder (one file per slice) with the oblique geometry."""
    from medidiff.io import save_scan

    ct = oblique_scan.with_array(oblique_scan.array * 10 - 1000, modality="CT")
    return save_scan(ct, data_dir / "ct_series", format="dicom")


@pytest.fixture(scope="session")
def two_series_folder(data_dir, oblique_scan) -> Path:
    """A study folder holding two DICOM series (an MR and a CT) in sub-folders."""
    from medidiff.io import Scan, affine_from_spacing, save_scan

    study = data_dir / "study"
    save_scan(oblique_scan, study / "mr", format="dicom")
    arr = np.arange(4 * 8 * 9, dtype=np.float32).reshape(4, 8, 9)
    ct = Scan(arr, (3.0, 1.5, 1.25), affine_from_spacing((3.0, 1.5, 1.25), origin=(10.0, -20.0, 30.0)), modality="CT")
    save_scan(ct, study / "ct", format="dicom")
    return study


@pytest.fixture(scope="session")
def bad_nifti(data_dir) -> Path:
    """A .nii.gz file of random bytes."""
    path = data_dir / "broken_scan.nii.gz"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return path


@pytest.fixture(scope="session")
def example4d() -> Path:
    """nibabel's real 4D EPI (two volumes of 128 x 96 x 24)."""
    return NIBABEL_DATA / "example4d.nii.gz"


@pytest.fixture(scope="session")
def anatomical_affine() -> np.ndarray:
    """The affine of nibabel's anatomical.nii, the source of the plugin's sample MRI."""
    return nibabel.load(NIBABEL_DATA / "anatomical.nii").affine


@pytest.fixture()
def notifications():
    """The napari notifications dispatched during the test (a list that fills as they come)."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)

    class _View:
        def __iter__(self):
            return iter(notification_manager.records[start:])

        def messages(self) -> list[str]:
            return [str(n.message) for n in notification_manager.records[start:]]

    return _View()


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """Plugin settings and user models in this test's tmp folder, never the real config."""
    from napari import settings

    settings._clear_plugin_settings_cache()
    monkeypatch.setattr(settings, "_CFG_PATH", str(tmp_path / "napari" / "settings.yaml"))
    monkeypatch.setenv("MEDIDIFF_MODELS", str(tmp_path / "user-models"))
    yield
    settings._clear_plugin_settings_cache()


@pytest.fixture()
def mr_slices(mr_volume) -> "Scan":
    """Three held-out slices of the real EPI volume (oblique affine), as a small volume."""
    from medidiff.io import Scan

    return Scan(mr_volume.array[18:21].copy(), mr_volume.spacing, mr_volume.affine, "MR",
                {"source_path": "nibabel:example4d.nii.gz"})
