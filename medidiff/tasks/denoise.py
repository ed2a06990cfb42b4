"""Denoising with a diffusion prior: a noisy scan *is* a sample of the forward process.

A scan ``y = x + n`` with Gaussian noise of std ``s`` (network units) equals, scaled by
``alpha(t)``, the forward-process sample ``x_t = alpha(t) * x + sigma(t) * eps`` at the time
``t`` where ``sigma(t) / alpha(t) = s`` (``NoiseSchedule.timestep_for_noise``). So the trained
network can take it from there:

``tweedie``    one network call: the posterior mean ``E[x | x_t]`` (Tweedie's formula, which is
               what the network's x0 prediction estimates). Best PSNR for its cost.
``ddim``       deterministic DDIM (Euler for rectified-flow models) from ``t`` in ``steps`` steps:
               sharper, a little lower PSNR.
``posterior``  ``samples`` stochastic runs (DDIM with eta=1, i.e. ancestral DDPM steps) from ``t``,
               each with its own seed; the result is their mean, the uncertainty their per-voxel
               std (scan units). DDPM-schedule models only.

Noise models (``noise=``; ``"auto"`` picks from the modality, see ``medidiff.core.noise``):

``gaussian``          denoised as it is.
``rician``            (MR magnitude) denoise first, then remove the Rician bias. A Gaussian
                      denoiser averages the magnitude, so its output estimates ``E[m]``, which
                      ``rician_bias_correct(method="mean")`` inverts exactly. Correcting first
                      would give the network clipped, non-Gaussian noise (``sqrt(max(m^2-2s^2,0))``
                      is zero over much of the background) that it was not trained to remove.
``poisson-gaussian``  (microscopy) generalised Anscombe transform to unit-variance Gaussian
                      noise, then an affine map ``(z - b) / a`` back to scan units, with ``a, b``
                      the least-squares fit of the transform over this image's own values. The
                      network thus sees an image as close as possible (in mean square) to the
                      scan units its normaliser was fitted on, with *signal-independent* Gaussian
                      noise of std ``1 / a`` -- exactly what the diffusion prior can remove.
                      The denoised image goes back through ``a x + b`` and the exact unbiased
                      inverse (Makitalo & Foi). Denoising in scan units with one sigma would
                      over-smooth dark regions and under-smooth bright ones; the network takes a
                      single time per image, so a per-pixel sigma is not an option.

Layout: a 2D model on a 3D volume works slice by slice along ``model.config.slice_axis`` (axis
0 when unset), ``batch_size`` slices per network call, one ``Progress`` per batch (per batch and
sample for ``posterior``). A 3D model takes the whole volume. Images larger than the training
size go through ``predict``'s gaussian-blended sliding window, so there are no seams.

dtype policy: the output is float32 in the input's own units (an integer input comes back as
float32 values, not rounded); the output keeps the input's shape, spacing, affine, modality and
metadata (plus ``meta["description"]`` naming the method, used as DICOM SeriesDescription).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from medidiff.choices import DenoiseMethod, NoiseChoice
from medidiff.core import noise as noise_lib
from medidiff.errors import InvalidScanError, ModelError
from medidiff.io import Scan
from medidiff.core.progress import Progress, run_to_end

log = logging.getLogger(__name__)

METHODS = DenoiseMethod.values()
NOISE_CHOICES = NoiseChoice.values()

__all__ = ["METHODS", "NOISE_CHOICES", "DenoiseResult", "denoise_steps", "denoise"]


@dataclass(frozen=True)
class DenoiseResult:
    """What :func:`denoise` returns.

    ``scan``: the denoised scan (float32, input geometry). ``sigma``: the Gaussian noise std the
    network removed, in scan units (for Poisson-Gaussian noise: in the stabilised, affinely
    rescaled domain), one value or one per slice. ``timestep``: the matching diffusion time(s)
    (``-1`` = nothing to remove). ``uncertainty``: per-voxel posterior std (``posterior`` only).
    ``noise_model`` and ``reason``: which noise model was used and why. ``gain``: photon gain
    (Poisson-Gaussian only; ``sigma_read`` is then the read noise in scan units).
    """

    scan: Scan
    sigma: float | np.ndarray
    timestep: float | np.ndarray
    uncertainty: Scan | None
    noise_model: str
    reason: str
    gain: float | None = None
    sigma_read: float | None = None


# -- layout: items the network sees --------------------------------------------------------------
class _Layout:
    """Scan array <-> network items ``(N, *spatial)``: slices for a 2D model on a volume."""

    def __init__(self, model, scan: Scan) -> None:
        dims = model.config.spatial_dims
        self.axis: int | None = None
        if dims == 3 and scan.ndim != 3:
            raise InvalidScanError(_source(scan), f"is a 2D image {scan.shape} but the model is 3D; use a 2D model")
        if dims == 2 and scan.ndim == 3:
            axis = model.config.slice_axis if model.config.slice_axis is not None else 0
            self.axis = int(axis) % 3

    def to_items(self, arr: np.ndarray) -> np.ndarray:
        return arr[None] if self.axis is None else np.moveaxis(arr, self.axis, 0)

    def from_items(self, items: np.ndarray) -> np.ndarray:
        return items[0] if self.axis is None else np.moveaxis(items, 0, self.axis)


def _source(scan: Scan) -> str:
    return str(scan.meta.get("source_path") or "scan")


# -- noise ---------------------------------------------------------------------------------------
def _noise_domain(
    items: np.ndarray, scan: Scan, noise: str, sigma: float | None, per_slice: bool, slice_wise: bool
) -> tuple[str, str, noise_lib.NoiseDomain]:
    """Pick the noise model, estimate it (unless ``sigma`` is given) and build its domain."""
    stack = items if slice_wise else scan.array  # a 3D model sees the volume: one estimate
    try:
        domain, reason = noise_lib.noise_domain(items, stack, noise, sigma=sigma, modality=scan.modality,
                                                source_format=scan.meta.get("format"), per_item=per_slice and slice_wise)
    except ValueError as exc:
        raise InvalidScanError(_source(scan), f"cannot estimate its noise: {exc}") from exc
    return domain.model, reason, domain


# -- running the network -------------------------------------------------------------------------
def _batches(times: np.ndarray, batch_size: int) -> list[list[int]]:
    """Consecutive items with the same time, at most ``batch_size`` per batch (the network takes one t)."""
    out: list[list[int]] = []
    for i, t in enumerate(times):
        if out and len(out[-1]) < batch_size and times[out[-1][0]] == t:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _drain(gen: Generator[Progress, None, torch.Tensor]) -> torch.Tensor:
    """Run an inner sampler generator to its result (its steps are not reported separately)."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _sample_generators(seed: int, k: int, idx: list[int]) -> list[torch.Generator]:
    from medidiff.core.sampling import sample_generators, sample_seed

    # sample k of item j gets its own stream: the same whatever batch_size is
    base = sample_seed(seed, k)
    return sample_generators([sample_seed(base, j) for j in idx])


def denoise_steps(
    model,
    scan: Scan,
    *,
    method: str = "tweedie",
    noise: str = "auto",
    sigma: float | None = None,
    strength: float = 1.0,
    steps: int = 5,
    samples: int = 8,
    per_slice: bool = False,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "auto",
) -> Generator[Progress, None, DenoiseResult]:
    """Denoise ``scan`` with a diffusion model; yields ``Progress``, returns a :class:`DenoiseResult`.

    model:      a ``DiffusionModel``, a model folder or a registered model name.
    method:     ``"tweedie"`` (one call), ``"ddim"`` (``steps`` deterministic steps) or
                ``"posterior"`` (``samples`` stochastic runs: mean + per-voxel std).
    noise:      ``"auto"`` (from the modality), ``"gaussian"``, ``"rician"`` or ``"poisson-gaussian"``.
    sigma:      noise std in scan units (default: estimated; for Poisson-Gaussian the read noise,
                the gain is still estimated).
    strength:   multiplies the (network-units) noise level: > 1 smooths more, < 1 less.
    per_slice:  estimate sigma per slice (2D model on a volume; not for Poisson-Gaussian).
    batch_size: slices per network call. ``seed``: seeds ``posterior`` (same seed, same result).
    device:     ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    """
    from medidiff.core.devices import release_memory, resolve_device
    from medidiff.model_store.registry import resolve_model
    from medidiff.core.sampling import predict, sample

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if noise not in NOISE_CHOICES:
        raise ValueError(f"unknown noise model {noise!r}; choose one of {NOISE_CHOICES}")
    if not strength > 0:
        raise ValueError(f"strength must be > 0, got {strength}")
    if sigma is not None and not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    if steps < 1 or samples < 2 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1 and samples >= 2; got steps={steps}, "
                         f"samples={samples}, batch_size={batch_size}")
    if not isinstance(scan, Scan):
        raise TypeError(f"denoise expects a Scan, got {type(scan).__name__}")
    dev = resolve_device(device)
    model = resolve_model(model, device=str(dev))
    kind = model.schedule.kind
    if method == "posterior" and kind != "ddpm":
        raise ModelError(f"{model.path or 'model'}: posterior sampling needs a DDPM-schedule model; "
                         f"this one is {kind!r} (use method 'tweedie' or 'ddim')")

    layout = _Layout(model, scan)
    items = layout.to_items(scan.array)
    slice_wise = model.config.spatial_dims == 2
    noise_model, reason, domain = _noise_domain(items, scan, noise, sigma, per_slice, slice_wise)
    log.info("denoise: noise model %s (%s)", noise_model, reason)

    norm, sched = model.normaliser, model.schedule
    work = domain.to_gaussian(items)
    s_net = np.asarray(norm.scale_sigma(domain.sigma), dtype=np.float64) * strength
    times = np.array([sched.timestep_for_noise(float(s)) for s in s_net])
    if np.any(times >= sched.T - 1):
        log.warning("denoise: the noise (%.3g network units) is beyond the model's noisiest time; "
                    "the result will look more like a sample than the scan", float(s_net.max()))
    batches = _batches(times, batch_size)
    k_samples = samples if method == "posterior" else 1
    total = len(batches) * k_samples
    sampler = "euler" if kind == "rflow" else "ddim"

    out = np.empty(items.shape, dtype=np.float32)
    unc = np.empty(items.shape, dtype=np.float32) if method == "posterior" else None
    done = 0
    try:
        for idx in batches:
            t = float(times[idx[0]])
            y = torch.from_numpy(norm.forward(work[idx])).unsqueeze(1).to(model.device)
            alpha = sched.alpha_sigma(t)[0]
            x_t = alpha * y
            mean_net = torch.zeros_like(y)
            mean_out = np.zeros((len(idx), *items.shape[1:]), dtype=np.float64)
            sq_out = np.zeros_like(mean_out)
            for k in range(k_samples):
                if t < 0:  # nothing to remove
                    x0 = y
                elif method == "tweedie":
                    x0, _ = predict(model, x_t, t)
                elif method == "ddim":
                    x0 = _drain(sample(model, x_t, sampler=sampler, steps=steps, t_start=t))
                else:
                    x0 = _drain(sample(model, x_t, sampler="ddim", eta=1.0, steps=steps, t_start=t,
                                       generators=_sample_generators(seed, k, idx)))
                mean_net += (x0 - mean_net) / (k + 1)
                if unc is not None:  # spread of the samples in scan units, after the inverse transform
                    arr = norm.inverse(x0[:, 0].float().cpu().numpy())
                    final = np.stack([domain.from_gaussian(a, j) for a, j in zip(arr, idx)]).astype(np.float64)
                    delta = final - mean_out
                    mean_out += delta / (k + 1)
                    sq_out += delta * (final - mean_out)
                done += 1
                result = norm.inverse(mean_net[:, 0].float().cpu().numpy())
                result = np.stack([domain.from_gaussian(a, j) for a, j in zip(result, idx)])
                preview = result[len(idx) // 2]
                if preview.ndim == 3:
                    preview = preview[preview.shape[0] // 2]
                yield Progress(step=done, total=total, message=f"{method} t={t:.0f}",
                               preview=preview.astype(np.float32),
                               values={"sigma": float(domain.sigma[idx[0]]), "t": t})
            out[idx] = result
            if unc is not None:
                unc[idx] = np.sqrt(sq_out / (k_samples - 1))
    finally:
        release_memory(model.device)

    meta = dict(scan.meta)
    meta["description"] = f"medidiff denoise ({method}, {noise_model})"
    out_scan = scan.with_array(layout.from_items(out), meta=meta)
    unc_scan = None
    if unc is not None:
        unc_meta = dict(scan.meta)
        unc_meta["description"] = f"medidiff denoise uncertainty (posterior std, {samples} samples)"
        unc_scan = scan.with_array(layout.from_items(unc), meta=unc_meta)
    per = per_slice and slice_wise and items.shape[0] > 1
    sigma_out: float | np.ndarray = domain.sigma.copy() if per else float(domain.sigma[0])
    t_out: float | np.ndarray = times.copy() if per else float(times[0])
    return DenoiseResult(out_scan, sigma_out, t_out, unc_scan, noise_model, reason,
                         gain=domain.gain, sigma_read=domain.sigma_read)


def denoise(model, scan: Scan, *, show: bool = False, **options) -> DenoiseResult:
    """Run :func:`denoise_steps` to the end (``show``: a progress bar); same options."""
    return run_to_end(denoise_steps(model, scan, **options), show=show, desc="denoise")
