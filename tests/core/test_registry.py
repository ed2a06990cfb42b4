"""Model lookup by name/path, import of model folders and MONAI bundles, the models CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    with pytest.raises(ModelError, match="safe loader|state dict") as info:
        import_model(b, "evil", image_size=(16, 16), low=0, high=1)
    assert len(str(info.value).splitlines()) == 1 and "weights_only=False" not in str(info.value)


@pytest.mark.parametrize("text", ["{ not json", "[1, 2, 3]", '{"network_def": {"_target_": "DiffusionModelUNet", "channels": 7}}'])
def test_bundle_configs_that_do_not_parse_or_fit_are_one_line(tmp_path, user_dir, text):
    b = _bundle(tmp_path, _small_model().network.state_dict())
    (b / "configs" / "inference.json").write_text(text)
    with pytest.raises(ModelError) as info:
        import_model(b, "bad", image_size=(16, 16), low=0, high=1)
    assert "inference.json" in str(info.value) and len(str(info.value).splitlines()) == 1


def test_a_converted_bundle_records_no_local_path(tmp_path, user_dir):
    b = _bundle(tmp_path, _small_model().network.state_dict())
    dest = import_model(b, "fromBundle", image_size=(16, 16), low=0.0, high=1.0)
    assert str(tmp_path) not in (dest / "config.json").read_text()


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


def _cli(*args, env=None, cwd=None):
    import os

    return subprocess.run([sys.executable, "-m", "medidiff", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


@pytest.mark.parametrize("name", ["../x", "../../escaped", "a/b", "..", ".", ".hidden", "~x", "a\\b", ""])
def test_import_name_is_a_name_not_a_path(tmp_path, user_dir, name):
    _small_model().save(tmp_path / "m")
    with pytest.raises(ModelError, match="plain name"):
        import_model(tmp_path / "m", name)
    assert not user_dir.exists() or not any(user_dir.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # nothing written beside the user folder


def test_import_with_an_absolute_name_and_overwrite_leaves_other_folders_alone(tmp_path, user_dir):
    _small_model().save(tmp_path / "m")
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    for name in (str(victim), "../precious"):
        code = _cli("models", "import", tmp_path / "m", "--name", name, "--overwrite", env={"MEDIDIFF_MODELS": str(user_dir)})
        assert code.returncode == 2, code.stderr
        assert len(code.stderr.strip().splitlines()) == 1 and "plain name" in code.stderr and "Traceback" not in code.stderr
        assert (victim / "thesis.txt").read_text() == "years of work"
        assert sorted(p.name for p in victim.iterdir()) == ["thesis.txt"]


def test_import_refuses_a_built_in_name(tmp_path, user_dir):
    _small_model().save(tmp_path / "m")
    with pytest.raises(ModelError, match="built-in"):
        import_model(tmp_path / "m", "mr2d")


def test_one_broken_user_model_does_not_break_the_others(tmp_path, user_dir):
    _small_model().save(user_dir / "good")
    bad = _small_model().save(user_dir / "broken")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["network"]["channels"] = [100000, 32, 32]
    (bad / "config.json").write_text(json.dumps(cfg))
    (user_dir / "notjson").mkdir()
    (user_dir / "notjson" / "config.json").write_text("[1, 2")
    names = [e.name for e in list_models(warn=False)]
    assert "good" in names and "mr2d" in names and "broken" not in names and "notjson" not in names
    env = {"MEDIDIFF_MODELS": str(user_dir)}
    listing = _cli("models", env=env)
    assert listing.returncode == 0 and "good" in listing.stdout and "mr2d" in listing.stdout
    warns = [ln for ln in listing.stderr.splitlines() if ln.strip()]
    assert len(warns) == 2 and all(ln.startswith("warning: skipped a broken model") for ln in warns), listing.stderr
    assert "Traceback" not in listing.stderr
    resolve_model("mr2d")  # what `denoise mr2d` does
    show = _cli("models", "show", "mr2d", env=env)
    assert show.returncode == 0 and "sha256 verified" in show.stdout
    broken = _cli("models", "show", bad, env=env)  # named by its path: refused, not reported as fine
    assert broken.returncode == 2 and "network.channels" in broken.stderr and "verified" not in broken.stdout


def test_a_folder_named_like_a_built_in_does_not_shadow_it(tmp_path, user_dir, monkeypatch):
    from medidiff.model_store.registry import BUILTIN_DIR

    _small_model().save(tmp_path / "mr2d")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="write ./mr2d"):
        assert find_model("mr2d") == BUILTIN_DIR / "mr2d"
    assert find_model("./mr2d") == Path("./mr2d")
    assert find_model(tmp_path / "mr2d") == tmp_path / "mr2d"


def test_a_loaded_model_is_used_as_it_is_and_never_moved(user_dir):
    m = _small_model()
    assert resolve_model(m, device="cpu") is m
    assert m.device.type == "cpu"
