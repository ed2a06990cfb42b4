"""Make the training files and held-out samples for the built-in models from data that ships
with installed packages (nibabel's example4d.nii.gz, scikit-image's cell.png, pydicom's CT files).

    python benchmarks/prepare_builtin_data.py OUT_DIR

writes OUT_DIR/mr_train.nii.gz (example4d volume 0, slices z < 16),
OUT_DIR/cell_train.png (left half of cell.png), OUT_DIR/ihc_train.tif (left half, x < 256, of
scikit-image's bright-field ``immunohistochemistry()`` image as gray, the mean of its three
channels: ``ihc_gray``; micro2d's second training image) and OUT_DIR/ct_train/ (pydicom's two 512 x 512 CT
slices of two patients, ``693_J2KI.dcm`` and ``J2K_pixelrep_mismatch.dcm``, copied as they are),
and refreshes the held-out samples that ship in medidiff/builtin/samples/ (example4d volume 0
slices z >= 18; right half of cell.png; ``CT_small.dcm``, a third patient, as ct_heldout.nii.gz).
The split is what makes the PSNR numbers in the model cards honest: no test pixel was trained on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import skimage.data
import skimage.io

SAMPLES = Path(__file__).resolve().parents[1] / "medidiff" / "builtin" / "samples"
IHC_HALF = 256  # ihc.png is 512 x 512: x < 256 trains micro2d, x >= 256 is held out (benchmarks/micro2d_retrain.py)
CT_TRAIN = ("693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")  # two patients, 512 x 512 each
CT_HELDOUT = "CT_small.dcm"  # a third patient, 128 x 128


def ihc_gray() -> np.ndarray:
    """scikit-image's bright-field IHC image (ihc.png, shipped) as gray: the mean of R, G, B, float32."""
    return skimage.data.immunohistochemistry().astype(np.float32).mean(axis=2)


def save_sample(scan, path: Path) -> None:
    """Write a sample or training file unless the file already holds the same pixels, geometry and modality.

    Rewriting an unchanged sample is not byte-stable (the NIfTI quaternion can come out as -q, the
    same rotation, and the OME-XML of a TIFF differs between writes), so an unchanged sample is left
    alone and ``git status`` stays clean after a rebuild.
    """
    from medidiff.io import load_scan, save_scan

    if path.exists():
        old = load_scan(path)
        if (old.array.shape == scan.array.shape and np.array_equal(old.array, scan.array)
                and np.allclose(old.spacing, scan.spacing) and np.allclose(old.affine, scan.affine, atol=1e-5)
                and old.modality == scan.modality):
            return
    save_scan(scan, path, overwrite=True)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    SAMPLES.mkdir(parents=True, exist_ok=True)
    src = Path(os.path.dirname(nib.__file__)) / "tests" / "data" / "example4d.nii.gz"
    img = nib.load(src)
    vol = np.asarray(img.dataobj)[..., 0]  # nibabel order (x, y, z)
    from medidiff.io import Scan

    for name, zs, folder in (("mr_train.nii.gz", slice(0, 16), out), ("mr_heldout.nii.gz", slice(18, 24), SAMPLES)):
        part = vol[:, :, zs].astype(np.int16)
        affine = img.affine.copy()
        affine[:3, 3] = (img.affine @ np.array([0, 0, zs.start, 1.0]))[:3]
        spacing = tuple(float(z) for z in reversed(img.header.get_zooms()[:3]))
        # medidiff's NIfTI writer records the modality (MR) so the built-in model is picked for it
        save_sample(Scan(part.T.astype(np.float32), spacing, affine, "MR"), folder / name)
    cell = skimage.data.cell()
    half = cell.shape[1] // 2
    skimage.io.imsave(out / "cell_train.png", cell[:, :half], check_contrast=False)
    from medidiff.io import affine_from_spacing

    # float TIFF: the channel mean is not an integer, and TIFF carries the modality
    ihc = np.ascontiguousarray(ihc_gray()[:, :IHC_HALF])
    save_sample(Scan(ihc, (1.0, 1.0), affine_from_spacing((1.0, 1.0)), "microscopy"), out / "ihc_train.tif")

    # microscopy sample as TIFF so it carries its modality (PNG cannot)
    right = cell[:, half:].astype(np.float32)
    save_sample(Scan(right, (1.0, 1.0), affine_from_spacing((1.0, 1.0)), "microscopy"), SAMPLES / "cell_heldout.tif")
    import shutil

    from pydicom.data import get_testdata_file

    from medidiff.io import load_scan

    (out / "ct_train").mkdir(exist_ok=True)
    for name in CT_TRAIN:
        shutil.copyfile(get_testdata_file(name), out / "ct_train" / name)
    ct = load_scan(get_testdata_file(CT_HELDOUT))  # HU, modality CT
    save_sample(ct, SAMPLES / "ct_heldout.nii.gz")
    print(f"wrote {out}/mr_train.nii.gz, {out}/cell_train.png, {out}/ihc_train.tif, {out}/ct_train/ and samples in {SAMPLES}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "builtin-data"))
