"""Every named choice a user can make, in one torch-free module.

Tasks, the command line and the napari widgets all take their lists of methods, noise models,
samplers, schedules and directions from here, so they cannot drift apart, and the CLI and the
plugin can build their menus without importing torch. Members are ``str`` subclasses: they
compare equal to their plain string values, so ``"tweedie" == DenoiseMethod.TWEEDIE``.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A string enum whose ``str()`` is its value (Python 3.10 has no ``StrEnum``)."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The plain string values, in declaration order."""
        return tuple(member.value for member in cls)

    @classmethod
    def parse(cls, value: str, what: str | None = None) -> "Choice":
        """The member for ``value``; a ``ValueError`` naming the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            label = what or cls.__name__
            raise ValueError(f"unknown {label} {value!r}; choose one of {', '.join(cls.values())}") from None


class DenoiseMethod(Choice):
    TWEEDIE = "tweedie"
    DDIM = "ddim"
    POSTERIOR = "posterior"


class NoiseModel(Choice):
    GAUSSIAN = "gaussian"
    RICIAN = "rician"
    POISSON_GAUSSIAN = "poisson-gaussian"


# a noise model, or ``auto`` to pick one from the scan's modality: built from NoiseModel (enums
# with members cannot be subclassed), so a new noise model appears in both at once
NoiseChoice = Choice("NoiseChoice", [("AUTO", "auto")] + [(m.name, m.value) for m in NoiseModel],
                     module=__name__, qualname="NoiseChoice")
NoiseChoice.__doc__ = "A noise model, or ``auto`` to pick one from the scan's modality."


class AnomalyMethod(Choice):
    DDPM = "ddpm"
    SIMPLEX = "simplex"
    PATCHED = "patched"


class TrainingNoise(Choice):
    """The noise a model is trained to remove (``medidiff train --noise``)."""

    WHITE = "white"
    SIMPLEX = "simplex"
    COARSE = "coarse"


class TimestepSampling(Choice):
    """How training noise levels are drawn (``medidiff train --timestep-sampling``)."""

    UNIFORM = "uniform"
    LOW_NOISE = "low-noise"
    LOG_NORMAL = "log-normal"


class AnomalyScore(Choice):
    """What an anomaly map scores (``medidiff anomaly --score``; maths in ``medidiff.tasks.anomaly.scores``)."""

    RESIDUAL = "residual"
    ZSCORE = "zscore"
    SSIM = "ssim"


class FdrMethod(Choice):
    """How ``--fdr`` masks compare a scan with the calibration (maths in ``medidiff.tasks.anomaly.fdr``)."""

    SCAN_ADAPTIVE = "scan-adaptive"
    PLAIN = "plain"


class Reconstruction(Choice):
    TWEEDIE = "tweedie"
    DDIM = "ddim"


class Direction(Choice):
    BOTH = "both"
    BRIGHT = "bright"
    DARK = "dark"


class ScheduleKind(Choice):
    DDPM = "ddpm"
    RFLOW = "rflow"


class Sampler(Choice):
    DDPM = "ddpm"
    DDIM = "ddim"
    DPM_SOLVER = "dpm++2m"
    EULER = "euler"


# which samplers fit which schedule, and the default for each
SAMPLERS_FOR: dict[str, tuple[str, ...]] = {
    ScheduleKind.DDPM.value: (Sampler.DDPM.value, Sampler.DDIM.value, Sampler.DPM_SOLVER.value),
    ScheduleKind.RFLOW.value: (Sampler.EULER.value,),
}
PREDICTIONS_FOR: dict[str, tuple[str, ...]] = {
    ScheduleKind.DDPM.value: ("epsilon", "v_prediction"),
    ScheduleKind.RFLOW.value: ("flow",),
}
