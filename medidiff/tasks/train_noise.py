"""The randomness of a training step that ``train --noise`` and ``--timestep-sampling`` choose.

Structured training noise (``--noise simplex|coarse``)
------------------------------------------------------
A DDPM is trained on ``x_t = alpha(t) x0 + sigma(t) eps`` to predict ``eps``. Nothing in that
regression needs ``eps`` to be white: minimising ``E || eps_theta(x_t, t) - eps ||^2`` over all
functions gives ``eps_theta(x_t, t) = E[eps | x_t]`` for *any* noise distribution, and since
``x0 = (x_t - sigma eps) / alpha`` is linear in ``eps``,

    x0_hat(x_t) = (x_t - sigma(t) eps_theta(x_t, t)) / alpha(t) = E[x0 | x_t]

exactly: the one-step (Tweedie-form) reconstruction is the posterior mean of the healthy image
*under the forward process the model was trained with*. With ``eps`` drawn as AnoDDPM's
multi-octave simplex noise (:func:`medidiff.core.simplex.fractal_noise`, zero mean, unit
variance) or as coarse noise (white Gaussian at 1/``COARSE_FACTOR`` of the resolution, upsampled
bilinearly and rescaled to unit variance, as in the coarse-noise denoising autoencoder of
Kascenas et al. 2022), the noise has most of its energy at low spatial frequencies, so it hides
a whole lesion-sized blob rather than single pixels. The network must then rebuild the blob
from the surrounding anatomy, and what it cannot explain as healthy comes back changed: that is
the anomaly map of ``medidiff anomaly --method simplex``, which noises the scan with the same
simplex noise. Feeding such a model white noise (``--method ddpm``) is the mirror-image shift.

Such a model is **not** a Gaussian denoising prior. Tweedie's formula
``E[x0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha`` holds for isotropic Gaussian noise;
for Gaussian noise of covariance ``Sigma`` it reads ``(x_t + sigma^2 Sigma grad log p_t) / alpha``,
and simplex noise is not even Gaussian. The network has only seen ``x_t`` whose noise has the
simplex (or coarse) spectrum; a noisy scan's white noise has far more energy at high
frequencies, which the network never learnt to remove, so ``denoise`` would return artefacts.
``denoise`` therefore refuses a model whose ``config.training["noise"]`` is not ``white``
(:func:`medidiff.tasks.denoise_checks.check_white_noise`); sampling (``generate``) likewise
starts from white noise at ``t = T`` and is only meaningful for white-noise models.

Training noise levels (``--timestep-sampling``)
-----------------------------------------------
``uniform`` draws DDPM times uniformly in ``[0, T)`` (the default; what generation needs).
Denoising a scan starts at the time whose noise-to-signal ratio matches its noise, which for
real scans is the low-noise end, so ``low-noise`` draws half of each batch uniformly and half
uniformly from the lowest ``LOW_FRACTION`` of the times (every time keeps a non-zero weight, so
generation still works). ``log-normal`` draws the noise-to-signal ratio ``s = sigma/alpha`` as
EDM does, ``log s ~ N(P_MEAN, P_STD^2)``, mapped to the nearest DDPM time (clipped to the
schedule). ``benchmarks/recipe.py`` measures them. All draws come from the step's generator, so
they stay pure functions of ``(seed, step)``.
"""

from __future__ import annotations

import numpy as np
import torch

from medidiff.choices import TimestepSampling, TrainingNoise
from medidiff.core.simplex import fractal_noise

__all__ = ["COARSE_FACTOR", "LOW_FRACTION", "P_MEAN", "P_STD", "coarse_noise", "structured_eps",
           "training_timesteps"]

COARSE_FACTOR = 8  # coarse noise is drawn at 1/8 of the resolution (at least 2 samples per axis)
LOW_FRACTION = 0.3  # low-noise sampling: half the batch from the lowest 30% of times
P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal noise levels (Karras et al. 2022)


def coarse_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Unit-variance coarse noise of ``shape`` ``(B, C, *spatial)``: white at 1/8 size, upsampled bilinearly."""
    b, c, *spatial = shape
    low = [max(2, -(-int(n) // COARSE_FACTOR)) for n in spatial]
    z = torch.randn((b, c, *low), generator=generator)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    up = torch.nn.functional.interpolate(z, size=tuple(spatial), mode=mode, align_corners=False)
    dims = tuple(range(2, up.ndim))
    up = up - up.mean(dim=dims, keepdim=True)
    return up / up.std(dim=dims, keepdim=True).clamp_min(1e-6)


def structured_eps(kind: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Training noise ``eps`` of ``shape`` for ``kind`` (white, simplex or coarse), from ``generator``."""
    kind = TrainingNoise.parse(kind, "training noise")
    if kind == TrainingNoise.WHITE:
        return torch.randn(shape, generator=generator)
    if kind == TrainingNoise.COARSE:
        return coarse_noise(shape, generator)
    b, c, *spatial = shape
    seeds = torch.randint(0, 2**31 - 1, (b, c), generator=generator).tolist()
    out = np.stack([np.stack([fractal_noise(spatial, s) for s in row]) for row in seeds])
    return torch.from_numpy(out)


def training_timesteps(kind: str, schedule, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` training times of ``schedule`` drawn the ``kind`` way (see the module docstring)."""
    kind = TimestepSampling.parse(kind, "timestep sampling")
    if kind == TimestepSampling.UNIFORM or schedule.kind != "ddpm":
        return schedule.sample_training_timesteps(n, generator=generator)
    T = schedule.T
    if kind == TimestepSampling.LOW_NOISE:
        full = torch.randint(0, T, (n,), generator=generator)
        low = torch.randint(0, max(1, int(LOW_FRACTION * T)), (n,), generator=generator)
        pick = torch.rand((n,), generator=generator) < 0.5
        return torch.where(pick, low, full)
    log_s = P_MEAN + P_STD * torch.randn((n,), generator=generator, dtype=torch.float64)
    ratios = torch.sqrt((1.0 - schedule.alphas_cumprod) / schedule.alphas_cumprod)
    idx = torch.searchsorted(ratios, torch.exp(log_s))
    return idx.clamp(0, T - 1).long()
