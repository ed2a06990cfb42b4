"""Super-resolution models (issue 14 §2): config, conditioning, training input, upsampling real slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medidiff.core.config_check import ModelConfigError, check_config
from medidiff.core.data import block_mean
from medidiff.core.model import ConditioningError, DiffusionModel, ModelConfig
from medidiff.core.sampling import predict
from medidiff.errors import MedidiffError
from medidiff.io.scan import Scan
from medidiff.tasks.super_resolution import upsample
from medidiff.tasks.train import train

F = 4


@pytest.fixture(scope="module")
def sr_model(mr_train_scan):
    """A tiny x4 super-resolution model trained briefly on real MR slices (16 x 16 crops)."""
    res = train([mr_train_scan], None, dims=2, image_size=16, steps=200, batch_size=8, lr=2e-3, seed=0,
                super_resolution=F, prediction="v_prediction", device="cpu", checkpoint_every=0, checkpoint_minutes=0)
    return res.model


@pytest.fixture(scope="module")
def lowres_slices(mr_volume):
    """Two held-out slices (z = 18, 21), block-averaged x4: 24 x 32 images at 8 x 8 mm."""
    return [block_mean(Scan(mr_volume.array[z], mr_volume.spacing[1:], mr_volume.affine, "MR",
                            {"source_path": f"example4d z={z}"}), F) for z in (18, 21)]


def _net_units(model: DiffusionModel, scan: Scan, image: np.ndarray) -> np.ndarray:
    return model.normaliser.for_scan(scan.array).forward(image)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from medidiff.core.metrics import psnr

    return float(psnr(a, b))


def test_the_factor_is_stored_checked_and_reloaded(tmp_path):
    model = DiffusionModel.create(2, 16, lowres_factor=4)
    assert model.config.in_channels == 2  # the image and its upsampled low-resolution copy
    model.save(tmp_path / "m")
    again = DiffusionModel.load(tmp_path / "m")
    assert again.config.lowres_factor == 4 and again.config.in_channels == 2
    assert "super-resolution x4" in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    with pytest.raises(ModelConfigError, match="divisible by lowres_factor 3"):
        ModelConfig(spatial_dims=2, image_size=(16, 16), lowres_factor=3)
    with pytest.raises(ModelConfigError, match="lowres_factor"):
        check_config({**model.config.to_dict(), "lowres_factor": 17}, "config.json")
    # an older folder (no lowres_factor key) is an ordinary model
    raw = model.config.to_dict()
    del raw["lowres_factor"]
    assert ModelConfig.from_dict(raw).lowres_factor == 0


def test_conditioning_mismatches_are_refused():
    sr = DiffusionModel.create(2, 16, lowres_factor=4)
    plain = DiffusionModel.create(2, 16)
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ConditioningError, match="needs the low-resolution image"):
        predict(sr, x, 100.0)
    with pytest.raises(ConditioningError, match="not a super-resolution model"):
        predict(plain, x, 100.0, lowres=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ConditioningError, match="upsamples 1 image"):
        predict(sr, x, 100.0, lowres=torch.zeros(1, 1, 8, 8))


def test_training_feeds_the_network_the_block_mean_of_its_own_crop():
    model = DiffusionModel.create(2, 16, lowres_factor=4, seed=0)
    seen = []
    model.network.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x0 = torch.randn(2, 1, 16, 16)
    noise = model.draw_training_noise(tuple(x0.shape), torch.Generator().manual_seed(0))
    model.training_loss(x0, noise, condition_dropout=1.0)  # dropout never drops the low-resolution image
    cond = seen[0][:, 1:2]
    expected = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x0, 4), size=(16, 16), mode="bilinear",
                                               align_corners=False)
    assert torch.allclose(cond, expected, atol=1e-6)
    assert not torch.allclose(seen[0][:, :1], x0)  # channel 0 is the noised image


def test_bad_training_settings_are_refused(mr_train_scan):
    for kwargs, match in (({"super_resolution": 3, "image_size": 32}, "divisible by 3"),
                          ({"super_resolution": 1}, "factor in 2..16"),
                          ({"super_resolution": 2, "noisy": True}, "drop noisy=True")):
        with pytest.raises(MedidiffError, match=match):
            train([mr_train_scan], None, steps=1, device="cpu", **kwargs)


def test_upsampling_follows_the_low_resolution_image(sr_model, lowres_slices):
    low = lowres_slices[0]
    out = upsample(sr_model, [low], seed=3, steps=15)[0]
    assert out.shape == (96, 128)
    d = block_mean(out, F).array
    own = _psnr(_net_units(sr_model, low, low.array), _net_units(sr_model, low, d))
    flipped = _psnr(_net_units(sr_model, low, low.array[::-1]), _net_units(sr_model, low, d))
    other = lowres_slices[1]
    # the output's block mean is the image it was given, not another slice or the same one upside down
    assert own > flipped + 4.0, (own, flipped)
    assert own > _psnr(_net_units(sr_model, low, other.array), _net_units(sr_model, low, d)) + 1.0
    assert own > 20.0, own
    # and it adds detail: it is not a smooth interpolation of the low-resolution image
    from skimage.transform import resize

    smooth = resize(low.array, out.shape, order=1, mode="edge")
    assert np.abs(np.diff(out.array, axis=1)).mean() > 1.2 * np.abs(np.diff(smooth, axis=1)).mean()


def test_geometry_seed_and_units(sr_model, lowres_slices):
    low = lowres_slices[0]
    a, b = upsample(sr_model, [low, low], seed=5, steps=6)
    again = upsample(sr_model, [low], seed=5, steps=6)[0]
    assert np.array_equal(a.array, again.array)  # same seed, same bytes
    assert not np.array_equal(a.array, b.array)  # image 1 draws its own noise
    assert a.spacing == tuple(s / F for s in low.spacing)
    # the 4 x 4 output voxels of one input voxel are centred on it: the same field of view
    centre_out = a.affine @ np.array([1.5, 1.5, 0.0, 1.0])
    assert np.allclose(centre_out, low.affine @ np.array([0.0, 0.0, 0.0, 1.0]), atol=1e-9)
    for factor in (1e-3, 4.1):
        scaled = upsample(sr_model, [low.with_array(low.array * factor)], seed=5, steps=6)[0]
        assert np.allclose(scaled.array, a.array * factor, rtol=0, atol=1e-4 * factor * np.abs(a.array).max())


def test_upsample_refuses_what_it_cannot_do(sr_model):
    with pytest.raises(MedidiffError, match="not a super-resolution model"):
        upsample(DiffusionModel.create(2, 16), [np.ones((8, 8), np.float32)])
    with pytest.raises(MedidiffError, match="a 3D image; this super-resolution model is 2D"):
        upsample(sr_model, [np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)])
    bad = np.ones((8, 8), np.float32)
    bad[2, 2] = np.nan
    with pytest.raises(MedidiffError, match="NaN"):
        upsample(sr_model, [bad])


def test_other_tasks_refuse_a_super_resolution_model(tmp_path, sr_model, mr_heldout_slices):
    from medidiff.errors import ModelError
    from medidiff.tasks.denoise import denoise
    from medidiff.tasks.generate import generate

    sr_model.save(tmp_path / "sr")
    scan = Scan(mr_heldout_slices[0], (2.0, 2.0), np.diag([2.0, 2.0, 2.2, 1.0]), "MR")
    for call in (lambda: denoise(tmp_path / "sr", scan, device="cpu"), lambda: denoise(sr_model, scan, device="cpu"),
                 lambda: generate(tmp_path / "sr", 1, device="cpu")):
        with pytest.raises(ModelError, match="super-resolution model; it only upsamples"):
            call()
    # the folder itself upsamples
    out = upsample(tmp_path / "sr", [block_mean(scan, F)], seed=0, steps=2)[0]
    assert out.shape == scan.shape


def test_a_3d_model_upsamples_a_volume_on_the_same_field():
    model = DiffusionModel.create(3, 8, lowres_factor=2, seed=0)
    vol = Scan(np.random.default_rng(0).random((4, 4, 4)).astype(np.float32) + 1.0, (2.0, 2.0, 2.0),
               np.diag([2.0, 2.0, 2.0, 1.0]), "MR")
    out = upsample(model, [vol], seed=0, steps=2)[0]
    assert out.shape == (8, 8, 8) and out.spacing == (1.0, 1.0, 1.0)
    # voxel (0.5, 0.5, 0.5) of the output is voxel 0 of the input
    assert np.allclose(out.affine @ [0.5, 0.5, 0.5, 1.0], vol.affine @ [0, 0, 0, 1.0])
