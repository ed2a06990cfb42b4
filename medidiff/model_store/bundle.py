"""Convert a MONAI bundle holding a ``DiffusionModelUNet`` into a medidiff model folder.

A bundle keeps its network in ``configs/inference.json`` (or ``.yaml``) under
``network_def`` and its weights in ``models/model.pt`` (or ``model.safetensors``). Weights
are read with ``torch.load(weights_only=True)``, PyTorch's restricted loader, so no
arbitrary code from the bundle runs. Only image-space models with one input and one output
channel convert; latent-diffusion bundles (with an autoencoder) are refused with a reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medidiff.errors import ModelError
from medidiff.core.intensity import Normaliser

_UNET = "DiffusionModelUNet"
_KEYS = ("channels", "attention_levels", "num_res_blocks", "norm_num_groups", "num_head_channels")


def _read_config(bundle: Path) -> tuple[Path, dict]:
    for name in ("inference.json", "train.json", "inference.yaml", "train.yaml"):
        path = bundle / "configs" / name
        if path.is_file():
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelError(f"{path}: cannot read the bundle config ({_first_line(exc)})") from None
            if path.suffix == ".json":
                try:
                    cfg = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ModelError(f"{path}: not valid JSON ({_first_line(exc)})") from None
            else:
                try:
                    import yaml
                except ImportError:
                    raise ModelError(f"{path}: reading YAML bundle configs needs PyYAML (pip install pyyaml)") from None
                try:
                    cfg = yaml.safe_load(text)
                except yaml.YAMLError as exc:
                    raise ModelError(f"{path}: not valid YAML ({_first_line(exc)})") from None
            if not isinstance(cfg, dict):
                raise ModelError(f"{path}: a bundle config must be a mapping of names to values, got {type(cfg).__name__}")
            return path, cfg
    raise ModelError(f"{bundle}: not a MONAI bundle (no configs/inference.json or train.json)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _find_network_def(cfg: dict) -> dict | None:
    for key in ("network_def", "diffusion_def", "diffusion"):
        d = cfg.get(key)
        if isinstance(d, dict) and str(d.get("_target_", "")).endswith(_UNET):
            return d
    for value in cfg.values():
        if isinstance(value, dict) and str(value.get("_target_", "")).endswith(_UNET):
            return value
    return None


def _resolve(value, cfg: dict):
    # MONAI bundle references like "@image_channels" point at top-level keys
    if isinstance(value, str) and value.startswith("@") and value[1:] in cfg:
        return cfg[value[1:]]
    if isinstance(value, list):
        return [_resolve(v, cfg) for v in value]
    return value


def convert_bundle(bundle: str | Path, image_size: tuple[int, ...], normaliser: Normaliser,
                   modality: str = "OT", spacing: tuple[float, ...] = ()):
    """A ``DiffusionModel`` built from a MONAI bundle folder (not saved)."""
    bundle = Path(bundle)
    cpath, cfg = _read_config(bundle)
    net_def = _find_network_def(cfg)
    if net_def is None:
        raise ModelError(f"{cpath}: no {_UNET} network definition found; only image-space diffusion bundles convert")
    args = {k: _resolve(v, cfg) for k, v in net_def.items() if k != "_target_"}
    try:
        return _convert(bundle, cpath, cfg, args, image_size, normaliser, modality, spacing)
    except ModelError:
        raise
    except (TypeError, ValueError, KeyError) as exc:  # a field of the wrong type or size
        raise ModelError(f"{cpath}: the network definition does not describe a usable network ({_first_line(exc)})") from None


def _convert(bundle: Path, cpath: Path, cfg: dict, args: dict, image_size, normaliser, modality, spacing):
    from medidiff.core.config_check import built_from_record
    from medidiff.core.model import DiffusionModel, ModelConfig
    from medidiff.core.schedule import ScheduleConfig

    if args.get("with_conditioning") or args.get("cross_attention_dim"):
        raise ModelError(f"{cpath}: cross-attention conditioning is not supported by medidiff")
    if int(args.get("in_channels", 1)) != 1 or int(args.get("out_channels", 1)) != 1:
        raise ModelError(f"{cpath}: the network has {args.get('in_channels')} input / {args.get('out_channels')} output "
                         "channels; medidiff converts single-channel image diffusion models (latent models need their autoencoder)")
    dims = int(args.get("spatial_dims", 2))
    network = {k: _to_tuple(args[k]) for k in _KEYS if k in args}
    defaults = {"channels": (32, 64, 64, 64), "attention_levels": (False, False, True, True), "num_res_blocks": (2, 2, 2, 2),
                "norm_num_groups": 32, "num_head_channels": 8}
    network = {k: network.get(k, defaults[k]) for k in _KEYS}
    sched = {}
    for key in ("noise_scheduler", "scheduler"):
        d = cfg.get(key)
        if isinstance(d, dict):
            sched = {k: _resolve(v, cfg) for k, v in d.items()}
            break
    kind = "rflow" if "RFlow" in str(sched.get("_target_", "")) else "ddpm"
    schedule = ScheduleConfig(
        kind=kind,
        prediction="flow" if kind == "rflow" else str(sched.get("prediction_type", "epsilon")),
        num_train_timesteps=int(sched.get("num_train_timesteps", 1000)),
        beta_schedule=str(sched.get("schedule", "linear_beta")) if kind == "ddpm" else "linear_beta",
        beta_start=float(sched.get("beta_start", 1e-4)), beta_end=float(sched.get("beta_end", 2e-2)),
    )
    # config errors name inference.json (ModelConfig's own messages name only "model config")
    config = built_from_record(lambda: ModelConfig(
        spatial_dims=dims, image_size=tuple(image_size), preset="custom", network=network,
        schedule=schedule.to_dict(), normaliser=normaliser.to_dict(),
        num_classes=int(args["num_class_embeds"]) - 1 if args.get("num_class_embeds") else 0,
        spacing=tuple(spacing), modality=modality,
        training={"converted_from": f"MONAI bundle {bundle.resolve().name}"}), cpath)
    model = DiffusionModel(config)
    weights = _read_weights(bundle)
    try:
        model.network.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{bundle}: bundle weights do not fit its network definition ({str(exc).splitlines()[0]})") from None
    return model


def _to_tuple(v):
    return tuple(v) if isinstance(v, list) else v


def _read_weights(bundle: Path) -> dict[str, torch.Tensor]:
    st = bundle / "models" / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = bundle / "models" / "model.pt"
    if not pt.is_file():
        raise ModelError(f"{bundle}: no models/model.pt or models/model.safetensors")
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted loader refuses anything but tensors and containers
        # torch's message runs to several lines of advice (weights_only=False) that must not be followed here
        raise ModelError(f"{pt}: not a plain state dict of tensors; refused by the safe loader, which never "
                         f"runs code from a bundle ({_first_line(exc)[:160]})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelError(f"{pt}: expected a state dict of tensors")
    return state
