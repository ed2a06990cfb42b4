"""Sense checks for a model's ``config.json``, without torch.

``DiffusionModel.load`` and the model registry (``medidiff models``) run :func:`check_config` on
the raw JSON before building anything, so a damaged or hostile config (channels 100000 or -16,
norm groups 0, timesteps <= 0, an image size of 262144 squared, a negative spacing ...) is refused
with one line naming the file and the field, instead of a MONAI traceback or a memory blow-up.
The limits are generous: far above any model medidiff trains, far below what would exhaust a
machine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medidiff.choices import PREDICTIONS_FOR, ScheduleKind
from medidiff.errors import ModelError

FORMAT = "medidiff-model"
FORMAT_VERSION = 1

MAX_SIDE = 4096  # voxels per axis of the training size
MAX_VOXELS = 512**3  # voxels of one training image or patch
MAX_CHANNELS = 4096
MAX_LEVELS = 8
MAX_RES_BLOCKS = 16
MAX_TIMESTEPS = 100_000
MAX_CLASSES = 100_000


class ModelConfigError(ModelError, ValueError):
    """A model config value that makes no sense (a ``ValueError`` too, for older callers)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int_in(where: str, name: str, v: Any, low: int, high: int) -> int:
    if not _is_int(v) or not low <= v <= high:
        raise ModelConfigError(f"{where}: {name} must be an integer in {low}..{high}, got {v!r}")
    return v


def read_record(path: Path, fmt: str, what: str, folder: str = "model") -> dict[str, Any]:
    """The JSON object in ``path`` whose ``format`` is ``fmt``; a one-line ``ModelError`` otherwise.

    The one reader of the JSON files in model folders (model, autoencoder and latent records).
    """
    import json

    try:
        raw = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc}); the {folder} folder is damaged") from None
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise ModelError(f"{path}: not a medidiff {what} (no 'format: {fmt}')")
    return raw


def check_format_version(raw: dict[str, Any], where: str | Path) -> int:
    """The config's ``format_version`` as an int; one-line ``ModelError`` when damaged or newer."""
    from medidiff.version import __version__

    version = raw.get("format_version")
    if not _is_int(version) or version < 1:
        raise ModelConfigError(f"{where}: format_version must be a positive integer, got {version!r}; the config is damaged")
    if version > FORMAT_VERSION:
        raise ModelError(f"{where}: model format version {version} is newer than this medidiff ({__version__}) reads "
                         f"(up to {FORMAT_VERSION}); upgrade medidiff")
    return version


def check_config(raw: Any, where: str | Path) -> None:
    """Raise a one-line ``ModelConfigError`` for the first field of ``raw`` that makes no sense.

    ``raw`` is the parsed ``config.json`` (or a ``ModelConfig.to_dict()``); ``where`` names it in
    messages. Checks the fields a network, schedule, normaliser and geometry are built from.
    """
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    dims = _int_in(where, "spatial_dims", raw.get("spatial_dims"), 2, 3)
    size = raw.get("image_size")
    if not isinstance(size, (list, tuple)) or len(size) != dims:
        raise ModelConfigError(f"{where}: image_size must list {dims} sizes, got {size!r}")
    for s in size:
        _int_in(where, "each image_size entry", s, 1, MAX_SIDE)
    if math.prod(size) > MAX_VOXELS:
        raise ModelConfigError(f"{where}: image_size {list(size)} has {math.prod(size):,} voxels, more than {MAX_VOXELS:,}")
    net = raw.get("network")
    if net is not None and net != {}:
        _check_network(net, size, where)
    _check_schedule(raw.get("schedule"), where)
    _check_normaliser(raw.get("normaliser"), where)
    n_classes = _int_in(where, "num_classes", raw.get("num_classes", 0), 0, MAX_CLASSES)
    names = raw.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > max(n_classes, 0):
        raise ModelConfigError(f"{where}: class_names must be a list of at most num_classes ({n_classes}) strings, got {names!r}")
    _int_in(where, "mask_classes", raw.get("mask_classes", 0), 0, 1000)
    spacing = raw.get("spacing", [])
    if not isinstance(spacing, (list, tuple)) or len(spacing) not in (0, dims) \
            or not all(_is_number(s) and s > 0 for s in spacing):
        raise ModelConfigError(f"{where}: spacing must be empty or {dims} positive finite numbers, got {spacing!r}")
    axis = raw.get("slice_axis")
    if axis is not None:
        _int_in(where, "slice_axis", axis, 0, 2)
    for key in ("modality", "orientation", "preset"):
        if key in raw and not isinstance(raw[key], str):
            raise ModelConfigError(f"{where}: {key} must be a string, got {raw[key]!r}")
    for key in ("training", "anomaly", "intervals"):
        if key in raw and not isinstance(raw[key], dict):
            raise ModelConfigError(f"{where}: {key} must be a JSON object, got {type(raw[key]).__name__}")


def _check_network(net: Any, size: list[int], where: str | Path) -> None:
    if not isinstance(net, dict):
        raise ModelConfigError(f"{where}: network must be a JSON object, got {type(net).__name__}")
    channels = net.get("channels")
    if not isinstance(channels, (list, tuple)) or not 1 <= len(channels) <= MAX_LEVELS:
        raise ModelConfigError(f"{where}: network.channels must list 1..{MAX_LEVELS} channel counts, got {channels!r}")
    for c in channels:
        _int_in(where, "each network.channels entry", c, 1, MAX_CHANNELS)
    attention = net.get("attention_levels")
    if not isinstance(attention, (list, tuple)) or len(attention) != len(channels) or not all(isinstance(a, bool) for a in attention):
        raise ModelConfigError(f"{where}: network.attention_levels must be {len(channels)} true/false values, got {attention!r}")
    blocks = net.get("num_res_blocks")
    for b in (blocks if isinstance(blocks, (list, tuple)) else [blocks]):
        _int_in(where, "network.num_res_blocks", b, 1, MAX_RES_BLOCKS)
    if isinstance(blocks, (list, tuple)) and len(blocks) != len(channels):
        raise ModelConfigError(f"{where}: network.num_res_blocks lists {len(blocks)} values for {len(channels)} levels")
    groups = _int_in(where, "network.norm_num_groups", net.get("norm_num_groups"), 1, MAX_CHANNELS)
    if any(c % groups for c in channels):
        raise ModelConfigError(f"{where}: network.channels {list(channels)} must all be divisible by norm_num_groups {groups}")
    heads = net.get("num_head_channels")
    for h in (heads if isinstance(heads, (list, tuple)) else [heads]):
        _int_in(where, "network.num_head_channels", h, 1, MAX_CHANNELS)
    factor = 2 ** (len(channels) - 1)
    if any(s % factor for s in size):
        raise ModelConfigError(f"{where}: image_size {list(size)} must be divisible by {factor} for {len(channels)} levels")


def _check_schedule(sched: Any, where: str | Path) -> None:
    if sched is None:
        return
    if not isinstance(sched, dict):
        raise ModelConfigError(f"{where}: schedule must be a JSON object, got {type(sched).__name__}")
    kind = sched.get("kind", "ddpm")
    if kind not in ScheduleKind.values():
        raise ModelConfigError(f"{where}: schedule.kind {kind!r} is not one of {', '.join(ScheduleKind.values())}")
    pred = sched.get("prediction", "epsilon")
    if pred not in PREDICTIONS_FOR[kind]:
        raise ModelConfigError(f"{where}: schedule.prediction {pred!r} does not fit {kind}; one of {', '.join(PREDICTIONS_FOR[kind])}")
    _int_in(where, "schedule.num_train_timesteps", sched.get("num_train_timesteps", 1000), 1, MAX_TIMESTEPS)
    start, end = sched.get("beta_start", 1e-4), sched.get("beta_end", 2e-2)
    if not (_is_number(start) and _is_number(end) and 0 < start <= end < 1):
        raise ModelConfigError(f"{where}: schedule betas must satisfy 0 < beta_start <= beta_end < 1, got {start!r}, {end!r}")


def _check_normaliser(norm: Any, where: str | Path) -> None:
    if norm is None:
        return
    if not isinstance(norm, dict):
        raise ModelConfigError(f"{where}: normaliser must be a JSON object, got {type(norm).__name__}")
    low, high = norm.get("low"), norm.get("high")
    if not (_is_number(low) and _is_number(high) and high > low):
        raise ModelConfigError(f"{where}: normaliser low/high must be finite numbers with low < high, got {low!r}, {high!r}")
