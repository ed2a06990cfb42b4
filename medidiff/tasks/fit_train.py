"""The training half of ``--fit``: a diffusion network trained on the *noisy* items themselves.

The items ``y`` (network units, noise already made Gaussian of std ``sigma`` by the noise
domain) are treated as the data: each step takes random crops of ``y`` (flips and 90-degree
rotations, which white noise does not notice), draws an extra noise level ``s`` log-uniformly in
``[S_LOW, S_HIGH] * sigma`` (the low-noise end that denoising uses; see :mod:`medidiff.tasks.fit`
for why these levels), forms the forward-process sample ``x_t = alpha(t) y + sigma(t) eps`` at the
(real-valued) DDPM time with ``sigma(t)/alpha(t) = s`` and regresses the network's epsilon output
on ``eps``. That is ordinary denoising score matching with ``y`` as the clean data, so the network
learns the score of the noisy-data density smoothed by ``s`` -- which is what the consistent
Tweedie estimator in :mod:`medidiff.tasks.fit` needs.

Training stops at ``max_steps`` or when ``minutes`` of wall time have passed, whichever is
first; closing the generator stops it at the next step. Batches, levels and noise are pure
functions of ``(seed, step)`` so that, stopped by ``max_steps``, the same seed gives the same
weights. An EMA of the weights (decay ramped up from 0 as in ``train``) is what is returned.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress

__all__ = ["FitTrainConfig", "FitTrainResult", "S_LOW", "S_HIGH", "fit_network_steps"]

S_LOW, S_HIGH = 0.5, 2.0  # extra training noise, as multiples of the scan's own noise std
WARMUP_STEPS = 20  # linear learning-rate warm-up (short: a fit under contention may get only ~100 steps)


@dataclass(frozen=True)
class FitTrainConfig:
    """Settings of one fit: ``minutes`` (wall clock) and ``max_steps`` bound it; ``crop`` is the patch side."""

    minutes: float = 2.0
    max_steps: int = 100_000
    batch_size: int = 16
    crop: int = 32
    lr: float = 1e-3
    ema_decay: float = 0.995
    seed: int = 0


@dataclass
class FitTrainResult:
    """The EMA network (inside ``model``), steps done, seconds, losses and whether the clock stopped it."""

    model: DiffusionModel
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    stopped_by_clock: bool = False
    times: list[float] = field(default_factory=list)  # wall seconds since the start, at the end of each step


def _rng(seed: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step), int(stream)]))


def _crops(items, crop: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random ``crop x crop`` patches of the ``(N, H, W)`` stack (or a list of 2D items of any
    sizes), randomly flipped and rotated, and the index of the item each came from."""
    count = len(items)
    out = np.empty((n, crop, crop), dtype=np.float32)
    which = np.empty(n, dtype=np.int64)
    for k in range(n):
        i = int(rng.integers(count))
        which[k] = i
        h, w = items[i].shape
        y0, x0 = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        patch = items[i][y0:y0 + crop, x0:x0 + crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1]
        if rng.random() < 0.5:
            patch = patch.T
        out[k] = patch
    return out, which


def level_times(model: DiffusionModel, levels: np.ndarray) -> np.ndarray:
    """Real DDPM times whose noise-to-signal ratio is each of ``levels`` (network units)."""
    sched = model.schedule
    return np.array([sched.timestep_for_noise(float(s)) for s in levels], dtype=np.float64)


def fit_network_steps(model: DiffusionModel, items, sigma_net: float | np.ndarray, cfg: FitTrainConfig,
                      device: torch.device) -> Generator[Progress, None, FitTrainResult]:
    """Train ``model``'s network in place on the noisy ``(N, H, W)`` network-unit ``items``; yields per step.

    ``items`` may also be a list of 2D arrays of different sizes (``train --noisy`` on a folder:
    every side at least ``cfg.crop``). ``sigma_net``: the items' own Gaussian noise std (network
    units), one number or one per item; each crop's extra levels are multiples of its item's.
    The model's weights end as the EMA weights. The caller owns ``model`` (pass a copy of a shared model).
    """
    sched = model.schedule
    net = model.network.to(device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    if isinstance(items, np.ndarray):
        data = np.ascontiguousarray(items, dtype=np.float32)
    else:
        data = [np.ascontiguousarray(a, dtype=np.float32) for a in items]
    sigmas = np.broadcast_to(np.asarray(sigma_net, dtype=np.float64).reshape(-1), (len(data),))
    warm = max(1, min(WARMUP_STEPS, cfg.max_steps // 20))
    losses: list[float] = []
    clock: list[float] = []
    t0 = time.perf_counter()
    deadline = t0 + 60.0 * cfg.minutes
    by_clock = False
    net.train()
    try:
        for step in range(cfg.max_steps):
            if step > 0 and time.perf_counter() >= deadline:
                by_clock = True
                break
            rng = _rng(cfg.seed, step, 1)
            patches, which = _crops(data, cfg.crop, cfg.batch_size, rng)
            y = torch.from_numpy(patches).unsqueeze(1)
            levels = sigmas[which] * np.exp(rng.uniform(np.log(S_LOW), np.log(S_HIGH), cfg.batch_size))
            times = level_times(model, levels)
            ab = np.array([sched.alpha_sigma(t) for t in times], dtype=np.float64)
            gen = torch.Generator().manual_seed(int(_rng(cfg.seed, step, 2).integers(2**62)))
            eps = torch.randn(y.shape, generator=gen)
            alpha = torch.from_numpy(ab[:, 0]).float().view(-1, 1, 1, 1)
            sig = torch.from_numpy(ab[:, 1]).float().view(-1, 1, 1, 1)
            x_t = (alpha * y + sig * eps).to(device)
            tt = torch.from_numpy(times).float().to(device)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * min(1.0, (step + 1) / warm)
            out = net(x_t, timesteps=tt)
            loss = torch.nn.functional.mse_loss(out.float(), eps.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                d = min(cfg.ema_decay, (1 + step) / (10 + step))
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.mul_(d).add_(p.detach(), alpha=1 - d)
                for be, b in zip(ema.buffers(), net.buffers()):
                    be.copy_(b)
            losses.append(float(loss.detach()))
            elapsed = time.perf_counter() - t0
            clock.append(elapsed)
            # per cent of the budget used: of the clock or of the steps, whichever runs out first
            used = max(elapsed / max(60.0 * cfg.minutes, 1e-9), (step + 1) / cfg.max_steps)
            yield Progress(step=min(99, int(100 * used)), total=100, message=f"fit step {step + 1}",
                           values={"loss": losses[-1], "seconds": elapsed})
    finally:
        net.eval()
    net.load_state_dict(ema.state_dict())
    return FitTrainResult(model, len(losses), time.perf_counter() - t0, losses, by_clock, clock)
