"""Train a 2D or 3D diffusion model on scans: ``train`` and its generator twin ``train_steps``.

A run folder holds::

    RUN/model/            the EMA model (a normal medidiff model folder)
    RUN/state/            what --resume needs: raw + EMA weights, optimiser tensors
                          (safetensors) and the step (JSON)
    RUN/log.csv           step, loss, learning rate, seconds
    RUN/samples/*.png     a grid of samples every ``sample_every`` steps

Batches, noise and augmentation are pure functions of (seed, step), so a resumed run ends
with exactly the weights of an uninterrupted one, and under ``torchrun`` each of K
processes takes its share of the same global batch (DDP averages the gradients), so the
result does not depend on K.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medidiff.core.data import TrainingData, prepare_training_data
from medidiff.core.devices import autocast_dtype, resolve_device
from medidiff.errors import MedidiffError, OutputError
from medidiff.io import Scan
from medidiff.core.model import DiffusionModel, default_model_card
from medidiff.core.progress import Progress, run_to_end


@dataclass
class TrainConfig:
    """Optimisation settings of a run (stored in RUN/state/train.json)."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int | None = None
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    condition_dropout: float = 0.1
    checkpoint_every: int = 500
    sample_every: int = 0
    seed: int = 0

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else min(500, max(1, self.steps // 20))

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 5% of ``lr``."""
        w = self.warmup_steps
        if step < w:
            return self.lr * (step + 1) / w
        progress = (step - w) / max(1, self.steps - w)
        return self.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@dataclass
class TrainResult:
    """The trained (EMA) model, where it was written (if anywhere) and the loss per step."""

    model: DiffusionModel
    run_dir: Path | None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train(*args, show_progress: bool = False, **kwargs) -> TrainResult:
    """Train a model; see :func:`train_steps` for the arguments."""
    return run_to_end(train_steps(*args, **kwargs), show=show_progress, desc="train")


def train_steps(
    data: Sequence[str | Path | Scan] | str | Path | Scan | TrainingData,
    out: str | Path | None = None,
    *,
    dims: int = 2,
    preset: str = "tiny",
    image_size: int | Sequence[int] = 64,
    steps: int = 1000,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "auto",
    schedule: str = "ddpm",
    prediction: str | None = None,
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    masks: Sequence[str | Path | Scan] | None = None,
    mask_classes: int | None = None,
    slice_axis: int | None = None,
    ct_window: str | None = None,
    modality: str | None = None,
    augment: bool = True,
    checkpoint_every: int = 500,
    sample_every: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    ema_decay: float = 0.999,
    warmup: int | None = None,
    data_card: str | None = None,
    command: str | None = None,
) -> Generator[Progress, None, TrainResult]:
    """Train a diffusion model, yielding a ``Progress`` per step (with loss and learning rate).

    ``out=None`` trains in memory only. ``resume=True`` continues the run in ``out`` from
    its last checkpoint. Closing the generator (cancel, Ctrl-C) writes a checkpoint first,
    so the run can be resumed.
    """
    rank, world = _init_distributed(device)
    dev = _process_device(device, rank, world)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, checkpoint_every=checkpoint_every,
                      sample_every=sample_every, seed=seed, ema_decay=ema_decay, warmup=warmup)
    if batch_size % world:
        raise MedidiffError(f"batch size {batch_size} must be divisible by the number of processes ({world})")
    run_dir = Path(out) if out is not None else None
    if run_dir is not None and not resume and run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise OutputError(f"{run_dir}: already exists; pass --resume to continue it, --overwrite to replace it, or choose another folder")

    td = data if isinstance(data, TrainingData) else prepare_training_data(
        data, spatial_dims=dims, image_size=image_size, slice_axis=slice_axis, ct_window=ct_window,
        labels=labels, masks=masks, augment=augment, modality=modality,
    )
    n_classes = (max(td.labels) + 1 if td.labels else 0) if labels is not None else 0
    if class_names:
        n_classes = max(n_classes, len(class_names))
    if masks is not None and mask_classes is None:
        mask_classes = int(max(float(m.max()) for m in td.masks)) if td.masks else 0
    model = DiffusionModel.create(
        td.spatial_dims, td.image_size, preset=preset, schedule=schedule, prediction=prediction,
        num_classes=n_classes, class_names=list(class_names or []), mask_classes=mask_classes or 0,
        normaliser=td.normaliser, spacing=td.spacing, orientation=td.orientation, modality=td.modality,
        slice_axis=td.slice_axis, seed=seed,
    )
    model.network.to(dev)
    ema = copy.deepcopy(model.network).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.network.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    start = 0
    losses: list[float] = []
    if resume:
        if run_dir is None or not (run_dir / "state" / "train.json").is_file():
            raise MedidiffError(f"{run_dir}: no checkpoint to resume from (expected state/train.json)")
        start, losses = _load_state(run_dir / "state", model.network, ema, opt, cfg, dev)
    net = model.network
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    amp = autocast_dtype(dev)
    is_main = rank == 0
    if run_dir is not None and is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    local = batch_size // world
    step = start
    model.network.train()
    try:
        for step in range(start, steps):
            batch = td.batch(seed, step, batch_size)
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, 3]).generate_state(1)[0]))
            noise = model.draw_training_noise(batch["images"].shape, gen)
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
            losses.append(value)
            done = step + 1
            if run_dir is not None and is_main:
                _log(run_dir / "log.csv", done, value, cfg.lr_at(step), time.perf_counter() - t0)
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < steps:
                    _checkpoint(run_dir, model, ema, opt, cfg, done, losses, data_card, command)
                if cfg.sample_every and done % cfg.sample_every == 0:
                    _sample_grid(model, ema, run_dir / "samples" / f"step_{done:07d}.png", seed)
            elapsed = time.perf_counter() - t0
            yield Progress(step=done, total=steps, message="train",
                           values={"loss": value, "lr": cfg.lr_at(step), "it/s": (done - start) / max(elapsed, 1e-9)})
    except GeneratorExit:
        # cancelled (napari) or interrupted (Ctrl-C in the CLI): keep what was learnt
        # len(losses) counts finished steps (a run closed after its first step is worth keeping too)
        if run_dir is not None and is_main and len(losses) > start:
            _checkpoint(run_dir, model, ema, opt, cfg, len(losses), losses, data_card, command)
        raise
    seconds = time.perf_counter() - t0
    model.network.load_state_dict(ema.state_dict())
    model.network.eval()
    model.config.training = {
        "steps": steps, "batch_size": batch_size, "learning_rate": lr, "seed": seed, "preset": preset,
        "processes": world, "device": str(dev), "seconds_this_session": round(seconds, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 5) if losses else None,
        "training_images": len(td), "sources": td.sources[:20], "data_card": data_card or "", "command": command or "",
    }
    if run_dir is not None and is_main:
        _checkpoint(run_dir, model, ema, opt, cfg, steps, losses, data_card, command)
    if world > 1:
        torch.distributed.barrier()
    return TrainResult(model=model, run_dir=run_dir, losses=losses, seconds=seconds)


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


def _init_distributed(device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dev = resolve_device(device)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _process_device(device, rank: int, world: int) -> torch.device:
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    return dev


def _log(path: Path, step: int, loss: float, lr: float, seconds: float) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["step", "loss", "lr", "seconds"])
        w.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{seconds:.2f}"])


def _checkpoint(run_dir: Path, model: DiffusionModel, ema, opt, cfg: TrainConfig, step: int,
                losses: list[float], data_card: str | None, command: str | None) -> None:
    """Write RUN/model (EMA) and RUN/state atomically."""
    from safetensors.torch import save_file

    from medidiff.io.atomic import atomic_dir

    card = default_model_card(model)
    if data_card:
        card += f"\nTraining data card: {data_card}\n"
    if command:
        card += f"\nCommand:\n\n    {command}\n"
    model.save(run_dir / "model", overwrite=True, model_card=card, state_dict=ema.state_dict())
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt_state = opt.state_dict()
    for pid, st in opt_state["state"].items():
        for name, val in st.items():
            tensors[f"opt.{pid}.{name}"] = torch.as_tensor(val).detach().cpu().contiguous()
    meta = {
        "step": step, "losses": losses, "config": cfg.__dict__,
        "param_groups": [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in opt_state["param_groups"]],
    }
    with atomic_dir(run_dir / "state", overwrite=True) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "train.json").write_text(json.dumps(meta))


def _load_state(state_dir: Path, net, ema, opt, cfg: TrainConfig, dev) -> tuple[int, list[float]]:
    from safetensors.torch import load_file

    meta = json.loads((state_dir / "train.json").read_text())
    saved = meta["config"]
    for key in ("batch_size", "seed"):
        if saved.get(key) != getattr(cfg, key):
            raise MedidiffError(f"{state_dir}: the run used {key}={saved.get(key)}, not {getattr(cfg, key)}; resume with the same settings")
    tensors = load_file(str(state_dir / "state.safetensors"))
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v.to(dev) if name != "step" else v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), list(meta["losses"])


def _sample_grid(model: DiffusionModel, ema, path: Path, seed: int, n: int = 4) -> None:
    """Save a PNG grid of ``n`` EMA samples (middle slice for 3D)."""
    from medidiff.core.sampling import generate_batch
    from medidiff.reporting.figures import save_grid

    live = {k: v.clone() for k, v in model.network.state_dict().items()}
    model.network.load_state_dict(ema.state_dict())
    model.network.eval()
    try:
        labels = torch.arange(n) % model.config.num_classes if model.config.num_classes else None
        x = run_to_end(generate_batch(model, list(range(n)), steps=10, class_labels=labels,
                                      masks=None))
    finally:
        model.network.load_state_dict(live)
        model.network.train()
    imgs = x[:, 0].cpu().numpy()
    if imgs.ndim == 4:
        imgs = imgs[:, imgs.shape[1] // 2]
    save_grid([imgs[i] for i in range(len(imgs))], path, titles=[f"sample {i}" for i in range(len(imgs))])
