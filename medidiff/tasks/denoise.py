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

``ensemble``   (tweedie) the average over flips (4) or flips and 90-degree rotations (8) of the
               input, undone on the output: exactly equivariant, a few tenths of a dB for 4-8x
               the calls (``medidiff.tasks.ensemble``).

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

Units: MR, microscopy and other images without absolute units are normalised **on their own**
(``Normaliser.for_scan``: the per-scan rule stored in the model's ``config.json``, the same rule
its training scans were mapped with), the noise std is converted into that scale, and the
result is mapped back exactly; CT models keep their fixed HU window. So the result does not
depend on how the scan's intensities are stored: ``denoise(c * x) == c * denoise(x)`` for any
``c > 0`` (and ``+ b`` too for Gaussian noise), up to rounding. Inputs the model cannot handle
are refused with one line, never turned into artefacts (``medidiff.tasks.denoise_checks``).

Intervals: ``coverage=c`` also returns per-voxel ``(low, high)`` bounds that hold the clean value
with probability ``c`` (split conformal prediction calibrated on the model's training-like data,
stored in its ``config.json``; the maths and its exchangeability assumption are in
``medidiff.tasks.denoise_intervals``).

Self-check (``self_check=True``, the default): the PSNR gain over the noisy scan is estimated
without clean data by Monte-Carlo SURE (one more pass of the tweedie denoiser at a slightly
perturbed input; for ddim/posterior, two tweedie passes as an in-domain indicator), returned as
``result.self_check`` and, below ``denoise_selfcheck.WARN_BELOW_DB``, warned about in one line
naming the file (``medidiff.tasks.denoise_selfcheck``).

Layout: a 2D model on a 3D volume works slice by slice along ``model.config.slice_axis`` (axis
0 when unset; ``medidiff.core.slicing.SliceLayout``), ``batch_size`` slices per network call. A 3D
model takes the whole volume. Images larger than the training size go through ``predict``'s
gaussian-blended sliding window, so there are no seams. Progress: one ``Progress`` per network
call, sliding-window batches included (the total is slice batches x calls per reconstruction x
samples), so a single large image moves the bar and stops within one call; the event at the end
of each slice batch (and sample) carries its preview.

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
from medidiff.core.progress import Progress, plain_twin, relay
from medidiff.core.slicing import SliceLayout
from medidiff.errors import InvalidScanError, ModelError
from medidiff.io import Scan
from medidiff.tasks import denoise_checks as checks
from medidiff.tasks.denoise_checks import DenoiseOptionError
from medidiff.tasks import denoise_intervals as intervals
from medidiff.tasks import denoise_selfcheck as selfcheck
from medidiff.tasks.ensemble import ENSEMBLE_SIZES, ensemble_average_steps, transforms

log = logging.getLogger(__name__)

METHODS = DenoiseMethod.values()
NOISE_CHOICES = NoiseChoice.values()

__all__ = ["METHODS", "NOISE_CHOICES", "ENSEMBLE_SIZES", "DenoiseOptionError", "DenoiseResult", "denoise_steps",
           "denoise"]


@dataclass(frozen=True)
class DenoiseResult:
    """What :func:`denoise` returns.

    ``scan``: the denoised scan (float32, input geometry). ``sigma``: the Gaussian noise std the
    network removed, in scan units (for Poisson-Gaussian noise: in the stabilised, affinely
    rescaled domain), always a numpy array with one value per item the network saw (per slice
    for a 2D model on a volume -- all equal unless ``per_slice`` -- one value otherwise);
    :attr:`sigma_median` is its one-number summary. ``sigma_normalised``: the same in the
    model's normalised units (what decides the time). ``timestep``: the matching diffusion
    times, same shape (``-1`` = nothing to remove); :attr:`timestep_median`. ``uncertainty``:
    per-voxel posterior std (``posterior`` only). ``noise_model`` and ``reason``: which noise
    model was used and why. ``gain``: photon gain (Poisson-Gaussian only; ``sigma_read`` is then
    the read noise in scan units). ``normaliser``: the intensity map this scan was denoised in.
    ``interval``: ``(low, high)`` scans (scan units) that hold the clean value with probability
    ``coverage`` (split conformal, ``medidiff.tasks.denoise_intervals``), when asked for.
    ``self_check``: the SURE-estimated gain (``denoise_selfcheck.SelfCheck``), None when skipped.
    """

    scan: Scan
    sigma: np.ndarray
    timestep: np.ndarray
    uncertainty: Scan | None
    noise_model: str
    reason: str
    gain: float | None = None
    sigma_read: float | None = None
    sigma_normalised: np.ndarray | None = None
    normaliser: dict | None = None
    interval: tuple[Scan, Scan] | None = None
    coverage: float | None = None
    self_check: selfcheck.SelfCheck | None = None

    @property
    def sigma_median(self) -> float:
        """The median of :attr:`sigma` (the one value when there is one)."""
        return float(np.median(self.sigma))

    @property
    def timestep_median(self) -> float:
        """The median of :attr:`timestep`."""
        return float(np.median(self.timestep))


def _source(scan: Scan) -> str:
    return str(scan.meta.get("source_path") or "scan")


def _noise_domain(items: np.ndarray, scan: Scan, noise: str, sigma: float | None, per_slice: bool,
                  layout: SliceLayout) -> tuple[noise_lib.NoiseDomain, str]:
    """Pick the noise model, estimate it (unless ``sigma`` is given) and build its domain."""
    stack = items if layout.slice_wise else scan.array  # a 3D model sees the volume: one estimate
    try:
        return noise_lib.noise_domain(items, stack, noise, sigma=sigma, modality=scan.modality,
                                      source_format=scan.meta.get("format"), per_item=per_slice and layout.slice_wise)
    except ValueError as exc:
        raise InvalidScanError(_source(scan), f"cannot estimate its noise: {exc}") from exc


def _batches(times: np.ndarray, batch_size: int) -> list[list[int]]:
    """Consecutive items with the same time, at most ``batch_size`` per batch (the network takes one t)."""
    out: list[list[int]] = []
    for i, t in enumerate(times):
        if out and len(out[-1]) < batch_size and times[out[-1][0]] == t:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _sample_generators(seed: int, k: int, idx: list[int]) -> list[torch.Generator]:
    from medidiff.core.sampling import sample_generators, sample_seed

    # sample k of item j gets its own stream: the same whatever batch_size is
    base = sample_seed(seed, k)
    return sample_generators([sample_seed(base, j) for j in idx])


def _x0(gen: Generator[Progress, None, tuple[torch.Tensor, torch.Tensor]]) -> Generator[Progress, None, torch.Tensor]:
    """The clean estimate of a ``predict_steps`` generator (its events passed on)."""
    return (yield from gen)[0]


def _calls(model, method: str, n: int, spatial: tuple[int, ...], t: float, steps: int, ensemble: int,
           sw: int) -> int:
    """Network calls (sliding-window batches included) to denoise a batch of ``n`` items at time ``t``.

    A batch with nothing to remove (``t < 0``) makes none but is still one step.
    """
    from medidiff.core.sampling import predict_calls

    if t < 0:
        return 1
    if method == "tweedie":  # a quarter turn swaps the last two axes
        shapes = [(*spatial[:-2], spatial[-1], spatial[-2]) if turns % 2 else spatial
                  for turns, _, _ in transforms(ensemble)]
        return sum(predict_calls(model, n, shape, sw) for shape in shapes)
    return (len(model.schedule.timesteps(steps, t)) - 1) * predict_calls(model, n, spatial, sw)


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
    ensemble: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "auto",
    coverage: float | None = None,
    self_check: bool = True,
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
    ensemble:   1, 4 (flips) or 8 (flips and 90-degree rotations, square pixels only): the
                geometric self-ensemble of ``tweedie`` (see ``medidiff.tasks.ensemble``).
    batch_size: slices per network call. ``seed``: seeds ``posterior`` (same seed, same result).
    device:     ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    coverage:   also return per-voxel intervals holding the clean value with this probability
                (0.5-0.99; needs the model's interval calibration, see ``denoise_intervals``).
    self_check: estimate the gain without clean data (SURE) and warn when it is small; costs
                one more network pass for tweedie (x ensemble), two tweedie passes for ddim and
                posterior (``medidiff.tasks.denoise_selfcheck``).
    """
    from medidiff.core.devices import release_memory, resolve_device
    from medidiff.core.sampling import predict_steps, sample, window_batch_size
    from medidiff.model_store.registry import resolve_model

    checks.check_options(method, noise, sigma, strength, steps, samples, batch_size, ensemble)
    intervals.check_coverage(coverage)
    if not isinstance(scan, Scan):
        raise TypeError(f"denoise expects a Scan, got {type(scan).__name__}")
    dev = resolve_device(device)
    model = resolve_model(model, device=str(dev))
    if coverage is not None:  # refuse before any work when there is no calibration for this method
        intervals.find_calibration(model, method, ensemble, strength=strength)
    kind = model.schedule.kind
    if method == "posterior" and kind != "ddpm":
        raise ModelError(f"{model.path or 'model'}: posterior sampling needs a DDPM-schedule model; "
                         f"this one is {kind!r} (use method 'tweedie' or 'ddim')")
    source = _source(scan)
    layout = SliceLayout.for_model(model, scan)
    checks.check_ensemble(ensemble, layout, scan, source)
    checks.check_white_noise(model, source)
    checks.check_size(model, layout, scan.shape, source)
    checks.check_constant(scan.array, source)
    items = layout.to_items(scan.array)
    domain, reason = _noise_domain(items, scan, noise, sigma, per_slice, layout)
    # the intensity map for this scan: a per-scan rule (MR, microscopy) or the model's fixed units (CT)
    norm = model.normaliser.for_scan(scan.array, source=source, signal_of_mean=domain.signal_of_mean,
                                      noise_std=domain.std_at)
    checks.check_units(model.normaliser, norm, scan.array, source)
    noise_model = domain.model
    checks.check_signal(scan.array, domain.sigma, source)
    if norm is not model.normaliser:
        reason = f"{reason}; intensities normalised on this scan ({model.normaliser.kind} rule)"
    checks.warn_spacing(model, layout, scan, source)
    log.info("denoise: noise model %s (%s)", noise_model, reason)

    sched = model.schedule
    work = domain.to_gaussian(items)
    s_net = np.asarray(norm.scale_sigma(domain.sigma), dtype=np.float64).reshape(-1) * strength
    checks.check_noise_range(model, s_net, source)
    cal = None
    if coverage is not None:
        cal = intervals.find_calibration(model, method, ensemble, noise_model, strength)
        cal.check_level(s_net, source)
        self_check = intervals.needs_sure(cal, selfcheck.available_on(model.device), source) or self_check
    times = np.array([sched.timestep_for_noise(float(s)) for s in s_net])
    batches = _batches(times, batch_size)
    k_samples = samples if method == "posterior" else 1
    sw = window_batch_size(model, model.device)  # fixed for the run, so the total holds
    spatial = tuple(items.shape[1:])
    total = sum(_calls(model, method, len(idx), spatial, float(times[idx[0]]), steps, ensemble, sw)
                for idx in batches) * k_samples
    # the self-check: tweedie is checked on its own output (one pass more), other methods by two tweedie passes
    if self_check and not selfcheck.available_on(model.device):
        log.info("denoise: self-check skipped on %s (bf16 autocast is too coarse for its finite difference)", dev)
        self_check = False
    passes, check_size = selfcheck.check_plan(method, ensemble) if self_check else (0, 1)
    total += passes * sum(_calls(model, "tweedie", len(idx), spatial, float(times[idx[0]]), steps, check_size, sw)
                          for idx in batches)
    sampler = "euler" if kind == "rflow" else "ddim"

    def tweedie(x_t: torch.Tensor, t: float, size: int = ensemble) -> Generator[Progress, None, torch.Tensor]:
        return ensemble_average_steps(lambda x: _x0(predict_steps(model, x, t, sw_batch_size=sw)), x_t, size)

    def tweedie_stack(stack: np.ndarray, size: int) -> Generator[Progress, None, np.ndarray]:
        """Tweedie on every batch of a scan-units stack, back in scan units (the self-check's passes)."""
        nonlocal done
        gauss = domain.to_gaussian(stack)
        res = np.empty(items.shape, dtype=np.float32)
        for idx in batches:
            t = float(times[idx[0]])
            y = torch.from_numpy(norm.forward(gauss[idx])).unsqueeze(1).to(model.device)
            counts: list[int] = [0]
            x0 = y if t < 0 else (yield from relay(tweedie(sched.alpha_sigma(t)[0] * y, t, size), step=done,
                                                   total=total, message="self-check (SURE)", counts=counts))
            done += counts[-1] + 1
            res[idx] = domain.from_gaussian_stack(norm.inverse(x0[:, 0].float().cpu().numpy()), idx)
        return res

    out = np.empty(items.shape, dtype=np.float32)
    unc = np.empty(items.shape, dtype=np.float32) if method == "posterior" else None
    done = 0
    # step 0 before the first network call: a one-batch job shows its work from the first second
    yield Progress(step=0, total=total, message=f"{method}: {len(items)} slice(s) in {len(batches)} batch(es), "
                                                f"{total} network call(s)")
    try:
        for idx in batches:
            t = float(times[idx[0]])
            y = torch.from_numpy(norm.forward(work[idx])).unsqueeze(1).to(model.device)
            x_t = sched.alpha_sigma(t)[0] * y
            mean_net = torch.zeros_like(y)
            mean_out = np.zeros((len(idx), *items.shape[1:]), dtype=np.float64)
            sq_out = np.zeros_like(mean_out)
            message = f"{method} t={t:.0f}"
            for k in range(k_samples):
                # every network call is a step (sliding-window batches too): the inner generators
                # yield between calls, and the event below is the last call's
                counts: list[int] = [0]
                if t < 0:  # nothing to remove
                    x0 = y
                elif method == "tweedie":
                    x0 = yield from relay(tweedie(x_t, t), step=done, total=total, message=message, counts=counts)
                elif method == "ddim":
                    x0 = yield from relay(sample(model, x_t, sampler=sampler, steps=steps, t_start=t, sw_batch_size=sw,
                                                 per_call=True), step=done, total=total, message=message, counts=counts)
                else:
                    x0 = yield from relay(sample(model, x_t, sampler="ddim", eta=1.0, steps=steps, t_start=t,
                                                 generators=_sample_generators(seed, k, idx), sw_batch_size=sw,
                                                 per_call=True), step=done, total=total, message=message, counts=counts)
                mean_net += (x0 - mean_net) / (k + 1)
                if unc is not None:  # spread of the samples in scan units, after the inverse transform
                    final = domain.from_gaussian_stack(norm.inverse(x0[:, 0].float().cpu().numpy()), idx)
                    delta = final.astype(np.float64) - mean_out
                    mean_out += delta / (k + 1)
                    sq_out += delta * (final - mean_out)
                done += counts[-1] + 1
                result = domain.from_gaussian_stack(norm.inverse(mean_net[:, 0].float().cpu().numpy()), idx)
                preview = result[len(idx) // 2]
                if preview.ndim == 3:
                    preview = preview[preview.shape[0] // 2]
                yield Progress(step=done, total=total, message=message,
                               preview=preview.astype(np.float32),
                               values={"sigma": float(domain.sigma[idx[0]]), "t": t})
            out[idx] = result
            if unc is not None:
                unc[idx] = np.sqrt(sq_out / (k_samples - 1))
        check = None
        if self_check:
            check = yield from selfcheck.self_check_steps(tweedie_stack, items, out, domain, method, ensemble, seed,
                                                          source)
            yield Progress(step=done, total=total, message="self-check (SURE) done")
    finally:
        release_memory(model.device)

    meta = dict(scan.meta)
    label = method if ensemble == 1 else f"{method} x{ensemble}"
    meta["description"] = f"medidiff denoise ({label}, {noise_model})"
    out_scan = scan.with_array(layout.from_items(out), meta=meta)
    unc_scan = None
    if unc is not None:
        unc_meta = dict(scan.meta)
        unc_meta["description"] = f"medidiff denoise uncertainty (posterior std, {samples} samples)"
        unc_scan = scan.with_array(layout.from_items(unc), meta=unc_meta)
    bounds = None
    if cal is not None:
        low, high = intervals.interval_items(cal, float(coverage), out, norm, s_net, unc, domain.gain,
                                            domain.sigma_read, self_check=check)
        bounds = tuple(scan.with_array(layout.from_items(b), meta={**scan.meta, "description": f"medidiff denoise "
                                       f"{coverage:g} interval {side} ({label})"}) for b, side in ((low, "low"), (high, "high")))
    return DenoiseResult(out_scan, np.asarray(domain.sigma, dtype=np.float64).copy(), times.copy(), unc_scan,
                         noise_model, reason, gain=domain.gain, sigma_read=domain.sigma_read,
                         sigma_normalised=s_net.copy(), normaliser=norm.to_dict(), interval=bounds,
                         coverage=None if cal is None else float(coverage), self_check=check)


denoise = plain_twin(denoise_steps, "denoise")
