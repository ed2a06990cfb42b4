"""Train a 2D or 3D diffusion model on scans: ``train`` and its generator twin ``train_steps``.

The run folder (``RUN/model``, ``RUN/state``, ``RUN/log.csv``, ``RUN/samples``) is described in
:mod:`medidiff.tasks.run_folder`. Batches, noise and augmentation are pure functions of (seed,
step), so a resumed run ends with exactly the weights of an uninterrupted one, and under
``torchrun`` each of K processes takes its share of the same global batch (DDP averages the
gradients), so the result does not depend on K.

A run is never lost whole: it checkpoints every ``checkpoint_every`` steps *and* every
``checkpoint_minutes`` of wall time, closing the generator (cancel in napari, Ctrl-C or SIGTERM
in the CLI) checkpoints at the step boundary, and a folder left without a checkpoint can simply
be trained into again. Only one run at a time may write into a run folder (a folder lock).

``noise`` (white, simplex, coarse) and ``timestep_sampling`` (uniform, low-noise, log-normal)
choose the training noise and its levels (:mod:`medidiff.tasks.train_noise`, which has the maths);
the defaults draw exactly what they always did. ``noisy=True`` trains on noisy scans with no
clean data, with the objective of ``denoise --fit`` (:mod:`medidiff.tasks.train_noisy`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medidiff.core.data import TrainingData, prepare_training_data, scan_paths
from medidiff.core.devices import autocast_dtype
from medidiff.core.model import DiffusionModel, default_model_card
from medidiff.core.progress import Progress, plain_twin, run_to_end
from medidiff.errors import MedidiffError, OutputError
from medidiff.io import Scan
from medidiff.tasks import run_folder
from medidiff.tasks.distributed import close_process_group, init_process_group, process_device
from medidiff.tasks.train_config import DEFAULT_STEPS, SAME_ON_RESUME, TrainConfig, check_config
from medidiff.tasks.train_noise import structured_eps, training_timesteps

__all__ = ["TrainConfig", "TrainResult", "check_config", "train", "train_steps"]

@dataclass
class TrainResult:
    """The trained (EMA) model, where it was written (if anywhere) and the loss per step."""

    model: DiffusionModel
    run_dir: Path | None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def check_out_outside_data(out: Path, data: Sequence[Any]) -> None:
    """Refuse a run folder that is, or holds, one of the training files."""
    paths = [d for d in data if isinstance(d, (str, Path))]
    resolved = out.resolve()
    for f in scan_paths(paths) if paths else []:
        if f.resolve() == resolved or resolved in f.resolve().parents:
            raise OutputError(f"{out}: holds the training scan {f}; choose a run folder outside the data")


def _config(config: TrainConfig | None, options: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"train: unknown option(s) {', '.join(unknown)}; the settings are TrainConfig's fields")
    if "class_names" in options and options["class_names"] is not None:
        options["class_names"] = tuple(options["class_names"])
    if options.get("class_names", ()) is None:
        options["class_names"] = ()
    if "device" in options:
        options["device"] = str(options["device"])
    return dataclasses.replace(config or TrainConfig(), **options)


def train_steps(
    data: Sequence[str | Path | Scan] | str | Path | Scan | TrainingData,
    out: str | Path | None = None,
    config: TrainConfig | None = None,
    *,
    labels: Sequence[int] | None = None,
    masks: Sequence[str | Path | Scan] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> Generator[Progress, None, TrainResult]:
    """Train a diffusion model, yielding a ``Progress`` per step (with loss and learning rate).

    ``config`` holds the settings (a :class:`TrainConfig`); any of its fields may also be given
    as keywords (``steps=60, image_size=32``), which override it. ``labels`` (one class per scan)
    and ``masks`` (one label map per scan) condition the model. ``out=None`` trains in memory.
    ``resume=True`` continues the run in ``out`` from its last checkpoint (a folder without one
    starts from step 0). Closing the generator (cancel, Ctrl-C, SIGTERM) writes a checkpoint first.
    The first event (step 0) comes before any data is read.
    """
    cfg = _config(config, dict(options))
    check_config(cfg)
    run_dir = Path(out).expanduser() if out is not None else None
    items = [data] if isinstance(data, (str, Path, Scan)) else ([] if isinstance(data, TrainingData) else list(data))
    if run_dir is not None:
        check_out_outside_data(run_dir, items)
        if run_dir.exists() and not run_dir.is_dir():
            raise OutputError(f"{run_dir}: exists and is not a folder; choose a folder for the run")
    rank, world, opened = init_process_group(cfg.device)
    with contextlib.ExitStack() as stack:
        if opened:
            stack.callback(close_process_group)
        if world > 1 and cfg.batch_size % world:
            raise MedidiffError(f"batch size {cfg.batch_size} must be divisible by the number of processes ({world})")
        main = rank == 0
        continuing = False
        if run_dir is not None and main:
            from medidiff.io.lock import folder_lock

            stack.enter_context(folder_lock(run_dir, what="training run"))
            if resume and not run_folder.has_checkpoint(run_dir):
                warnings.warn(f"{run_dir}: no checkpoint to resume from; starting at step 0", stacklevel=2)
            continuing = run_folder.prepare(run_dir, resume=resume, overwrite=overwrite)
        elif run_dir is not None:
            continuing = resume and not overwrite and run_folder.has_checkpoint(run_dir)  # as rank 0 decides
        meta = run_folder.read_meta(run_dir) if continuing else None
        if meta is not None:
            cfg = _resumed_config(cfg, meta, run_dir)
        steps = cfg.total_steps
        yield Progress(step=0, total=steps, message="loading training data")
        if cfg.noisy:
            return (yield from _run_noisy(data, run_dir, cfg, labels, masks, meta, world, items))
        return (yield from _run(data, run_dir, cfg, labels, masks, meta, rank, world, items))


def _run_noisy(data, run_dir: Path | None, cfg: TrainConfig, labels, masks, meta, world: int,
               items: list) -> Generator[Progress, None, TrainResult]:
    """``noisy=True``: the ``--fit`` objective on noisy scans (:mod:`medidiff.tasks.train_noisy`), one process.

    Not resumable (the objective keeps no optimiser state on disk): a cancelled run writes nothing.
    """
    from medidiff.tasks.train_noisy import train_noisy_steps

    if world > 1 or labels is not None or masks is not None or meta is not None or isinstance(data, TrainingData):
        raise MedidiffError("--noisy trains one unconditioned model in one process from scan files, and cannot "
                            "--resume; drop --labels/--masks/--resume or run without torchrun")
    dev = process_device(cfg.device, 0, 1)
    model, fit, found = yield from train_noisy_steps(items, cfg, dev)
    model.network.eval()
    training = {
        "steps": fit.steps, "batch_size": cfg.batch_size, "learning_rate": cfg.lr, "seed": cfg.seed,
        "preset": cfg.preset, "processes": 1, "device": str(dev), "training_images": len(found.items),
        "sources": [p["source"] for p in found.per_scan][:20], "data_card": cfg.data_card or "",
        "licence": cfg.licence or "", "command": cfg.command or "", "noise": "white", "ema_decay": cfg.ema_decay,
        "image_size": list(model.config.image_size), "noisy": True,
        "objective": "noisy data: denoising score matching on the noisy scans (as --fit; consistent Tweedie)",
        "per_scan": found.per_scan[:20], "steps_done": fit.steps, "seconds_this_session": round(fit.seconds, 1),
        "final_loss": round(float(np.mean(fit.losses[-50:])), 5) if fit.losses else None,
    }
    model.config.training = training
    if run_dir is not None:
        for i, (loss, sec) in enumerate(zip(fit.losses, fit.times)):
            run_folder.append_log(run_dir / "log.csv", i + 1, loss, cfg.lr, sec)
        model.save(run_dir / "model", overwrite=True, model_card=_model_card(model, cfg))
    return TrainResult(model=model, run_dir=run_dir, losses=list(fit.losses), seconds=fit.seconds)


def _resumed_config(cfg: TrainConfig, meta: dict[str, Any], run_dir: Path) -> TrainConfig:
    saved = meta["config"]
    mine = cfg.to_json()
    for key in SAME_ON_RESUME:
        if key in saved and saved[key] != mine[key]:
            raise MedidiffError(f"{run_dir / 'state'}: the run used {key}={saved[key]}, not {mine[key]}; "
                                "resume with the same settings")
    if cfg.steps is None:  # resume continues the run as configured unless a new total is asked for
        cfg = dataclasses.replace(cfg, steps=int(saved.get("steps") or DEFAULT_STEPS))
    return cfg


def _run(data, run_dir: Path | None, cfg: TrainConfig, labels, masks, meta, rank: int, world: int,
         items: list) -> Generator[Progress, None, TrainResult]:
    dev = process_device(cfg.device, rank, world)
    steps, seed = cfg.total_steps, cfg.seed
    td = data if isinstance(data, TrainingData) else prepare_training_data(
        data, spatial_dims=cfg.dims, image_size=cfg.image_size, slice_axis=cfg.slice_axis, ct_window=cfg.ct_window,
        labels=labels, masks=masks, augment=cfg.augment, modality=cfg.modality, contrast=cfg.contrast,
        crop_foreground=cfg.crop_foreground, spacing_augment=cfg.spacing_augment,
    )
    n_classes = (max(td.labels) + 1 if td.labels else 0) if labels is not None else 0
    n_classes = max(n_classes, len(cfg.class_names))
    mask_classes = cfg.mask_classes
    if masks is not None and mask_classes is None:
        mask_classes = int(max(float(m.max()) for m in td.masks)) if td.masks else 0
    model = DiffusionModel.create(
        td.spatial_dims, td.image_size, preset=cfg.preset, schedule=cfg.schedule, prediction=cfg.prediction,
        num_classes=n_classes, class_names=list(cfg.class_names), mask_classes=mask_classes or 0,
        lowres_factor=cfg.super_resolution, normaliser=td.normaliser, spacing=td.spacing, orientation=td.orientation, modality=td.modality,
        slice_axis=td.slice_axis, seed=seed,
    )
    model.network.to(dev)
    ema = copy.deepcopy(model.network).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, losses = 0, []
    if meta is not None:
        run_folder.load_state(run_dir / "state", meta, model.network, ema, opt, dev)
        start, losses = int(meta["step"]), [float(v) for v in meta.get("losses", [])][: int(meta["step"])]
    main = rank == 0
    sources = run_folder.describe_sources(td.sources, [Path(p) for p in items if isinstance(p, (str, Path))], cfg.full_paths)
    training = _training_record(cfg, td, sources, world, dev)
    model.config.training = dict(training, steps_done=start)
    if run_dir is not None and main:
        run_folder.trim_log(run_dir / "log.csv", start)  # a crash may have logged steps after the checkpoint

    def checkpoint(done: int) -> None:
        model.config.training = dict(training, steps_done=done)
        model.save(run_dir / "model", overwrite=True, model_card=_model_card(model, cfg), state_dict=ema.state_dict())
        run_folder.write_state(run_dir / "state", model.network, ema, opt,
                               {"step": done, "losses": losses[:done], "config": cfg.to_json()})

    net = model.network
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    amp = autocast_dtype(dev)
    t0 = last_checkpoint = time.perf_counter()
    local = cfg.batch_size // world
    model.network.train()
    try:
        for step in range(start, steps):
            value = _train_step(net, model, ema, opt, td, cfg, step, rank, local, dev, amp, world)
            losses.append(value)
            done = step + 1
            if run_dir is not None and main:
                run_folder.append_log(run_dir / "log.csv", done, value, cfg.lr_at(step), time.perf_counter() - t0)
                by_steps = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
                by_time = cfg.checkpoint_minutes and time.perf_counter() - last_checkpoint >= 60 * cfg.checkpoint_minutes
                if (by_steps or by_time) and done < steps:
                    checkpoint(done)
                    last_checkpoint = time.perf_counter()
                if cfg.sample_every and done % cfg.sample_every == 0:
                    _sample_grid(model, ema, run_dir / "samples" / f"step_{done:07d}.png", seed)
            elapsed = time.perf_counter() - t0
            yield Progress(step=done, total=steps, message="train",
                           values={"loss": value, "lr": cfg.lr_at(step), "it/s": (done - start) / max(elapsed, 1e-9)})
    except GeneratorExit:
        # cancelled (napari) or interrupted (Ctrl-C / SIGTERM in the CLI): keep what was learnt
        if run_dir is not None and main and len(losses) > start:
            checkpoint(len(losses))
        raise
    seconds = time.perf_counter() - t0
    model.network.load_state_dict(ema.state_dict())
    model.network.eval()
    training.update(seconds_this_session=round(seconds, 1),
                    final_loss=round(float(np.mean(losses[-50:])), 5) if losses else None)
    if run_dir is not None and main:
        checkpoint(steps)
    model.config.training = dict(training, steps_done=steps)
    if world > 1:
        torch.distributed.barrier()
    return TrainResult(model=model, run_dir=run_dir, losses=losses, seconds=seconds)


def _train_step(net, model: DiffusionModel, ema, opt, td: TrainingData, cfg: TrainConfig, step: int, rank: int,
                local: int, dev: torch.device, amp, world: int) -> float:
    """One optimiser step on the (seed, step) batch; the loss averaged over processes."""
    batch = td.batch(cfg.seed, step, cfg.batch_size)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, step, 3]).generate_state(1)[0]))
    noise = model.draw_training_noise(batch["images"].shape, gen)
    if cfg.noise != "white" or cfg.timestep_sampling != "uniform":  # own streams: the default stays as it was
        extra = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, step, 4]).generate_state(1)[0]))
        if cfg.noise != "white":
            noise["eps"] = structured_eps(cfg.noise, tuple(noise["eps"].shape), extra)
        if cfg.timestep_sampling != "uniform":
            noise["t"] = training_timesteps(cfg.timestep_sampling, model.schedule, len(noise["t"]), extra)
    part = slice(rank * local, (rank + 1) * local)
    x0 = torch.from_numpy(batch["images"][part]).to(dev)
    lab = torch.from_numpy(batch["labels"][part]) if "labels" in batch else None
    msk = torch.from_numpy(batch["masks"][part]) if "masks" in batch else None
    noise = {k: v[part] for k, v in noise.items()}
    for g in opt.param_groups:
        g["lr"] = cfg.lr_at(step)
    with torch.autocast(device_type=dev.type, dtype=amp, enabled=amp is not None):
        loss = _loss(net, model, x0, noise, lab, msk, cfg.condition_dropout)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.network.parameters(), cfg.grad_clip)
    opt.step()
    _ema_update(ema, model.network, cfg.ema_decay, step)
    value = float(loss.detach())
    if world > 1:
        t = torch.tensor([value], device=dev)
        torch.distributed.all_reduce(t)
        value = float(t) / world
    return value


def _training_record(cfg: TrainConfig, td: TrainingData, sources: list[str], world: int, dev) -> dict[str, Any]:
    """What the model's config.json records about its training (no full paths unless asked)."""
    return {
        "steps": cfg.total_steps, "batch_size": cfg.batch_size, "learning_rate": cfg.lr, "seed": cfg.seed,
        "preset": cfg.preset, "processes": world, "device": str(dev), "training_images": len(td),
        "sources": sources[:20], "data_card": cfg.data_card or "", "licence": cfg.licence or "",
        "command": cfg.command or "",
        "noise": cfg.noise, "timestep_sampling": cfg.timestep_sampling, "contrast_augment": cfg.contrast,
        "crop_foreground": cfg.crop_foreground, "spacing_augment": cfg.spacing_augment,
        "ema_decay": cfg.ema_decay, "image_size": [int(v) for v in td.image_size],
    }


def _model_card(model: DiffusionModel, cfg: TrainConfig) -> str:
    card = default_model_card(model)
    if cfg.data_card:
        card += f"\nTraining data card: {cfg.data_card}\n"
    if cfg.licence:
        card += f"\nTraining data licence: {cfg.licence}\n"
    if cfg.command:
        card += f"\nCommand:\n\n    {cfg.command}\n"
    return card


def _loss(net, model, x0, noise, lab, msk, dropout) -> torch.Tensor:
    if isinstance(net, torch.nn.parallel.DistributedDataParallel):
        # run the forward pass through the DDP wrapper so gradients are all-reduced
        inner = model.network
        model.network = net
        try:
            return model.training_loss(x0, noise, lab, msk, dropout)
        finally:
            model.network = inner
    return model.training_loss(x0, noise, lab, msk, dropout)


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float, step: int) -> None:
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), net.parameters()):
        pe.mul_(d).add_(p.detach(), alpha=1 - d)
    for be, b in zip(ema.buffers(), net.buffers()):
        be.copy_(b)


def _sample_grid(model: DiffusionModel, ema, path: Path, seed: int, n: int = 4) -> None:
    """Save a PNG grid of ``n`` EMA samples (middle slice for 3D)."""
    from medidiff.core.sampling import generate_batch
    from medidiff.reporting.figures import save_grid

    live = {k: v.clone() for k, v in model.network.state_dict().items()}
    model.network.load_state_dict(ema.state_dict())
    model.network.eval()
    try:
        labels = torch.arange(n) % model.config.num_classes if model.config.num_classes else None
        x = run_to_end(generate_batch(model, list(range(n)), steps=10, class_labels=labels, masks=None))
    finally:
        model.network.load_state_dict(live)
        model.network.train()
    imgs = x[:, 0].cpu().numpy()
    if imgs.ndim == 4:
        imgs = imgs[:, imgs.shape[1] // 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid([imgs[i] for i in range(len(imgs))], path, titles=[f"sample {i}" for i in range(len(imgs))])


train = plain_twin(train_steps, "train")
