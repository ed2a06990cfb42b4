"""The settings of a training run: :class:`TrainConfig` and the checks made before any data is read."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from medidiff.errors import MedidiffError

DEFAULT_STEPS = 1000
# settings a resumed run must share with the run it continues (they shape the model or the data order)
SAME_ON_RESUME = ("batch_size", "seed", "dims", "preset", "image_size", "schedule", "prediction", "noise", "noisy",
                  "contrast", "crop_foreground", "spacing_augment", "super_resolution")


def default_warmup(total_steps: int) -> int:
    """Warm-up length when none is given: 5% of the run, at most 500 steps."""
    return min(500, max(1, total_steps // 20))


def warmup_cosine_lr(step: int, total_steps: int, lr: float, warmup: int) -> float:
    """Learning rate at 0-based ``step``: linear warm-up over ``warmup`` steps, then cosine decay to 5% of ``lr``.

    Adam's early steps are the noisiest (its moment estimates start at zero), hence the warm-up;
    the decay lets the last steps settle into a minimum instead of rattling around it at full step
    size.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@dataclass
class TrainConfig:
    """Every setting of a training run (stored in ``RUN/state/train.json``).

    ``steps=None`` means 1000 for a new run and the run's own total when resuming.
    ``checkpoint_minutes`` checkpoints by wall time as well as every ``checkpoint_every`` steps
    (0 turns either off). ``full_paths`` records the training files' full paths in the model;
    by default they are recorded relative to the data folder they came from.
    ``noise`` is the training noise (white, simplex, coarse) and ``timestep_sampling`` how
    noise levels are drawn (uniform, low-noise, log-normal; :mod:`medidiff.tasks.train_noise`).
    ``contrast < 1`` adds contrast augmentation down to that factor (:func:`medidiff.core.data.augment`).
    ``crop_foreground`` is the share of training crops centred on the foreground (:mod:`medidiff.core.data`).
    ``spacing_augment > 1`` also trains on crops at up to that many times the voxel size (:mod:`medidiff.core.data`).
    ``noisy=True`` treats the scans as noisy data (no clean copy): the objective of ``--fit``
    (:mod:`medidiff.tasks.train_noisy`), each scan at its own estimated noise level.
    ``super_resolution = F > 1`` trains a super-resolution model: conditioned on each training crop
    area-downsampled F times per axis, it learns to sample the full-resolution crop
    (:mod:`medidiff.tasks.super_resolution`); crops must be divisible by F.
    """

    dims: int = 2
    preset: str = "tiny"
    image_size: int | tuple[int, ...] = 64
    steps: int | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int | None = None
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    condition_dropout: float = 0.1
    seed: int = 0
    device: str = "auto"
    schedule: str = "ddpm"
    prediction: str | None = None
    class_names: tuple[str, ...] = ()
    mask_classes: int | None = None
    slice_axis: int | None = None
    ct_window: str | None = None
    modality: str | None = None
    augment: bool = True
    contrast: float = 1.0
    crop_foreground: float = 0.0
    spacing_augment: float = 1.0
    checkpoint_every: int = 500
    checkpoint_minutes: float = 5.0
    sample_every: int = 0
    data_card: str | None = None
    licence: str | None = None
    command: str | None = None
    full_paths: bool = False
    noise: str = "white"
    timestep_sampling: str = "uniform"
    noisy: bool = False
    super_resolution: int = 0

    @property
    def total_steps(self) -> int:
        return DEFAULT_STEPS if self.steps is None else int(self.steps)

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else default_warmup(self.total_steps)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 5% of ``lr`` (:func:`warmup_cosine_lr`)."""
        return warmup_cosine_lr(step, self.total_steps, self.lr, self.warmup_steps)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        size = self.image_size
        d["image_size"] = [int(s) for s in size] if isinstance(size, (tuple, list)) else [int(size)] * self.dims
        d["class_names"] = list(self.class_names)
        d["device"] = str(self.device)
        return d


def check_config(cfg: TrainConfig) -> None:
    """One-line ``MedidiffError`` for a setting that cannot work (before any data is read)."""
    from medidiff.core.config_check import MAX_LOWRES_FACTOR
    from medidiff.core.model import PRESETS
    from medidiff.core.schedule import KINDS, PREDICTIONS

    if cfg.dims not in (2, 3):
        raise MedidiffError(f"dims {cfg.dims}: choose 2 or 3")
    if cfg.preset not in PRESETS:
        raise MedidiffError(f"preset {cfg.preset!r}: choose one of {', '.join(PRESETS)}")
    if cfg.schedule not in KINDS:
        raise MedidiffError(f"schedule {cfg.schedule!r}: choose one of {', '.join(KINDS)}")
    if cfg.prediction is not None and cfg.prediction not in PREDICTIONS[cfg.schedule]:
        raise MedidiffError(f"prediction {cfg.prediction!r} does not fit schedule {cfg.schedule}; "
                            f"choose one of {', '.join(PREDICTIONS[cfg.schedule])}")
    sizes = (cfg.image_size,) * cfg.dims if isinstance(cfg.image_size, int) else tuple(cfg.image_size)
    if len(sizes) != cfg.dims or any(int(s) < 1 for s in sizes):
        raise MedidiffError(f"image size {cfg.image_size}: give one positive size or {cfg.dims}")
    multiple = 2 ** (len(PRESETS[cfg.preset]["channels"]) - 1)
    if any(int(s) % multiple for s in sizes):
        raise MedidiffError(f"image size {cfg.image_size}: preset {cfg.preset!r} needs sizes divisible by {multiple}")
    for name, low in (("steps", 1), ("batch_size", 1), ("checkpoint_every", 0), ("sample_every", 0)):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < low):
            raise MedidiffError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(cfg.contrast, (int, float)) and 0 < cfg.contrast <= 1):
        raise MedidiffError(f"--contrast-augment {cfg.contrast!r}: give a factor in (0, 1] (1: none)")
    if not (isinstance(cfg.crop_foreground, (int, float)) and 0 <= cfg.crop_foreground <= 1):
        raise MedidiffError(f"--crop-foreground {cfg.crop_foreground!r}: give a share in [0, 1] (0: uniform crops)")
    if not (isinstance(cfg.spacing_augment, (int, float)) and 1 <= cfg.spacing_augment <= 8):
        raise MedidiffError(f"--spacing-augment {cfg.spacing_augment!r}: give a voxel-size factor in [1, 8] (1: none)")
    for name in ("lr", "checkpoint_minutes", "weight_decay", "grad_clip"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise MedidiffError(f"{name} must be a finite number >= 0, got {value!r}")
    from medidiff.choices import TimestepSampling, TrainingNoise

    for value, choice, option in ((cfg.noise, TrainingNoise, "noise"),
                                  (cfg.timestep_sampling, TimestepSampling, "timestep-sampling")):
        if value not in choice.values():
            raise MedidiffError(f"--{option} {value!r}: choose one of {', '.join(choice.values())}")
    if cfg.timestep_sampling != TimestepSampling.UNIFORM and cfg.schedule != "ddpm":
        raise MedidiffError(f"--timestep-sampling {cfg.timestep_sampling} is for --schedule ddpm; "
                            f"{cfg.schedule} trains with uniform times")
    if cfg.noisy and (cfg.noise != TrainingNoise.WHITE or cfg.dims != 2 or cfg.schedule != "ddpm"
                      or cfg.prediction not in (None, "epsilon")):
        raise MedidiffError("--noisy trains 2D DDPM epsilon models with white noise only; drop --noise, "
                            "--dims 3, --schedule and --prediction")
    f = cfg.super_resolution
    if not isinstance(f, int) or isinstance(f, bool) or not (f == 0 or 2 <= f <= MAX_LOWRES_FACTOR):
        raise MedidiffError(f"super_resolution {f!r}: give an upsampling factor in 2..{MAX_LOWRES_FACTOR} (0: none)")
    if f and any(int(s) % f for s in sizes):
        raise MedidiffError(f"image size {cfg.image_size}: a x{f} super-resolution model needs sizes divisible by {f}")
    if f and cfg.noisy:
        raise MedidiffError("super_resolution trains on clean scans; drop noisy=True")
    if not isinstance(cfg.ema_decay, (int, float)) or not 0 <= cfg.ema_decay < 1:
        raise MedidiffError(f"--ema-decay must be in [0, 1), got {cfg.ema_decay!r}")
    if not 0 <= cfg.condition_dropout <= 1:
        raise MedidiffError(f"condition_dropout must be in [0, 1], got {cfg.condition_dropout!r}")
