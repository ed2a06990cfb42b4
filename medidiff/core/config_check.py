"""Sense checks for a model's ``config.json``, and what every model-like folder config shares; no torch.

``DiffusionModel.load`` and the model registry (``medidiff models``) run :func:`check_config` on
the raw JSON before building anything, so a damaged or hostile config (channels 100000 or -16,
norm groups 0, timesteps <= 0, an image size of 262144 squared, a negative spacing ...) is refused
with one line naming the file and the field, instead of a MONAI traceback or a memory blow-up.
The limits are generous: far above any model medidiff trains, far below what would exhaust a
machine.

:class:`FolderConfig` is the one home of what ``ModelConfig`` (``core.model``) and
``AutoencoderConfig`` (``core.autoencoder``) do alike: geometry coercion and checks, the network
filled in from a preset, ``to_dict``/``from_dict`` for config.json (unknown keys ignored, so
folders of other versions load). :func:`open_folder` is the one set of checks both ``load``
methods run before building anything: a folder, a config.json record of the right format and a
readable version, and weights whose sha256 matches the record.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

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
MAX_LOWRES_FACTOR = 16  # a super-resolution model's upsampling factor per axis


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


def check_format_version(raw: dict[str, Any], where: str | Path, newest: int = FORMAT_VERSION, what: str = "model") -> int:
    """The config's ``format_version`` as an int; one-line ``ModelError`` when damaged or newer than ``newest``."""
    from medidiff.version import __version__

    version = raw.get("format_version")
    if not _is_int(version) or version < 1:
        raise ModelConfigError(f"{where}: format_version must be a positive integer, got {version!r}; the config is damaged")
    if version > newest:
        raise ModelError(f"{where}: {what} format version {version} is newer than this medidiff ({__version__}) reads "
                         f"(up to {newest}); upgrade medidiff")
    return version


def open_folder(folder: str | Path, fmt: str, newest: int, what: str = "model", hint: str = "") -> tuple[dict[str, Any], Path, Path]:
    """``(record, config path, weights path)`` of a model-like folder, or a one-line ``ModelError``.

    Checks, in order: ``folder`` is a folder with a ``config.json`` holding a JSON object of format
    ``fmt`` and a ``format_version`` in 1..``newest``, and its ``weights.safetensors`` exists and
    has the sha256 the record names. ``what`` names the kind of folder in messages; ``hint`` (e.g.
    "; train one with ...") ends the messages for a missing folder or config.
    """
    from medidiff.io.hashing import sha256_path

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: not a folder; a medidiff {what} is a folder with config.json and weights.safetensors{hint}")
    cpath, wpath = folder / "config.json", folder / "weights.safetensors"
    if not cpath.is_file():
        raise ModelError(f"{folder}: no config.json, so this is not a medidiff {what} folder{hint}")
    raw = read_record(cpath, fmt, f"{what} config", folder=what)
    check_format_version(raw, cpath, newest, what)
    if not wpath.is_file():
        raise ModelError(f"{wpath}: missing; the {what} folder is incomplete")
    expected, actual = raw.get("weights_sha256"), sha256_path(wpath)
    if expected != actual:
        raise ModelError(f"{wpath}: sha256 {actual[:12]}... does not match config.json ({str(expected)[:12]}...); "
                         "the weights are corrupted or were replaced")
    return raw, cpath, wpath


T = TypeVar("T")
C = TypeVar("C", bound="FolderConfig")


def built_from_record(make: Callable[[], T], cpath: str | Path, what: str = "model") -> T:
    """``make()``, with every failure to build from a folder's record turned into one ``ModelError`` line naming ``cpath``."""
    try:
        return make()
    except ModelError as exc:
        raise ModelError(f"{cpath}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"{cpath}: config does not describe a valid {what} ({exc!r})") from None


class FolderConfig:
    """Base of the dataclass configs a folder stores as config.json (``ModelConfig``, ``AutoencoderConfig``).

    A subclass is a ``@dataclass`` with at least ``spatial_dims``, ``image_size``, ``preset``,
    ``network`` and ``spacing`` fields; it sets ``WHAT`` (its name in messages), ``PRESETS``
    (preset name -> network arguments) and ``NETWORK_TUPLES`` (network entries that are tuples in
    Python and lists in JSON), calls :meth:`settle` from ``__post_init__`` and may override
    :meth:`check_network`. The network halves the size ``len(channels) - 1`` times.
    """

    WHAT: ClassVar[str] = "model"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    NETWORK_TUPLES: ClassVar[tuple[str, ...]] = ("channels",)

    @property
    def where(self) -> str:
        """How messages name this config (e.g. "model config")."""
        return f"{self.WHAT} config"

    @property
    def size_multiple(self) -> int:
        """Every training size must be a multiple of this (the network's downsampling per axis)."""
        return 2 ** (len(self.network["channels"]) - 1)

    def check_network(self) -> None:
        """Raise ``ModelConfigError`` for network (or other) values that make no sense; subclasses fill in."""

    def settle(self) -> None:
        """Coerce sizes to tuples, check the geometry, fill the network from the preset, check it all.

        The shared ``__post_init__``: the same rules and messages for every folder config.
        """
        self.image_size = tuple(int(s) for s in self.image_size)
        self.spacing = tuple(float(s) for s in self.spacing)
        if not _is_int(self.spatial_dims) or self.spatial_dims not in (2, 3):
            raise ModelConfigError(f"{self.where}: spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if len(self.image_size) != self.spatial_dims or not all(1 <= s <= MAX_SIDE for s in self.image_size):
            raise ModelConfigError(f"{self.where}: image_size {list(self.image_size)} must be {self.spatial_dims} "
                                   f"sizes in 1..{MAX_SIDE}")
        if not self.network:
            if self.preset not in self.PRESETS:
                raise ModelConfigError(f"{self.where}: unknown preset {self.preset!r}; choose one of {', '.join(self.PRESETS)}")
            self.network = dict(self.PRESETS[self.preset])
        self.check_network()
        m = self.size_multiple
        if any(s % m for s in self.image_size):
            raise ModelConfigError(f"{self.where}: image_size {list(self.image_size)} must be divisible by {m} "
                                   f"({len(self.network['channels']) - 1} downsamplings)")

    def to_dict(self) -> dict[str, Any]:
        """The config as config.json stores it (tuples as lists)."""
        d = asdict(self)  # type: ignore[call-overload]  (subclasses are dataclasses)
        d["image_size"] = list(self.image_size)
        d["spacing"] = list(self.spacing)
        d["network"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.network.items()}
        return d

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """The config from a config.json record; keys this version does not know are ignored."""
        if not isinstance(d, dict):
            raise ModelConfigError(f"{cls.WHAT} config: expected a JSON object, got {type(d).__name__}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}  # type: ignore[attr-defined]
        net = known.get("network")
        if isinstance(net, dict):
            known["network"] = {k: tuple(v) if k in cls.NETWORK_TUPLES and isinstance(v, list) else v for k, v in net.items()}
        return cls(**known)

    @classmethod
    def from_record(cls: type[C], raw: dict[str, Any], cpath: str | Path) -> C:
        """:meth:`from_dict` for a folder's record, every failure one ``ModelError`` line naming ``cpath``."""
        return built_from_record(lambda: cls.from_dict(raw), cpath, cls.WHAT)


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
    factor = _int_in(where, "lowres_factor", raw.get("lowres_factor", 0), 0, MAX_LOWRES_FACTOR)
    if factor and any(s % factor for s in size):
        raise ModelConfigError(f"{where}: image_size {list(size)} must be divisible by lowres_factor {factor}")
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
