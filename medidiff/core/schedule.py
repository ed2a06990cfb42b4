"""Noise schedules and parameterisations, in one form every sampler can use.

A noisy image at time ``t`` is ``x_t = alpha(t) * x0 + sigma(t) * eps``:

* ``ddpm``: MONAI's ``DDPMScheduler`` betas; ``alpha = sqrt(abar_t)``, ``sigma = sqrt(1 - abar_t)``,
  integer ``t`` in [0, T). The network predicts ``epsilon`` or ``v_prediction``.
* ``rflow``: MONAI's ``RFlowScheduler`` (rectified flow); ``s = t / T``, ``alpha = 1 - s``,
  ``sigma = s``, real ``t`` in [0, T]. The network predicts the velocity ``v = x0 - eps``
  (MONAI's convention, so ``RFlowScheduler.step`` works with the same network).

``t = -1`` stands for "clean" (alpha 1, sigma 0) so samplers can finish exactly at the data.
Training noise comes from MONAI's own ``add_noise``; samplers only need ``alpha_sigma`` and
``to_x0_eps`` (see ``medidiff/sampling.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from medidiff.choices import PREDICTIONS_FOR as PREDICTIONS, ScheduleKind

KINDS = ScheduleKind.values()


@dataclass(frozen=True)
class ScheduleConfig:
    """What defines a schedule; stored in a model's config.json."""

    kind: str = "ddpm"
    prediction: str = "epsilon"
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear_beta"
    beta_start: float = 1e-4
    beta_end: float = 2e-2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown schedule {self.kind!r}; choose one of {KINDS}")
        if self.prediction not in PREDICTIONS[self.kind]:
            raise ValueError(f"schedule {self.kind!r} supports predictions {PREDICTIONS[self.kind]}, not {self.prediction!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class NoiseSchedule:
    """Forward process, training targets and the (alpha, sigma) view used by samplers."""

    def __init__(self, config: ScheduleConfig) -> None:
        from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

        self.config = config
        self.T = config.num_train_timesteps
        if config.kind == "ddpm":
            self.monai = DDPMScheduler(
                num_train_timesteps=self.T,
                schedule=config.beta_schedule,
                prediction_type=config.prediction,
                beta_start=config.beta_start,
                beta_end=config.beta_end,
            )
            self.alphas_cumprod = self.monai.alphas_cumprod.to(torch.float64)
        else:
            self.monai = RFlowScheduler(num_train_timesteps=self.T, use_discrete_timesteps=False)
            self.alphas_cumprod = None

    @property
    def kind(self) -> str:
        return self.config.kind

    # -- forward process and training ---------------------------------------------------
    def sample_training_timesteps(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform training times (long for ddpm, float for rflow), drawn on the CPU for reproducibility."""
        if self.kind == "ddpm":
            return torch.randint(0, self.T, (n,), generator=generator)
        return torch.rand((n,), generator=generator) * self.T

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t from clean x0 and noise eps (MONAI's scheduler does the work)."""
        if self.kind == "ddpm":
            return self.monai.add_noise(original_samples=x0, noise=eps, timesteps=t.long())
        return self.monai.add_noise(original_samples=x0, noise=eps, timesteps=t.float())

    def training_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output at (x_t, t)."""
        if self.config.prediction == "epsilon":
            return eps
        if self.config.prediction == "v_prediction":
            return self.monai.get_velocity(sample=x0, noise=eps, timesteps=t.long())
        return x0 - eps

    # -- the sampler's view ---------------------------------------------------------------
    def alpha_sigma(self, t: float | torch.Tensor) -> tuple[float, float]:
        """(alpha, sigma) at time ``t`` as Python floats (float64 precision); t=-1 is clean."""
        t = float(t)
        if t < 0:
            return 1.0, 0.0
        if self.kind == "ddpm":
            abar = float(_interp(self.alphas_cumprod, t))
            return float(np.sqrt(abar)), float(np.sqrt(1.0 - abar))
        s = min(max(t / self.T, 0.0), 1.0)
        return 1.0 - s, s

    def to_x0_eps(self, output: torch.Tensor, x_t: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn a network output at (x_t, t) into predicted clean image and noise."""
        alpha, sigma = self.alpha_sigma(t)
        pred = self.config.prediction
        if pred == "epsilon":
            eps = output
            x0 = (x_t - sigma * eps) / alpha
        elif pred == "v_prediction":
            x0 = alpha * x_t - sigma * output
            eps = sigma * x_t + alpha * output
        else:  # flow: v = x0 - eps, x_t = (1-s) x0 + s eps
            x0 = x_t + sigma * output
            eps = x_t - alpha * output
        return x0, eps

    def noise_to_signal(self, t: float) -> float:
        """sigma/alpha at t: the std of Gaussian noise, relative to the signal, that x_t carries."""
        alpha, sigma = self.alpha_sigma(t)
        return sigma / alpha if alpha > 0 else float("inf")

    def timestep_for_noise(self, noise_std: float) -> float:
        """The time whose x_t / alpha equals a clean image plus Gaussian noise of ``noise_std``.

        A noisy scan ``y = x0 + noise_std * n`` is, scaled by ``alpha(t)``, exactly a sample
        of the forward process at this ``t``: what denoising starts from.
        """
        if noise_std <= 0:
            return -1.0
        if self.kind == "rflow":
            # sigma/alpha = s/(1-s) -> s = r/(1+r)
            return float(noise_std / (1.0 + noise_std) * self.T)
        ratios = torch.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod).numpy()
        if noise_std >= ratios[-1]:
            return float(self.T - 1)
        # ratios increase with t: interpolate t linearly between the integer steps
        return float(np.interp(noise_std, ratios, np.arange(self.T, dtype=np.float64)))

    def timesteps(self, steps: int, t_start: float | None = None) -> list[float]:
        """``steps + 1`` decreasing times from ``t_start`` (default: the noisiest) down to -1 (clean)."""
        if steps < 1:
            raise ValueError("steps must be at least 1")
        start = float(self.T - 1 if self.kind == "ddpm" else self.T) if t_start is None else float(t_start)
        if self.kind == "ddpm":
            # the network was trained at integer times: round all but the (possibly matched) start
            ts = [start] + [float(round(t)) for t in np.linspace(start, 0.0, steps)[1:]]
            ts = [t for i, t in enumerate(ts) if i == 0 or t < ts[i - 1]]
            return ts + [-1.0]
        ts = np.linspace(start, 0.0, steps + 1)
        out = [float(t) for t in ts]
        out[-1] = -1.0
        return out


def _interp(table: torch.Tensor, t: float) -> float:
    """Linear interpolation of a per-integer-timestep table at a real ``t``."""
    lo = int(np.floor(t))
    hi = min(lo + 1, len(table) - 1)
    w = t - lo
    return float(table[lo]) * (1 - w) + float(table[hi]) * w
