"""Training data from real MR scans: slicing, empty-slice test, crops, reproducible batches, masks."""

from __future__ import annotations

import numpy as np
import pytest

from medidiff.core.data import fit_to_size, prepare_training_data, scan_paths
from medidiff.errors import MedidiffError, ScanError
from medidiff.io import Scan, save_scan


def test_2d_slices_along_the_coarsest_axis(mr_volume):
    # (24, 96, 128) at (2.2, 2, 2) mm: z is coarsest
    td = prepare_training_data([mr_volume], image_size=32)
    assert td.slice_axis == 0
    assert len(td) == 24 and td.images[0].shape == (96, 128)
    assert td.spacing == (2.0, 2.0)
    np.testing.assert_allclose(td.images[5], td.normaliser.forward(mr_volume.array[5]))
    # the same scan with x made the coarsest axis is sliced along x
    arr = np.ascontiguousarray(mr_volume.array.transpose(1, 2, 0))  # (96, 128, 24)
    turned = Scan(arr, (2.0, 2.0, 2.2), mr_volume.affine, "MR", {})
    td2 = prepare_training_data([turned], image_size=32)
    assert td2.slice_axis == 2 and len(td2) == 24 and td2.images[0].shape == (96, 128)
    assert td2.spacing == (2.0, 2.0)


def test_explicit_slice_axis(mr_volume):
    td = prepare_training_data([mr_volume], image_size=32, slice_axis=1)
    assert td.slice_axis == 1 and td.images[0].shape == (24, 128)
    assert td.spacing == pytest.approx((2.2, 2.0))


def test_empty_slices_are_skipped(mr_volume):
    arr = mr_volume.array.copy()
    arr[[0, 1, 23]] = arr.min()  # three slices of pure background
    td = prepare_training_data([mr_volume.with_array(arr)], image_size=32)
    assert len(td) == 21
    kept = {round(float(img.mean()), 5) for img in td.images}
    for z in (0, 1, 23):
        assert round(float(td.normaliser.forward(arr[z]).mean()), 5) not in kept


def test_fit_to_size_pads_and_crops_with_one_window():
    rng = np.random.default_rng(0)
    img = np.arange(20 * 40, dtype=np.float32).reshape(20, 40)
    mask = (img % 7 == 0).astype(np.float32)
    a, m = fit_to_size([img, mask], (32, 32), rng, [-1.0, 0.0])
    assert a.shape == m.shape == (32, 32)
    # rows 0..5 and 26..31 are padding (20 -> 32: 6 above, 6 below); the rest is a crop of img
    assert (a[:6] == -1).all() and (a[26:] == -1).all() and (m[:6] == 0).all()
    first = int(a[6, 0])
    col = first % 40
    np.testing.assert_array_equal(a[6:26], img[:, col : col + 32])
    np.testing.assert_array_equal(m[6:26], mask[:, col : col + 32])
    # without rng: centred
    c, = fit_to_size([img], (16, 16), None, [0.0])
    np.testing.assert_array_equal(c, img[2:18, 12:28])


def test_batches_are_a_function_of_seed_and_step(mr_train_scan):
    td = prepare_training_data([mr_train_scan], image_size=32)
    a = td.batch(seed=1, step=7, batch_size=4)
    b = td.batch(seed=1, step=7, batch_size=4)
    c = td.batch(seed=1, step=8, batch_size=4)
    d = td.batch(seed=2, step=7, batch_size=4)
    np.testing.assert_array_equal(a["images"], b["images"])
    assert a["images"].shape == (4, 1, 32, 32) and a["images"].dtype == np.float32
    assert not np.array_equal(a["images"], c["images"])
    assert not np.array_equal(a["images"], d["images"])


def test_3d_patches(mr_volume):
    td = prepare_training_data([mr_volume], spatial_dims=3, image_size=(16, 32, 32))
    batch = td.batch(0, 0, 2)
    assert batch["images"].shape == (2, 1, 16, 32, 32)
    assert td.spacing == pytest.approx(mr_volume.spacing)
    with pytest.raises(ScanError, match="3D training needs volumes"):
        prepare_training_data([Scan(mr_volume.array[0], (2.0, 2.0), np.eye(4), "MR", {})], spatial_dims=3, image_size=16)


def test_masks_follow_their_images_through_crop_and_augmentation(mr_train_scan):
    """A mask made by thresholding the image still matches the thresholded image after every transform."""
    td0 = prepare_training_data([mr_train_scan], image_size=32, augment=False)
    level = float(np.percentile(np.concatenate([i.ravel() for i in td0.images]), 75))  # inside the brain
    raw_level = float(td0.normaliser.inverse(np.float32(level)))
    mask = mr_train_scan.with_array((mr_train_scan.array > raw_level).astype(np.float32))
    td = prepare_training_data([mr_train_scan], image_size=32, masks=[mask], augment=True)
    agree, shuffled = [], []
    for step in range(6):
        batch = td.batch(seed=0, step=step, batch_size=8)
        for img, m in zip(batch["images"][:, 0], batch["masks"][:, 0]):
            assert set(np.unique(m)) <= {0.0, 1.0}  # labels stay labels (nearest neighbour)
            # intensity jitter is at most 5% scale and 0.05 shift: compare with a level in between
            agree.append(((img > level) == (m > 0)).mean())
        imgs, ms = batch["images"][:, 0], batch["masks"][::-1, 0]
        shuffled += [((i > level) == (m > 0)).mean() for i, m in zip(imgs, ms)]
    assert np.mean(agree) > 0.93 and min(agree) > 0.8
    assert np.mean(shuffled) < np.mean(agree) - 0.2  # a mask from another crop would not agree


def test_one_label_and_one_mask_per_scan(mr_train_scan, mr_volume):
    with pytest.raises(MedidiffError, match="2 labels for 1 scans"):
        prepare_training_data([mr_train_scan], labels=[0, 1])
    with pytest.raises(MedidiffError, match="mask shape"):
        prepare_training_data([mr_train_scan], masks=[mr_volume])
    td = prepare_training_data([mr_train_scan, mr_train_scan], labels=[0, 1], image_size=32)
    batch = td.batch(0, 0, 8)
    assert batch["labels"].dtype == np.int64 and set(batch["labels"]) <= {0, 1}


def test_scan_paths_lists_folders_in_name_order(tmp_path, mr_train_scan):
    for name in ("b.nii.gz", "a.nii.gz"):
        save_scan(mr_train_scan, tmp_path / "scans" / name)
    (tmp_path / "scans" / "notes.txt").write_text("not a scan")
    single = tmp_path / "c.nii.gz"
    save_scan(mr_train_scan, single)
    paths = scan_paths([tmp_path / "scans", single])
    assert [p.name for p in paths] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    with pytest.raises(ScanError, match="no such file"):
        scan_paths([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError, match="folder holds no scans"):
        scan_paths([tmp_path / "empty"])


def test_given_modality_ct_picks_the_ct_window(mr_train_scan):
    """A NIfTI does not say it is CT; --modality CT must still give the CT window normaliser."""
    from medidiff.io import Scan

    ct_like = Scan(mr_train_scan.array - 1000.0, mr_train_scan.spacing, mr_train_scan.affine, "OT")
    td = prepare_training_data([ct_like], image_size=32, modality="CT")
    assert td.modality == "CT" and td.normaliser.kind == "ct-window"


def test_contrast_augmentation_compresses_half_the_images_and_keeps_the_rest(mr_train_scan):
    """``contrast=0.1``: the same crops as without it, about half of them squeezed towards a level,
    by factors within [0.1, 1], never outside the image's own range."""
    from medidiff.core.data import augment

    plain = prepare_training_data([mr_train_scan], image_size=32)
    squeezed = prepare_training_data([mr_train_scan], image_size=32, contrast=0.1)
    factors = []
    for step in range(8):
        a = plain.batch(seed=3, step=step, batch_size=8)["images"][:, 0]
        b = squeezed.batch(seed=3, step=step, batch_size=8)["images"][:, 0]
        for x, y in zip(a, b):
            assert y.min() >= min(x.min(), -1.0) - 1e-5 and y.max() <= max(x.max(), 1.0) + 1e-5
            # y = level + f (x - level): f is the ratio of the centred spreads
            f = float(np.std(y) / max(np.std(x), 1e-8))
            if np.array_equal(x, y):
                factors.append(1.0)
            else:
                assert 0.1 - 1e-3 <= f < 1.0
                np.testing.assert_allclose(y - y.mean(), f * (x - x.mean()), atol=1e-4)
                factors.append(f)
    squeezed_share = np.mean([f < 1.0 for f in factors])
    assert 0.3 < squeezed_share < 0.7
    assert min(factors) < 0.3  # the range is used, not only its top end
    # off by default: augment() without contrast is the old transform, draw for draw
    img = plain.images[0][:32, :32]
    one = augment(img, None, np.random.default_rng(5))[0]
    np.testing.assert_array_equal(one, augment(img, None, np.random.default_rng(5), contrast=1.0)[0])


def _air_padded(scan: Scan, pad: int = 64) -> Scan:
    """The scan inside a wide border of air (its own minimum), like a CT body inside the field of view."""
    arr = np.pad(scan.array, ((0, 0), (pad, pad), (pad, pad)), mode="constant", constant_values=float(scan.array.min()))
    return Scan(arr, scan.spacing, scan.affine, scan.modality, {})


def test_foreground_crops_are_centred_on_the_body_and_seeded(mr_train_scan):
    """``crop_foreground=1``: (almost) no crop is air; 0.5 halves the air crops; 0 keeps the old batches."""
    padded = _air_padded(mr_train_scan)

    def near_empty_share(td) -> float:
        shares = [(td.batch(seed=0, step=s, batch_size=16)["images"][:, 0] > -0.8).mean(axis=(1, 2)) for s in range(12)]
        return float((np.concatenate(shares) < 0.1).mean())

    uniform = prepare_training_data([padded], image_size=32, augment=False)
    half = prepare_training_data([padded], image_size=32, augment=False, crop_foreground=0.5)
    body = prepare_training_data([padded], image_size=32, augment=False, crop_foreground=1.0)
    u, h, b = near_empty_share(uniform), near_empty_share(half), near_empty_share(body)
    assert u > 0.4 and b < 0.05 and b + 0.15 < h < u - 0.15
    # a pure function of (seed, step), and another seed gives other crops
    np.testing.assert_array_equal(body.batch(4, 9, 8)["images"], body.batch(4, 9, 8)["images"])
    assert not np.array_equal(body.batch(4, 9, 8)["images"], body.batch(5, 9, 8)["images"])
    # the option draws from its own stream: at 0 the batches are exactly the uniform ones
    off = prepare_training_data([padded], image_size=32, crop_foreground=0.0)
    np.testing.assert_array_equal(off.batch(1, 3, 8)["images"],
                                  prepare_training_data([padded], image_size=32).batch(1, 3, 8)["images"])


def test_foreground_start_is_inside_the_image_and_gives_up_on_pure_air():
    from medidiff.core.data import foreground_start

    rng = np.random.default_rng(0)
    img = np.full((100, 80), -1.0, dtype=np.float32)
    img[90:, 70:] = 1.0  # foreground only in a corner: the window is clipped to the image, not centred
    for _ in range(20):
        start = foreground_start(img, (32, 32), rng)
        assert start is not None and 0 <= start[0] <= 68 and 0 <= start[1] <= 48
        assert (img[start[0]:start[0] + 32, start[1]:start[1] + 32] > -0.8).any()
    assert foreground_start(np.full((100, 80), -1.0, np.float32), (32, 32), rng) is None  # falls back to uniform
    assert foreground_start(img, (128, 32), rng) is None  # smaller than the crop: padding, not a choice


def test_spacing_augment_draws_coarser_voxels_of_the_same_anatomy(mr_train_scan):
    """``spacing_augment=F``: half the crops show the scan at 1..F times its voxel size (shrunk, never
    enlarged), the others are exactly the plain crops; seeded; 1 keeps the old batches."""
    plain = prepare_training_data([mr_train_scan], image_size=32, augment=False)
    coarse = prepare_training_data([mr_train_scan], image_size=32, augment=False, spacing_augment=3.0)
    a = np.concatenate([plain.batch(0, s, 16)["images"][:, 0] for s in range(8)])
    b = np.concatenate([coarse.batch(0, s, 16)["images"][:, 0] for s in range(8)])
    same = np.array([np.array_equal(x, y) for x, y in zip(a, b)])
    assert 0.3 < same.mean() < 0.7  # about half the crops are drawn at another voxel size
    # a grating of period 16 voxels: at s times the voxel size its period is 16 / s, s in [1, 3]
    x = np.arange(400, dtype=np.float32)
    grating = np.broadcast_to(100 + 50 * np.sin(2 * np.pi * x / 16), (400, 400)).copy()
    g = Scan(grating, (1.0, 1.0), np.eye(4), "MR", {})
    for spacing_augment, low, high in ((1.0, 2, 2), (3.0, 2, 6)):
        td = prepare_training_data([g], image_size=32, augment=False, spacing_augment=spacing_augment)
        crops = np.concatenate([td.batch(0, s, 16)["images"][:, 0] for s in range(8)])
        cycles = np.abs(np.fft.rfft(crops - crops.mean(axis=2, keepdims=True), axis=2)).mean(axis=1).argmax(axis=1)
        assert cycles.min() == low and cycles.max() == high  # cycles per 32-voxel crop: 32 / period
        if spacing_augment > 1:
            assert 0.3 < (cycles > 2).mean() < 0.7
    np.testing.assert_array_equal(coarse.batch(4, 9, 8)["images"], coarse.batch(4, 9, 8)["images"])
    off = prepare_training_data([mr_train_scan], image_size=32, spacing_augment=1.0)
    np.testing.assert_array_equal(off.batch(1, 3, 8)["images"],
                                  prepare_training_data([mr_train_scan], image_size=32).batch(1, 3, 8)["images"])


def test_coarser_region_stays_within_the_factor_and_the_image():
    from medidiff.core.data import coarser_region

    sizes = [coarser_region((400, 400), (32, 32), 2.0, np.random.default_rng(k)) for k in range(200)]
    sides = np.array([s[0] for s in sizes])
    assert all(s[0] == s[1] for s in sizes)  # one factor for every axis: the anatomy keeps its shape
    assert sides.min() == 32 and sides.max() <= 64 and 0.3 < (sides > 32).mean() < 0.7
    # an image with no room for a larger region keeps the plain crop; a little room caps the factor
    assert {coarser_region((32, 300), (32, 32), 4.0, np.random.default_rng(k)) for k in range(50)} == {(32, 32)}
    assert max(coarser_region((40, 300), (32, 32), 4.0, np.random.default_rng(k))[0] for k in range(50)) == 40
    assert coarser_region((400, 400), (32, 32), 1.0, np.random.default_rng(0)) == (32, 32)
