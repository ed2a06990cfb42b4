"""Latent diffusion: train a diffusion prior on autoencoder latents, and generate through the decoder.

The steps (Rombach et al. 2022, as MONAI's tutorials do them, but with the scale factor kept):

1. :func:`train_autoencoder_steps` (:mod:`medidiff.tasks.autoencoder_train`) learns ``E``/``D``.
2. :func:`encode_training_data` maps every training image (2D slice or 3D volume, centred in the
   pixel *field*) to its latent mean ``z = E(x)`` (plus its left-right mirror image when
   ``flip``: the usual flip augmentation, done in pixel space because a latent of a mirrored image
   is not the mirrored latent), and standardises: ``u = (z - shift) * scale_factor`` with
   ``shift = mean(z)`` and ``scale_factor = 1 / std(z)``.
3. :func:`train_latent_steps` trains an ordinary :class:`DiffusionModel` on ``u`` with
   :func:`medidiff.tasks.train.train_steps`: a one-channel latent travels as an image, the
   prior's normaliser *is* the standardisation (``latent_normaliser``), so the scale factor is
   stored in config.json and again in ``latent.json`` (see :mod:`medidiff.core.latent_model`).
   Latent batches are not augmented again (``augment=False``): flips and affines of a latent
   are not latents of flipped images.
4. Generation is the shared path of pixel models (:mod:`medidiff.tasks.generate`,
   :mod:`medidiff.tasks.dataset`: seeds, batches, manifest, data card, resume, shards): it
   samples ``u`` with the existing samplers (x0 clipped to the training latents' max ``|u|``,
   the stored ``x0_limit``, not to the pixel models' 1: the standardised latents have unit
   variance), on the whole latent of the requested field at once (in windows of the training
   latent only when it would not fit: :meth:`LatentModel.plan`), maps back to ``z`` and
   decodes (:meth:`LatentModel.decode`). :func:`generate_latent_steps` is that path for latent
   models only.

The run folder is the one ``train_steps`` writes (``RUN/model``, ``RUN/log.csv``, ``RUN/state``);
the autoencoder and ``latent.json`` are added to ``RUN/model`` when training ends or is
cancelled (a mid-run checkpoint holds only the prior; ``resume=True`` re-encodes the same data
deterministically and continues).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medidiff.core.autoencoder import Autoencoder
from medidiff.core.data import TrainingData, fit_to_size, prepare_training_data
from medidiff.core.latent_model import LatentModel, latent_normaliser, write_latent_parts
from medidiff.core.progress import Progress, plain_twin, relay
from medidiff.errors import MedidiffError, OutputError
from medidiff.io import Scan
from medidiff.tasks.autoencoder_train import (AutoencoderResult, AutoencoderTrainConfig, train_autoencoder,
                                              train_autoencoder_steps)
from medidiff.tasks.generate import GenerateResult
from medidiff.tasks.train import train_steps
from medidiff.tasks.train_config import TrainConfig

# the prior's defaults where they differ from a pixel model's: chosen at equal CPU time in
# benchmarks/README.md ("Generation recipe at equal compute": v-prediction KID 0.112 vs epsilon
# 0.196; lr 1e-3, the pixel default, was the worst latent row)
LATENT_PRIOR_DEFAULTS: dict[str, Any] = {"lr": 2e-3, "prediction": "v_prediction"}

__all__ = ["AutoencoderResult", "AutoencoderTrainConfig", "LatentTrainResult", "encode_training_data",
           "generate_latent", "generate_latent_steps", "train_autoencoder", "train_autoencoder_steps",
           "train_latent", "train_latent_steps"]


@dataclass
class LatentTrainResult:
    """The trained latent model, its run folder and the prior's loss per step."""

    model: LatentModel
    run_dir: Path | None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _as_autoencoder(autoencoder: Autoencoder | str | Path, device: str | torch.device) -> Autoencoder:
    if isinstance(autoencoder, Autoencoder):
        return autoencoder.to(device)
    return Autoencoder.load(Path(autoencoder).expanduser(), device=device)


def default_field(shape: Sequence[int], multiple: int) -> tuple[int, ...]:
    """The smallest field of whole ``multiple``s that holds an image of ``shape``."""
    return tuple(int(math.ceil(s / multiple) * multiple) for s in shape)


def encode_training_data(
    autoencoder: Autoencoder,
    data: Sequence[str | Path | Scan] | str | Path | Scan,
    *,
    field: Sequence[int] | None = None,
    multiple: int = 1,
    flip: bool = True,
    batch_size: int = 8,
) -> tuple[TrainingData, float, float]:
    """Latents of the training images, standardised, as ``TrainingData`` + ``(scale_factor, shift)``.

    Each image (slice or volume, mapped by the autoencoder's own pixel normaliser) is centred in
    the pixel ``field`` (padded with its minimum or cropped); ``field=None`` takes the first
    image's shape rounded up to a multiple of ``factor * multiple`` (so the latent suits a prior
    whose sizes must be multiples of ``multiple``).
    """
    cfg = autoencoder.config
    td = prepare_training_data(data, spatial_dims=cfg.spatial_dims, image_size=cfg.image_size,
                               slice_axis=cfg.slice_axis, normaliser=autoencoder.normaliser, augment=False,
                               modality=cfg.modality)
    unit = autoencoder.factor * max(1, int(multiple))
    size = tuple(int(s) for s in field) if field is not None else default_field(td.images[0].shape, unit)
    if len(size) != cfg.spatial_dims or any(s < 1 or s % unit for s in size):
        raise MedidiffError(f"latent field {size}: give {cfg.spatial_dims} sizes, each a positive multiple of {unit} "
                            f"(autoencoder factor {autoencoder.factor} x prior multiple {multiple})")
    images = [fit_to_size([img], size, None, [float(img.min())])[0] for img in td.images]
    if flip:
        images += [np.ascontiguousarray(img[..., ::-1]) for img in images]
    latents = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack(images[i : i + batch_size])[:, None].astype(np.float32))
        latents.append(autoencoder.encode(x).cpu())
    z = torch.cat(latents)[:, 0].double()
    shift, std = float(z.mean()), float(z.std())
    if not std > 1e-8:
        raise MedidiffError("the training latents are (almost) constant: the autoencoder has not learnt these images")
    scale_factor = 1.0 / std
    norm = latent_normaliser(shift, scale_factor)
    units = [norm.forward(zi.float().numpy()) for zi in z]
    f = autoencoder.factor
    latent_td = TrainingData(
        images=units, normaliser=norm, spatial_dims=cfg.spatial_dims, image_size=tuple(s // f for s in size),
        spacing=tuple(s * f for s in td.spacing), orientation=td.orientation, modality=td.modality,
        slice_axis=td.slice_axis, sources=td.sources, augment=False,
    )
    return latent_td, scale_factor, shift


def _check_run_dir(out: Path, autoencoder: Autoencoder | str | Path) -> None:
    ae_path = autoencoder.path if isinstance(autoencoder, Autoencoder) else Path(autoencoder)
    if ae_path is None:
        return
    a, o = Path(ae_path).expanduser().resolve(), out.resolve()
    if a == o or o in a.parents:
        raise OutputError(f"{out}: is (or holds) the autoencoder {ae_path}; choose a run folder outside it")


def prior_config(config: TrainConfig | None, options: dict[str, Any], run_dir: Path | None,
                 resume: bool) -> TrainConfig:
    """The prior's :class:`TrainConfig`: ``config`` (as given) or :data:`LATENT_PRIOR_DEFAULTS`, then ``options``.

    The defaults fill only settings not given; v-prediction only for the ddpm schedule (rflow has
    its own). A resumed run keeps the settings it started with, so runs begun before these defaults
    continue as they were.
    """
    if config is not None:
        return dataclasses.replace(config, **options)
    defaults = dict(LATENT_PRIOR_DEFAULTS)
    if options.get("schedule", TrainConfig.schedule) != "ddpm":
        defaults.pop("prediction")
    if resume and run_dir is not None:
        from medidiff.tasks import run_folder

        if run_folder.has_checkpoint(run_dir):
            saved = run_folder.read_meta(run_dir).get("config", {})
            defaults = {k: saved[k] for k in defaults if k in saved}
    return TrainConfig(**{**defaults, **options})


def train_latent_steps(
    data: Sequence[str | Path | Scan] | str | Path | Scan,
    autoencoder: Autoencoder | str | Path,
    out: str | Path | None = None,
    config: TrainConfig | None = None,
    *,
    field: Sequence[int] | None = None,
    flip: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> Generator[Progress, None, LatentTrainResult]:
    """Encode ``data`` with ``autoencoder`` and train a latent diffusion prior on it (see the module docstring).

    ``config`` / ``options`` are :class:`TrainConfig` settings of the prior (``preset``, ``steps``,
    ``batch_size``, ``lr``, ``seed``, ``device``, ...); its ``dims``, ``image_size`` and
    ``augment`` are set from the latents. Without ``config``, settings not given take
    :data:`LATENT_PRIOR_DEFAULTS` (v-prediction, lr 2e-3). ``field``: the pixel field (default: the
    first training image's shape, rounded up). With ``out``, RUN/model becomes a latent model folder.
    """
    from medidiff.core.devices import resolve_device
    from medidiff.core.model import PRESETS
    from medidiff.tasks.train import check_out_outside_data

    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise MedidiffError(f"train_latent: unknown option(s) {', '.join(unknown)}; the settings are TrainConfig's fields")
    run_dir = Path(out).expanduser() if out is not None else None
    cfg = prior_config(config, options, run_dir, resume)
    if cfg.preset not in PRESETS:
        raise MedidiffError(f"preset {cfg.preset!r}: choose one of {', '.join(PRESETS)}")
    items = [data] if isinstance(data, (str, Path, Scan)) else list(data)
    if run_dir is not None:
        check_out_outside_data(run_dir, items)
        _check_run_dir(run_dir, autoencoder)
    ae = _as_autoencoder(autoencoder, resolve_device(cfg.device))
    yield Progress(step=0, total=cfg.total_steps, message="encoding the training data")
    multiple = 2 ** (len(PRESETS[cfg.preset]["channels"]) - 1)
    td, scale_factor, shift = encode_training_data(ae, data, field=field, multiple=multiple, flip=flip)
    x0_limit = float(max(np.abs(u).max() for u in td.images))
    cfg = dataclasses.replace(cfg, dims=ae.config.spatial_dims, image_size=td.image_size, augment=False,
                              modality=cfg.modality or td.modality)
    inner = train_steps(td, run_dir, cfg, resume=resume, overwrite=overwrite)
    try:
        result = yield from relay(inner, message="latent prior")
    except GeneratorExit:
        # cancelled: train_steps has checkpointed the prior; make RUN/model a latent model folder
        if run_dir is not None and (run_dir / "model" / "config.json").is_file():
            from medidiff.core.model import DiffusionModel

            write_latent_parts(run_dir / "model",
                               LatentModel(DiffusionModel.load(run_dir / "model"), ae, scale_factor, shift, x0_limit))
        raise
    lm = LatentModel(result.model, ae, scale_factor, shift, x0_limit)
    if run_dir is not None:
        write_latent_parts(run_dir / "model", lm)
        lm.path = lm.prior.path = run_dir / "model"
    return LatentTrainResult(model=lm, run_dir=run_dir, losses=result.losses, seconds=result.seconds)


def generate_latent_steps(
    model: LatentModel | str | Path,
    n: int,
    *,
    seed: int = 0,
    sampler: str | None = None,
    steps: int = 20,
    batch_size: int = 8,
    image_size: Sequence[int] | None = None,
    clip_x0: float | str | None = "auto",
    max_latent_voxels: int | None = None,
    device: str | torch.device = "auto",
) -> Generator[Progress, None, GenerateResult]:
    """Generate ``n`` scans with a latent model, yielding a ``Progress`` per network step.

    The shared :func:`medidiff.tasks.generate.generate_steps` restricted to latent models (data
    set folders: :func:`medidiff.tasks.dataset.generate_dataset`, which takes latent models too).
    Sample ``j`` draws its noise from ``sample_seed(seed, j)``: the same seed (and batch size, on
    the CPU) gives the same bytes. ``image_size`` (pixels, multiples of the autoencoder factor)
    defaults to the training field; a larger field is sampled as one latent (no windows) and
    decoded in one piece where it fits the device's memory; where it does not (or where one
    network call would hold more than ``max_latent_voxels`` latent voxels, batch included), in
    overlapping windows of the training latent, with a ``LatentWindowsWarning``
    (:meth:`LatentModel.plan`; the first event's ``values["latent windows"]`` is the number of
    windows per sample, 0 for whole). ``clip_x0``: clip the sampler's x0 prediction
    (standardised latent units) to this; ``"auto"`` uses the model's ``x0_limit``, ``None`` does
    not clip. Scans are in the training scans' units and geometry, ``meta["synthetic"] = True``.
    """
    from medidiff.core.devices import resolve_device
    from medidiff.tasks.generate import generate_steps

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise MedidiffError(f"n must be an integer >= 1, got {n!r}")
    if not isinstance(model, LatentModel):
        model = LatentModel.load(Path(model).expanduser(), device=resolve_device(device))
    if max_latent_voxels is not None:
        model = dataclasses.replace(model, max_latent_voxels=max_latent_voxels)
    return (yield from generate_steps(model, n, seed=seed, sampler=sampler, steps=steps, batch_size=batch_size,
                                      image_size=image_size, clip_x0=clip_x0, device=device))


train_latent = plain_twin(train_latent_steps, "train latent")
generate_latent = plain_twin(generate_latent_steps, "generate latent")
