"""``Autoencoder`` folders: round trip, folders written before the shared config code, one-line errors.

The autoencoder and the diffusion model share their config and folder code
(``config_check.FolderConfig``, ``open_folder``; ``model.write_folder``); these tests pin that an
autoencoder folder keeps its exact record and that both configs refuse the same bad geometry alike.
Tiny networks only (the ``tiny`` preset, 16x16 fields: ~29 k parameters, no training).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medidiff.core.autoencoder import Autoencoder, AutoencoderConfig
from medidiff.core.config_check import FolderConfig, ModelConfigError
from medidiff.core.intensity import Normaliser
from medidiff.core.model import ModelConfig
from medidiff.errors import ModelError
from medidiff.io.hashing import sha256_path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def saved(tmp_path) -> Path:
    ae = Autoencoder.create(2, (16, 24), normaliser=Normaliser(3.0, 900.0), spacing=(2.0, 2.5), modality="MR",
                            slice_axis=0, seed=3)
    return ae.save(tmp_path / "ae")


def _load_error(folder: Path) -> str:
    with pytest.raises(ModelError) as info:
        Autoencoder.load(folder)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    return msg


def _rewrite(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_save_load_round_trips_weights_and_record(saved):
    ae = Autoencoder.create(2, (16, 24), normaliser=Normaliser(3.0, 900.0), spacing=(2.0, 2.5), modality="MR",
                            slice_axis=0, seed=3)
    loaded = Autoencoder.load(saved)
    assert _same_weights(ae.network, loaded.network)
    assert loaded.config.to_dict() == ae.config.to_dict()
    assert loaded.config.network["channels"] == (8, 16, 16)  # JSON lists back to tuples
    assert loaded.factor == 4 and loaded.config.latent_size == (4, 6)
    assert loaded.normaliser == ae.normaliser and loaded.path == saved
    raw = json.loads((saved / "config.json").read_text())
    assert raw["format"] == "medidiff-autoencoder" and raw["weights_sha256"] == sha256_path(saved / "weights.safetensors")


def test_a_folder_written_by_the_earlier_code_still_loads(tmp_path):
    # config.json exactly as medidiff wrote it before the shared FolderConfig (keys, order, lists),
    # plus a key a later version might add: it is ignored
    net = Autoencoder.create(2, 32, seed=1).network
    folder = tmp_path / "old-ae"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "weights.safetensors"),
              metadata={"format": "medidiff-autoencoder"})
    record = {
        "format": "medidiff-autoencoder", "format_version": 1, "spatial_dims": 2, "image_size": [32, 32],
        "preset": "tiny", "network": {"channels": [8, 16, 16], "num_res_blocks": 1, "norm_num_groups": 4},
        "latent_channels": 1, "normaliser": {"low": -1.0, "high": 1.0, "kind": "identity", "detail": ""},
        "spacing": [], "orientation": "", "modality": "OT", "slice_axis": None, "training": {"steps": 150},
        "medidiff_version": "0.1.0", "a_future_key": {"ignored": True},
        "weights_sha256": sha256_path(folder / "weights.safetensors"),
    }
    (folder / "config.json").write_text(json.dumps(record, indent=2))
    ae = Autoencoder.load(folder)
    assert _same_weights(ae.network, net)
    assert ae.config.training == {"steps": 150} and ae.config.medidiff_version == "0.1.0"
    x = torch.zeros(1, 1, 32, 32)
    assert ae.decode(ae.encode(x)).shape == x.shape


@pytest.mark.parametrize("changes, words", [
    ({"latent_channels": 0}, "latent_channels"),
    ({"latent_channels": True}, "latent_channels"),
    ({"image_size": [30, 32]}, "divisible by 4"),
    ({"image_size": [16]}, "image_size"),
    ({"spatial_dims": 4}, "spatial_dims"),
    ({"network": {}, "preset": "huge"}, "unknown preset 'huge'"),
    ({"network": {"channels": [8, 16, 15], "num_res_blocks": 1, "norm_num_groups": 4}}, "norm_num_groups"),
    ({"network": {"channels": "8,16", "num_res_blocks": 1, "norm_num_groups": 4}}, "network.channels"),
    ({"network": [1, 2]}, "network must be a JSON object"),
    ({"spatial_dims": None}, "spatial_dims"),
])
def test_nonsense_records_are_one_line_naming_the_file(saved, changes, words):
    _rewrite(saved, **changes)
    msg = _load_error(saved)
    assert words in msg and "config.json" in msg


def test_folder_problems_are_one_line(saved, tmp_path):
    assert "latent train-autoencoder" in _load_error(tmp_path / "nowhere")
    _rewrite(saved, format_version=2)
    assert "upgrade medidiff" in _load_error(saved)
    _rewrite(saved, format_version=1, format="medidiff-model")
    assert "not a medidiff autoencoder config" in _load_error(saved)
    _rewrite(saved, format="medidiff-autoencoder")
    w = saved / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    assert "sha256" in _load_error(saved)
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    _rewrite(saved, weights_sha256=sha256_path(w))
    assert "cannot read weights" in _load_error(saved)
    (saved / "config.json").unlink()
    assert "no config.json" in _load_error(saved)


def test_model_and_autoencoder_configs_share_one_set_of_rules():
    assert issubclass(ModelConfig, FolderConfig) and issubclass(AutoencoderConfig, FolderConfig)
    for cls, what in ((ModelConfig, "model"), (AutoencoderConfig, "autoencoder")):
        with pytest.raises(ModelConfigError, match=rf"^{what} config: image_size \[30, 32\] must be divisible by 4"):
            cls(spatial_dims=2, image_size=(30, 32))
        with pytest.raises(ModelConfigError, match=rf"^{what} config: spatial_dims must be 2 or 3"):
            cls(spatial_dims=1, image_size=(32,))
        with pytest.raises(ModelConfigError, match=rf"^{what} config: unknown preset 'huge'"):
            cls(spatial_dims=2, image_size=(32, 32), preset="huge")
        config = cls(spatial_dims=2, image_size=[32, 32], spacing=[1, 2])
        assert config.image_size == (32, 32) and config.spacing == (1.0, 2.0) and config.size_multiple == 4
        again = cls.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config
