"""Model lookup by name/path, import of model folders and MONAI bundles, the models CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from medidiff.errors import ModelError
from medidiff.core.model import DiffusionModel
from medidiff.model_store.registry import find_model, import_model, list_models, resolve_model


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    d = tmp_path / "models"
    monkeypatch.setenv("MEDIDIFF_MODELS", str(d))
    return d


def _small_model(seed=0) -> DiffusionModel:
    return DiffusionModel.create(2, 16, preset="tiny", seed=seed)


def _bundle(tmp_path, state, net_args=None):
    b = tmp_path / "bundle"
    (b / "configs").mkdir(parents=True)
    (b / "models").mkdir()
    args = {"_target_": "monai.networks.nets.DiffusionModelUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1,
            "channels": [16, 32, 32], "attention_levels": [False, False, False], "num_res_blocks": 1,
            "norm_num_groups": 8, "num_head_channels": 8}
    args.update(net_args or {})
    cfg = {"network_def": args,
           "noise_scheduler": {"_target_": "monai.networks.schedulers.DDPMScheduler", "num_train_timesteps": 1000,
                               "schedule": "linear_beta", "prediction_type": "v_prediction"}}
    (b / "configs" / "inference.json").write_text(json.dumps(cfg))
    torch.save(state, b / "models" / "model.pt")
    return b


def test_import_model_folder_and_resolve_by_name(tmp_path, user_dir):
    m = _small_model()
    m.save(tmp_path / "m")
    dest = import_model(tmp_path / "m", "brain")
    assert dest == user_dir / "brain"
    names = [e.name for e in list_models() if e.source == "user"]
    assert names == ["brain"]
    loaded = resolve_model("brain")
    for k, v in m.network.state_dict().items():
        assert torch.equal(v, loaded.network.state_dict()[k])
    assert find_model(tmp_path / "m") == tmp_path / "m"


def test_unknown_name_lists_known_models(tmp_path, user_dir):
    _small_model().save(user_dir / "known")
    with pytest.raises(ModelError, match="known"):
        find_model("nope")


def test_monai_bundle_converts_with_its_weights_and_schedule(tmp_path, user_dir):
    ref = DiffusionModel.create(2, 16, preset="tiny", seed=3)
    b = _bundle(tmp_path, ref.network.state_dict())
    dest = import_model(b, "fromBundle", image_size=(16, 16), low=0.0, high=100.0, modality="MR")
    m = DiffusionModel.load(dest)
    assert m.config.schedule["prediction"] == "v_prediction"
    assert m.normaliser.low == 0.0 and m.normaliser.high == 100.0
    x = torch.randn(1, 1, 16, 16)
    t = torch.tensor([10.0])
    with torch.no_grad():
        assert torch.allclose(m.network(x, t), ref.network(x, t))


def test_bundle_needs_size_and_range(tmp_path, user_dir):
    b = _bundle(tmp_path, _small_model().network.state_dict())
    with pytest.raises(ModelError, match="--image-size"):
        import_model(b, "x")


def test_bundle_with_pickled_objects_is_refused(tmp_path, user_dir):
    import datetime

    # any object beyond tensors and containers: the restricted loader must not build it
    b = _bundle(tmp_path, {"obj": datetime.datetime(2020, 1, 1)})
    with pytest.raises(ModelError, match="safe loader|state dict"):
        import_model(b, "evil", image_size=(16, 16), low=0, high=1)


def test_latent_bundle_is_refused_with_reason(tmp_path, user_dir):
    b = _bundle(tmp_path, {}, net_args={"in_channels": 3, "out_channels": 3})
    with pytest.raises(ModelError, match="channels"):
        import_model(b, "latent", image_size=(16, 16), low=0, high=1)


def test_models_cli_lists_and_shows(tmp_path, user_dir):
    _small_model().save(user_dir / "mine")
    env = {"MEDIDIFF_MODELS": str(user_dir)}
    import os

    env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-m", "medidiff", "models"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "mine" in out.stdout
    show = subprocess.run([sys.executable, "-m", "medidiff", "models", "show", "mine"], capture_output=True, text=True, env=env)
    assert show.returncode == 0 and "sha256 verified" in show.stdout
    bad = subprocess.run([sys.executable, "-m", "medidiff", "models", "show", "nope"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr
