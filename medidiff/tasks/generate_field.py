"""What one generated sample is: the kind of model, its field, its x0 clip and its geometry.

Pixel-space ``DiffusionModel``s and ``LatentModel``s go through one sampling path
(:mod:`medidiff.tasks.generate`); this module holds the few places where they differ: which
network the samplers run (:func:`prior_of`), how a model is found (:func:`load_generator`), and
the size, clip and geometry of its samples (:func:`sample_field`, :class:`Field`). For a latent
model the field also holds whether its latent is sampled whole or in windows
(:meth:`LatentModel.plan`, decided once per run), which the manifest's ``options`` records
(``latent_field=whole``, or ``latent_field=windows;latent_window=HxW;overlap=0.5``): the two
paths give different pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from medidiff.core.latent_model import LatentModel, LatentPlan
from medidiff.core.model import DiffusionModel
from medidiff.errors import MedidiffError
from medidiff.io import affine_from_spacing

AnyModel = DiffusionModel | LatentModel


def training_affine(model: DiffusionModel) -> np.ndarray:
    """A RAS affine with the training spacing and the training scans' axis directions.

    ``config.orientation`` is the 3-letter code of the training volumes' (x, y, z) index axes; a
    2D model drops the code of its slice axis. Without a usable code: a diagonal RAS affine.
    """
    cfg = model.config
    spacing = tuple(cfg.spacing) or (1.0,) * cfg.spatial_dims
    if len(spacing) != cfg.spatial_dims:
        spacing = (1.0,) * cfg.spatial_dims
    codes = str(cfg.orientation or "").upper()
    world = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    if len(codes) != 3 or any(c not in world for c in codes) or len({world[c][0] for c in codes}) != 3:
        return affine_from_spacing(spacing)
    if cfg.spatial_dims == 2:
        if cfg.slice_axis is None:
            return affine_from_spacing(spacing)
        drop = 2 - int(cfg.slice_axis)  # array axis a is index axis 2 - a (reversed order)
        codes = "".join(c for i, c in enumerate(codes) if i != drop)
    rev_spacing = list(reversed(spacing))
    aff = np.zeros((4, 4))
    aff[3, 3] = 1.0
    used = set()
    for i, c in enumerate(codes):
        axis, sign = world[c]
        aff[axis, i] = sign * rev_spacing[i]
        used.add(axis)
    if cfg.spatial_dims == 2:  # the (unit) out-of-plane column, so the affine stays invertible
        aff[({0, 1, 2} - used).pop(), 2] = 1.0
    return aff


def prior_of(model: AnyModel) -> DiffusionModel:
    """The network the samplers run: the model itself, or a latent model's prior."""
    return model.prior if isinstance(model, LatentModel) else model


def load_generator(spec: Any, device: str | torch.device) -> AnyModel:
    """A pixel or latent model from a loaded model, a name or a folder, on ``device``."""
    from medidiff.core.devices import resolve_device
    from medidiff.model_store.registry import find_model, resolve_model

    dev = resolve_device(device)
    if isinstance(spec, LatentModel):
        return spec.to(dev)
    if not isinstance(spec, DiffusionModel):
        from medidiff.core.latent_model import is_latent_model

        folder = find_model(spec)
        if is_latent_model(folder):
            return LatentModel.load(folder, device=dev)
    return resolve_model(spec, device=dev)


@dataclass(frozen=True)
class Field:
    """What one sample is: its pixel size, the network's size, the x0 clip, the geometry.

    ``plan``: a latent model's whole-or-windows plan for this field (``None`` for pixel models);
    ``window``: the prior's latent window when that plan is windowed.
    """

    size: tuple[int, ...]
    network_size: tuple[int, ...]
    clip_x0: float | None
    spacing: tuple[float, ...]
    affine: np.ndarray
    modality: str
    plan: LatentPlan | None = None
    window: tuple[int, ...] = ()

    def latent_field(self) -> str:
        """``"whole"`` or ``"windows"`` for a latent model's field, ``""`` for a pixel model."""
        if self.plan is None:
            return ""
        return "whole" if self.plan.whole else "windows"

    def options(self, model: AnyModel) -> str:
        """The manifest's ``options`` column: what else decides the pixels ('' for a pixel model's defaults)."""
        parts = []
        if isinstance(model, LatentModel):
            parts += ["latent", f"clip_x0={'none' if self.clip_x0 is None else f'{self.clip_x0:.6g}'}"]
        if isinstance(model, LatentModel) or self.size != tuple(model.config.image_size):
            parts.append("size=" + "x".join(map(str, self.size)))
        if self.plan is not None:
            parts.append(f"latent_field={self.latent_field()}")
            if not self.plan.whole:
                parts += ["latent_window=" + "x".join(map(str, self.window)), f"overlap={self.plan.overlap:g}"]
        return ";".join(parts)


def sample_field(model: AnyModel, image_size: Sequence[int] | None = None, clip_x0: float | str | None = "auto") -> Field:
    """Check ``image_size`` / ``clip_x0`` for ``model`` and describe its samples (see :class:`Field`).

    ``image_size`` (pixels) defaults to the training field; a latent model needs multiples of its
    autoencoder factor, and its plan (whole latent or windows, :meth:`LatentModel.plan`, which
    warns once for windows) is made here. ``clip_x0``: ``"auto"`` is 1 for pixel models (network units) and the
    stored ``x0_limit`` for latent models; ``None`` does not clip.
    """
    prior = prior_of(model)
    dims = prior.config.spatial_dims
    if clip_x0 == "auto":
        clip_x0 = model.x0_limit if isinstance(model, LatentModel) else 1.0
    elif clip_x0 is not None and not (isinstance(clip_x0, (int, float)) and not isinstance(clip_x0, bool)
                                      and math.isfinite(clip_x0) and clip_x0 > 0):
        raise MedidiffError(f"clip_x0 must be a number > 0, 'auto' or None, got {clip_x0!r}")
    if isinstance(model, LatentModel):
        f = model.autoencoder.factor
        size = tuple(int(s) for s in (image_size if image_size is not None else model.field_size))
        if len(size) != dims or any(s < f or s % f for s in size):
            raise MedidiffError(f"image size {size}: this {dims}D latent model needs {dims} sizes, "
                                f"each a positive multiple of {f}")
        c = model.autoencoder.config
        spacing = tuple(c.spacing) or (1.0,) * dims
        affine = training_affine(SimpleNamespace(config=c))  # type: ignore[arg-type]  (reads config fields only)
        latent_size = tuple(s // f for s in size)
        # whole or windows does not depend on the batch (a call holds at least one whole latent or not)
        plan = model.plan(latent_size, 1)
        window = () if plan.whole else tuple(int(s) for s in model.prior.config.image_size)
        return Field(size, latent_size, clip_x0, spacing, affine, c.modality, plan, window)
    size = tuple(int(s) for s in (image_size if image_size is not None else model.config.image_size))
    if len(size) != dims or any(s < 1 for s in size):
        raise MedidiffError(f"image size {size}: this {dims}D model needs {dims} positive sizes")
    spacing = tuple(model.config.spacing) or (1.0,) * dims
    return Field(size, size, clip_x0, spacing, training_affine(model), model.config.modality)
