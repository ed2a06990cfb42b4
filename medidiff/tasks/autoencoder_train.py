"""Train the autoencoder of a latent model: ``train_autoencoder`` and its generator twin.

Loss (as in MONAI's latent-diffusion tutorials, minus the parts that need downloaded weights)::

    L = |x - D(z)|_1 + kl_weight * KL(N(mu, sigma) || N(0, 1)),   z = mu + sigma * eps

The L1 term makes the reconstruction sharp where L2 would blur; the KL term (weight ~1e-6,
"barely regularised" as in Rombach et al.) keeps the latent space smooth and bounded so a
diffusion model can learn it, without pulling latents to zero. No perceptual loss (LPIPS would
need downloaded network weights).

Optional patch-adversarial term (``adversarial_weight > 0``, from step ``adversarial_start``), the
least-squares GAN of MONAI's tutorials: a MONAI ``PatchDiscriminator`` C (the critic) scores every
receptive-field patch as real (1) or reconstructed (0), and with r = Dec(z) the reconstruction it is
trained on

    L_C = 1/2 [ mean (C(x) - 1)^2 + mean C(r)^2 ]      (r detached)

while the autoencoder gets ``adversarial_weight * mean (C(r) - 1)^2`` added to its loss: L1 alone
pays for the mean of what a blurred latent leaves uncertain (a blur); the adversarial term pays for
looking unlike a real patch, i.e. for missing texture. C is trained alongside, from its own seeded
initialisation, and is not saved (the model folder is unchanged). Off by default: at CPU budgets it
did not pay (``benchmarks/README.md``, "Generation recipe at equal compute").

Batches are :class:`medidiff.core.data.TrainingData` batches (random crops of ``image_size``,
flips, small affine, intensity jitter), a pure function of ``(seed, step)``; the
reparameterisation noise comes from a generator seeded the same way, so the same seed gives
the same weights on the same device. ``minutes`` bounds the wall time: training stops at the
first step boundary past it, and the autoencoder records how many steps it got.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medidiff.core.autoencoder import AE_PRESETS, Autoencoder
from medidiff.core.data import TrainingData, prepare_training_data
from medidiff.core.progress import Progress, plain_twin
from medidiff.errors import MedidiffError
from medidiff.io import Scan
from medidiff.tasks.train_config import default_warmup, warmup_cosine_lr


# constant: Adam at ``lr`` throughout; cosine: warm-up then cosine decay to 5% (the prior's schedule)
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class AutoencoderTrainConfig:
    """Settings of an autoencoder run (``image_size``: training crop in pixels, array order)."""

    dims: int = 2
    preset: str = "tiny"
    image_size: int | tuple[int, ...] = 64
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    lr_schedule: str = "constant"
    kl_weight: float = 1e-6
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    seed: int = 0
    device: str = "auto"
    minutes: float | None = None
    slice_axis: int | None = None
    ct_window: str | None = None
    modality: str | None = None
    augment: bool = True

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.image_size,) * self.dims if isinstance(self.image_size, int) else tuple(int(s) for s in self.image_size)


@dataclass
class AutoencoderResult:
    """The trained autoencoder, where it was written, L1 loss per step and the wall time."""

    autoencoder: Autoencoder
    out: Path | None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def check_autoencoder_config(cfg: AutoencoderTrainConfig) -> None:
    """One-line ``MedidiffError`` for a setting that cannot work (before any data is read)."""
    if cfg.dims not in (2, 3):
        raise MedidiffError(f"dims {cfg.dims}: choose 2 or 3")
    if cfg.preset not in AE_PRESETS:
        raise MedidiffError(f"autoencoder preset {cfg.preset!r}: choose one of {', '.join(AE_PRESETS)}")
    factor = 2 ** (len(AE_PRESETS[cfg.preset]["channels"]) - 1)
    sizes = cfg.sizes
    if len(sizes) != cfg.dims or any(s < 1 or s % factor for s in sizes):
        raise MedidiffError(f"image size {cfg.image_size}: give one size or {cfg.dims}, each a positive multiple of "
                            f"{factor} (the autoencoder downsamples {factor}x per axis)")
    for name in ("steps", "batch_size"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MedidiffError(f"{name} must be an integer >= 1, got {value!r}")
    for name in ("lr", "kl_weight", "adversarial_weight"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise MedidiffError(f"{name} must be a finite number >= 0, got {value!r}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise MedidiffError(f"lr_schedule {cfg.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    start = cfg.adversarial_start
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise MedidiffError(f"adversarial_start must be an integer >= 0, got {cfg.adversarial_start!r}")
    if cfg.minutes is not None and not (isinstance(cfg.minutes, (int, float)) and cfg.minutes > 0):
        raise MedidiffError(f"minutes must be a number > 0 (or None), got {cfg.minutes!r}")


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(mu, sigma^2) from N(0, 1), summed over latent voxels, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2).clamp_min(1e-12)) - 1)
    return kl.flatten(1).sum(1).mean()


def train_autoencoder_steps(
    data: Sequence[str | Path | Scan] | str | Path | Scan | TrainingData,
    out: str | Path | None = None,
    config: AutoencoderTrainConfig | None = None,
    *,
    overwrite: bool = False,
    **options: Any,
) -> Generator[Progress, None, AutoencoderResult]:
    """Train an autoencoder on scans, yielding a ``Progress`` per step (L1, KL); save it to ``out``.

    ``config`` holds the settings; any field may be given as a keyword too. ``out=None`` keeps the
    autoencoder in memory. The first event (step 0) comes before any data is read. Closing the
    generator (cancel, Ctrl-C) saves what was learnt when ``out`` is given.
    """
    from medidiff.core.devices import resolve_device
    from medidiff.io.atomic import check_output_path
    from medidiff.tasks.train import check_out_outside_data

    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(AutoencoderTrainConfig)})
    if unknown:
        raise MedidiffError(f"train_autoencoder: unknown option(s) {', '.join(unknown)}; the settings are "
                            "AutoencoderTrainConfig's fields")
    cfg = dataclasses.replace(config or AutoencoderTrainConfig(), **options)
    check_autoencoder_config(cfg)
    out_path = Path(out).expanduser() if out is not None else None
    items = [data] if isinstance(data, (str, Path, Scan)) else ([] if isinstance(data, TrainingData) else list(data))
    if out_path is not None:
        check_out_outside_data(out_path, items)
        check_output_path(out_path, overwrite=overwrite)
    dev = resolve_device(cfg.device)
    yield Progress(step=0, total=cfg.steps, message="loading training data")
    td = data if isinstance(data, TrainingData) else prepare_training_data(
        data, spatial_dims=cfg.dims, image_size=cfg.sizes, slice_axis=cfg.slice_axis, ct_window=cfg.ct_window,
        augment=cfg.augment, modality=cfg.modality)
    if td.spatial_dims != cfg.dims:
        raise MedidiffError(f"the training data is {td.spatial_dims}D but dims is {cfg.dims}")
    ae = Autoencoder.create(cfg.dims, cfg.sizes, preset=cfg.preset, normaliser=td.normaliser, spacing=td.spacing,
                            orientation=td.orientation, modality=td.modality, slice_axis=td.slice_axis, seed=cfg.seed)
    ae.network.to(dev).train()
    opt = torch.optim.Adam(ae.network.parameters(), lr=cfg.lr)
    critic = _Critic.create(cfg, dev) if cfg.adversarial_weight > 0 else None
    losses: list[float] = []
    t0 = time.perf_counter()

    def finish(done: int) -> None:
        ae.network.eval()
        ae.config.training = {
            "steps": cfg.steps, "steps_done": done, "batch_size": cfg.batch_size, "learning_rate": cfg.lr,
            "lr_schedule": cfg.lr_schedule, "kl_weight": cfg.kl_weight, "adversarial_weight": cfg.adversarial_weight,
            "adversarial_start": cfg.adversarial_start if cfg.adversarial_weight > 0 else None,
            "seed": cfg.seed, "device": str(dev), "training_images": len(td),
            "minutes": cfg.minutes, "seconds": round(time.perf_counter() - t0, 1),
            "final_l1": round(float(np.mean(losses[-20:])), 5) if losses else None,
            "sources": [Path(s).name for s in td.sources[:20]],
        }
        if out_path is not None:
            ae.save(out_path, overwrite=overwrite)

    try:
        for step in range(cfg.steps):
            if cfg.lr_schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = warmup_cosine_lr(step, cfg.steps, cfg.lr, default_warmup(cfg.steps))
            values = _step(ae, opt, td, cfg, step, dev, critic)
            losses.append(values["l1"])
            elapsed = time.perf_counter() - t0
            yield Progress(step=step + 1, total=cfg.steps, message="train autoencoder",
                           values={**values, "lr": opt.param_groups[0]["lr"], "it/s": (step + 1) / max(elapsed, 1e-9)})
            if cfg.minutes is not None and elapsed >= 60 * cfg.minutes:
                break
    except GeneratorExit:
        if out_path is not None and losses:
            finish(len(losses))
        raise
    finish(len(losses))
    return AutoencoderResult(autoencoder=ae, out=out_path, losses=losses, seconds=time.perf_counter() - t0)


@dataclass
class _Critic:
    """The patch discriminator of the adversarial term, its optimiser and the least-squares loss."""

    network: torch.nn.Module
    opt: torch.optim.Optimizer
    loss: Any

    @classmethod
    def create(cls, cfg: AutoencoderTrainConfig, dev: torch.device) -> _Critic:
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        with torch.random.fork_rng(devices=[]):  # its own seeded start; the global RNG is left alone
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, 11]).generate_state(1)[0]))
            net = PatchDiscriminator(spatial_dims=cfg.dims, channels=32, in_channels=1, out_channels=1,
                                     num_layers_d=3).to(dev).train()
        return cls(net, torch.optim.Adam(net.parameters(), lr=cfg.lr), PatchAdversarialLoss(criterion="least_squares"))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)[-1]  # the last output is the patch logits (the others are features)


def _step(ae: Autoencoder, opt: torch.optim.Optimizer, td: TrainingData, cfg: AutoencoderTrainConfig, step: int,
          dev: torch.device, critic: _Critic | None = None) -> dict[str, float]:
    """One optimiser step on the (seed, step) batch; returns the losses (l1, kl, and gen / disc when adversarial)."""
    batch = td.batch(cfg.seed, step, cfg.batch_size)
    x = torch.from_numpy(batch["images"]).to(dev)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, step, 7]).generate_state(1)[0]))
    net = ae.network
    z_mu, z_sigma = net.encode(x)
    eps = torch.randn(z_mu.shape, generator=gen).to(dev)
    rec = net.decode(z_mu + z_sigma * eps)
    l1 = torch.nn.functional.l1_loss(rec.float(), x.float())
    kl = kl_loss(z_mu.float(), z_sigma.float())
    loss = l1 + cfg.kl_weight * kl
    adversarial = critic is not None and step >= cfg.adversarial_start
    if adversarial:
        critic.network.requires_grad_(False)  # the autoencoder's term must not train the critic
        g_adv = critic.loss(critic.logits(rec.float()), target_is_real=True, for_discriminator=False)
        critic.network.requires_grad_(True)
        loss = loss + cfg.adversarial_weight * g_adv
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    out = {"l1": float(l1.detach()), "kl": float(kl.detach())}
    if adversarial:
        fake = critic.loss(critic.logits(rec.detach().float()), target_is_real=False, for_discriminator=True)
        real = critic.loss(critic.logits(x.float()), target_is_real=True, for_discriminator=True)
        d_loss = 0.5 * (fake + real)
        critic.opt.zero_grad(set_to_none=True)
        d_loss.backward()
        critic.opt.step()
        out.update({"gen": float(g_adv.detach()), "disc": float(d_loss.detach())})
    return out


train_autoencoder = plain_twin(train_autoencoder_steps, "train autoencoder")
