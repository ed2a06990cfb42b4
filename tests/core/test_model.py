"""``DiffusionModel``: presets, save/load round trip, and clear errors for every kind of bad checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medidiff.errors import MedidiffError, ModelError
from medidiff.core.intensity import Normaliser
from medidiff.core.model import FORMAT_VERSION, ConditioningError, DiffusionModel, _sha256


def _state_equal(a: DiffusionModel, b: DiffusionModel) -> bool:
    sa, sb = a.network.state_dict(), b.network.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("preset, millions", [("tiny", 0.27), ("small", 1.8), ("base", 26.6)])
def test_preset_parameter_counts_match_the_comment_in_model_py(preset, millions):
    model = DiffusionModel.create(2, 64, preset=preset)
    assert model.num_parameters() / 1e6 == pytest.approx(millions, rel=0.02)


def test_create_is_seeded():
    a = DiffusionModel.create(2, 32, seed=1)
    b = DiffusionModel.create(2, 32, seed=1)
    c = DiffusionModel.create(2, 32, seed=2)
    assert _state_equal(a, b)
    assert not _state_equal(a, c)


def test_save_load_round_trips_bit_for_bit(tmp_path):
    model = DiffusionModel.create(
        2, (32, 48), preset="tiny", schedule="ddpm", prediction="v_prediction", num_classes=3,
        class_names=["a", "b", "c"], mask_classes=2, normaliser=Normaliser(10.0, 700.0), spacing=(2.0, 2.5),
        modality="MR", slice_axis=0, seed=5,
    )
    model.config.anomaly = {"threshold": 0.25}
    folder = model.save(tmp_path / "m")
    loaded = DiffusionModel.load(folder)
    assert _state_equal(model, loaded)
    assert loaded.config.to_dict() == model.config.to_dict()
    assert loaded.normaliser == model.normaliser
    assert loaded.path == folder
    assert (folder / "MODEL_CARD.md").read_text().startswith("# medidiff model")


def test_save_refuses_an_existing_folder_unless_overwrite(tmp_path):
    model = DiffusionModel.create(2, 32)
    model.save(tmp_path / "m")
    with pytest.raises(MedidiffError):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)
    DiffusionModel.load(tmp_path / "m")


# -- bad checkpoints ------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path) -> Path:
    return DiffusionModel.create(2, 32, seed=0).save(tmp_path / "model")


def _rewrite_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _load_error(folder: Path) -> str:
    with pytest.raises(ModelError) as info:
        DiffusionModel.load(folder)
    return str(info.value)


def test_not_a_folder(saved):
    msg = _load_error(saved / "weights.safetensors")
    assert "weights.safetensors" in msg and "not a folder" in msg


def test_folder_without_config(saved):
    (saved / "config.json").unlink()
    msg = _load_error(saved)
    assert str(saved) in msg and "no config.json" in msg


def test_config_that_is_not_json(saved):
    (saved / "config.json").write_text("{ not json")
    assert "not valid JSON" in _load_error(saved)


def test_corrupted_weights_fail_the_hash(saved):
    w = saved / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF  # one flipped bit pattern in a tensor
    w.write_bytes(bytes(data))
    msg = _load_error(saved)
    assert "weights.safetensors" in msg and "sha256" in msg


def test_truncated_weights_with_a_matching_hash(saved):
    w = saved / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    _rewrite_config(saved, weights_sha256=_sha256(w))
    msg = _load_error(saved)
    assert "weights.safetensors" in msg and "cannot read weights" in msg


def test_future_format_version(saved):
    _rewrite_config(saved, format_version=FORMAT_VERSION + 1)
    msg = _load_error(saved)
    assert "config.json" in msg and "upgrade medidiff" in msg


def test_not_a_medidiff_config(saved):
    _rewrite_config(saved, format="something-else")
    assert "not a medidiff model config" in _load_error(saved)


def test_weights_of_a_different_network(saved, tmp_path):
    other = DiffusionModel.create(2, 32, preset="small").save(tmp_path / "other")
    shutil.copy(other / "weights.safetensors", saved / "weights.safetensors")
    _rewrite_config(saved, weights_sha256=_sha256(saved / "weights.safetensors"))
    msg = _load_error(saved)
    assert "weights do not fit the network" in msg


def test_config_with_an_impossible_network(saved):
    _rewrite_config(saved, image_size=[30, 30])  # not divisible by 4 for the tiny preset
    assert "must be divisible by 4" in _load_error(saved)


def _net(**changes):
    net = {"channels": [16, 32, 32], "attention_levels": [False, False, False], "num_res_blocks": 1,
           "norm_num_groups": 8, "num_head_channels": 8}
    net.update(changes)
    return net


@pytest.mark.parametrize("changes, field", [
    ({"network": _net(channels=[100000, 32, 32])}, "network.channels"),
    ({"network": _net(channels=[-16, 32, 32])}, "network.channels"),
    ({"network": _net(norm_num_groups=0)}, "norm_num_groups"),
    ({"network": _net(norm_num_groups=5)}, "divisible by norm_num_groups"),
    ({"network": _net(attention_levels=[False])}, "attention_levels"),
    ({"schedule": {"kind": "ddpm", "prediction": "epsilon", "num_train_timesteps": 0}}, "num_train_timesteps"),
    ({"schedule": {"kind": "ddpm", "prediction": "epsilon", "num_train_timesteps": -5}}, "num_train_timesteps"),
    ({"num_classes": -1}, "num_classes"),
    ({"mask_classes": -3}, "mask_classes"),
    ({"image_size": [0, 32]}, "image_size"),
    ({"image_size": [-32, 32]}, "image_size"),
    ({"image_size": [262144, 262144]}, "image_size"),
    ({"image_size": "32"}, "image_size"),
    ({"slice_axis": 7}, "slice_axis"),
    ({"spacing": [-1.0, 2.0]}, "spacing"),
    ({"spacing": [1.0]}, "spacing"),
    ({"spatial_dims": 4}, "spatial_dims"),
    ({"normaliser": {"low": 5.0, "high": 1.0, "kind": "given"}}, "normaliser"),
])
def test_nonsense_config_values_are_refused_in_one_line(saved, changes, field):
    _rewrite_config(saved, **changes)
    msg = _load_error(saved)
    assert field in msg and "config.json" in msg and len(msg.splitlines()) == 1


def test_a_string_format_version_is_damage_not_a_newer_version(saved):
    _rewrite_config(saved, format_version="1")
    msg = _load_error(saved)
    assert "format_version" in msg and "newer" not in msg and "upgrade" not in msg


# -- conditioning checks ----------------------------------------------------------------------------
def test_conditions_a_model_was_not_trained_with_are_refused():
    model = DiffusionModel.create(2, 32)
    with pytest.raises(ConditioningError, match="not trained with class labels"):
        model.check_class_labels(torch.tensor([0]), 1)
    with pytest.raises(ConditioningError, match="not trained with mask"):
        model.condition_channels(torch.zeros(1, 1, 32, 32), 1, (32, 32), torch.device("cpu"))
    cond = DiffusionModel.create(2, 32, num_classes=2)
    with pytest.raises(ConditioningError, match="class labels must be in 0..1"):
        cond.check_class_labels(torch.tensor([3]), 1)
    # a ValueError too, for callers written against the older behaviour
    assert issubclass(ConditioningError, ValueError) and issubclass(ConditioningError, MedidiffError)


def test_a_folder_written_by_the_earlier_code_still_loads_with_the_same_record():
    # the built-in mr2d was written before the shared FolderConfig: it loads, and to_dict gives
    # back exactly what its config.json holds (so a re-save writes the same record)
    folder = Path(__file__).resolve().parents[2] / "medidiff" / "builtin" / "mr2d"
    raw = json.loads((folder / "config.json").read_text())
    model = DiffusionModel.load(folder)
    assert model.config.network["attention_levels"] == (False, False, False)
    record = {k: v for k, v in raw.items() if k not in ("format", "format_version", "weights_sha256")}
    assert model.config.to_dict() == record
