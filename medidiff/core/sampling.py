"""Samplers as generators, and the one place the network is called at inference.

Every sampler walks a list of times (``NoiseSchedule.timesteps``) from a start ``x_t``
down to the clean image, yielding a ``Progress`` per network evaluation so that callers
can show progress and stop at any step (closing the generator stops the work).

* ``ddpm``    ancestral sampling (DDIM with eta=1): stochastic, needs many steps;
* ``ddim``    deterministic DDIM (``eta`` > 0 adds noise), also used backwards for inversion; the
              default for DDPM-trained models (with x0 clipping, as generation runs it, it is as
              close as dpm++2m or closer at 20 steps: benchmarks/README.md, Engine);
* ``dpm++2m`` DPM-Solver++(2M), a second-order multistep solver (MONAI has none), ahead at 5-10 steps;
* ``euler``   Euler steps of the rectified-flow ODE, for ``rflow`` models.

All of them work from a network output turned into (x0, eps) by the schedule, so they
serve epsilon-, v- and flow-trained models alike. Randomness is per sample: sample ``i``
draws its noise from its own generator seeded by ``sample_seed(seed, i)``, so it comes
out the same whatever the batch size or the number of processes.

:func:`predict` is where the network runs: classifier-free guidance, padding to a size
the U-Net accepts, a gaussian-blended sliding window (MONAI's placement and weights,
:mod:`medidiff.core.windows`) for images larger than the training size, ``inference_mode``
and bf16 autocast on CUDA. Its generator twin :func:`predict_steps` (and
:func:`network_output_steps` under it) yields between sliding-window batches, so one large
image is many progress steps and can be stopped within one network call; ``sample(...,
per_call=True)`` passes those steps on.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import numpy as np
import torch

from medidiff.core.devices import autocast_dtype
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, plain_twin, relay, run_to_end

from medidiff.choices import SAMPLERS_FOR as SAMPLERS
DEFAULT_SAMPLER = {"ddpm": "ddim", "rflow": "euler"}


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` in a run with ``seed``: independent streams, stable forever."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))


def sample_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample (noise is drawn on the CPU so results do not depend on the device)."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def draw_noise(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """A batch of standard normal noise, sample ``i`` drawn from ``generators[i]``."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]).to(device)


def check_sampler(model: DiffusionModel, sampler: str | None) -> str:
    """The sampler to use (``None`` -> the schedule's default); a clear error for a mismatch."""
    kind = model.schedule.kind
    sampler = sampler or DEFAULT_SAMPLER[kind]
    if sampler not in SAMPLERS[kind]:
        raise ValueError(f"sampler {sampler!r} does not fit a {kind!r} model; choose one of {SAMPLERS[kind]}")
    return sampler


# -- network evaluation -------------------------------------------------------------------------
def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    spatial = x.shape[2:]
    target = [int(np.ceil(s / multiple) * multiple) for s in spatial]
    if list(spatial) == target:
        return x, tuple(slice(None) for _ in spatial)
    pad: list[int] = []
    for s, t in zip(reversed(spatial), reversed(target)):
        pad += [0, t - s]
    return torch.nn.functional.pad(x, pad, mode="replicate"), tuple(slice(0, s) for s in spatial)


def window_batch_size(model: DiffusionModel, device: torch.device, free_bytes: int | None = None,
                      cpu_default: int = 8, most: int = 64) -> int:
    """Sliding-window batch that fits in half the free GPU memory (``cpu_default`` off the GPU).

    The estimate is deliberately rough: activations of one window are taken as the widest
    feature map times the number of stored activations (about 12 per resolution level in
    MONAI's U-Net at inference, with bf16 halving nothing we count on).
    """
    if free_bytes is None:
        if device.type != "cuda":
            return cpu_default
        free_bytes, _ = torch.cuda.mem_get_info(device)
    net = model.config.network
    voxels = int(np.prod(model.config.image_size))
    per_window = voxels * max(net["channels"]) * 4 * 12 * len(net["channels"])
    return int(max(1, min(most, (free_bytes // 2) // max(per_window, 1))))


def network_output_steps(
    model: DiffusionModel,
    net_in: torch.Tensor,
    t: float,
    class_labels: torch.Tensor | None = None,
    sw_batch_size: int | None = None,
    overlap: float = 0.25,
) -> Generator[Progress, None, torch.Tensor]:
    """Raw network output for a batch at time ``t``, any spatial size, no seams; yields between calls.

    A batch that fits the training size is one network call (padded to a size the U-Net
    takes). A larger one is covered by gaussian-blended windows of the training size
    (:mod:`medidiff.core.windows`, MONAI's placement and weights); the windows of all batch
    elements form one sequence, ``sw_batch_size`` per call (default: what fits in free GPU
    memory, :func:`window_batch_size`; 8 on the CPU), each window keeping its element's
    label. A ``Progress`` is yielded *between* calls (after every window batch but the last;
    the last one's end is the return), so a caller that reports its own event when the result
    is in counts every call exactly once, and closing the generator stops within one call.
    """
    from medidiff.core import windows

    net = model.network
    roi = tuple(model.config.image_size)
    spatial = tuple(net_in.shape[2:])
    device = net_in.device
    amp = autocast_dtype(device)

    def run(x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        tt = torch.full((x.shape[0],), float(t), device=device)
        lab = None if labels is None else labels.expand(x.shape[0]).to(device)
        if amp is not None:
            with torch.autocast(device_type=device.type, dtype=amp):
                return net(x, timesteps=tt, class_labels=lab).float()
        return net(x, timesteps=tt, class_labels=lab).float()

    if windows.fits(spatial, roi):
        with torch.inference_mode():
            x, crop = _pad_to_multiple(net_in, model.config.size_multiple)
            return run(x, class_labels)[(slice(None), slice(None), *crop)]
    # inference mode is entered per call, never held across a yield (it is thread state)
    with torch.inference_mode():
        pad = windows.pad_widths(spatial, roi)
        x = torch.nn.functional.pad(net_in, pad, mode="replicate") if any(pad) else net_in
        size = tuple(x.shape[2:])
        wins = windows.window_slices(size, roi, overlap)
        weight = windows.importance_map(roi, device)
        acc: torch.Tensor | None = None
        count = torch.zeros((1, 1, *size), dtype=torch.float32, device=device)
        for w in wins:
            count[(slice(None), slice(None), *w)] += weight
    order = [(b, w) for b in range(x.shape[0]) for w in wins]  # element-major, as MONAI
    per_call = int(sw_batch_size or window_batch_size(model, device))
    calls = -(-len(order) // per_call)
    for c in range(calls):
        chunk = order[c * per_call:(c + 1) * per_call]
        with torch.inference_mode():
            batch = torch.cat([x[(slice(b, b + 1), slice(None), *w)] for b, w in chunk])
            labels = None if class_labels is None else class_labels[[b for b, _ in chunk]]
            out = run(batch, labels) * weight
            if acc is None:
                acc = torch.zeros((x.shape[0], out.shape[1], *size), dtype=torch.float32, device=device)
            for j, (b, w) in enumerate(chunk):
                acc[(slice(b, b + 1), slice(None), *w)] += out[j : j + 1]
        if c + 1 < calls:
            yield Progress(step=c + 1, total=calls, message=f"window batch {c + 1}/{calls}")
    with torch.inference_mode():
        result = acc / count
        crop = tuple(slice(pad[2 * k], pad[2 * k] + spatial[-1 - k]) for k in range(len(spatial)))[::-1]
        return result[(slice(None), slice(None), *crop)]


network_output = plain_twin(network_output_steps, "network")


def _guided(class_labels: torch.Tensor | None, masks: torch.Tensor | None, guidance: float) -> bool:
    """Whether ``predict`` runs the conditional and the unconditional batch together."""
    return (class_labels is not None or masks is not None) and guidance != 1.0


def predict_calls(model: DiffusionModel, n_items: int, spatial: Sequence[int], sw_batch_size: int,
                  guided: bool = False, overlap: float = 0.25) -> int:
    """Network calls one :func:`predict` of ``n_items`` images of ``spatial`` size makes."""
    from medidiff.core.windows import window_calls

    return window_calls(n_items * (2 if guided else 1), spatial, model.config.image_size, sw_batch_size, overlap)


def predict_steps(
    model: DiffusionModel,
    x_t: torch.Tensor,
    t: float,
    class_labels: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    guidance: float = 1.0,
    sw_batch_size: int | None = None,
    overlap: float = 0.25,
    lowres: torch.Tensor | None = None,
) -> Generator[Progress, None, tuple[torch.Tensor, torch.Tensor]]:
    """Predicted clean image and noise ``(x0, eps)`` at ``(x_t, t)``, with classifier-free guidance.

    Yields between the network calls as :func:`network_output_steps` does (``overlap``: of its windows).
    ``lowres``: the image a super-resolution model upsamples (network units; never dropped by guidance).
    """
    b = x_t.shape[0]
    spatial = tuple(x_t.shape[2:])
    labels = model.check_class_labels(class_labels, b)
    cond = model.condition_channels(masks, b, spatial, x_t.device, lowres)
    if _guided(labels, masks, guidance):
        null_labels = None if labels is None else torch.full_like(labels, model.null_class)
        null_cond = None if cond is None else model.condition_channels(None, b, spatial, x_t.device, lowres)
        x_in = torch.cat([x_t, x_t])
        if cond is not None:
            x_in = torch.cat([x_in, torch.cat([cond, null_cond])], dim=1)
        lab_in = None if labels is None else torch.cat([labels, null_labels])
        out = yield from network_output_steps(model, x_in, t, lab_in, sw_batch_size, overlap)
        out_c, out_u = out[:b], out[b:]
        out = out_u + guidance * (out_c - out_u)
    else:
        if labels is None and model.config.num_classes:
            labels = torch.full((b,), model.null_class, dtype=torch.long)
        x_in = x_t if cond is None else torch.cat([x_t, cond], dim=1)
        out = yield from network_output_steps(model, x_in, t, labels, sw_batch_size, overlap)
    return model.schedule.to_x0_eps(out, x_t, t)


predict = plain_twin(predict_steps, "predict")


# -- samplers ----------------------------------------------------------------------------------------
def sample(
    model: DiffusionModel,
    x_start: torch.Tensor,
    *,
    sampler: str | None = None,
    steps: int = 20,
    t_start: float | None = None,
    class_labels: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    guidance: float = 1.0,
    eta: float = 0.0,
    generators: Sequence[torch.Generator] | None = None,
    clip_x0: float | None = None,
    preview_every: int = 0,
    sw_batch_size: int | None = None,
    per_call: bool = False,
    overlap: float = 0.25,
    lowres: torch.Tensor | None = None,
) -> Generator[Progress, None, torch.Tensor]:
    """Run the reverse process from ``x_start`` at ``t_start`` (default: pure noise) to a clean image.

    ``x_start`` is in network units on the model's device (for generation: noise; for
    denoising and anomaly detection: a partly noised image). Stochastic samplers (``ddpm``,
    ``ddim`` with ``eta`` > 0) draw per-sample noise from ``generators``. Yields one
    ``Progress`` per step; returns the final batch. ``per_call=True`` yields between network
    calls instead (sliding-window batches too, as :func:`network_output_steps`: after every
    call but the last, counted in calls), for callers that report progress per network call.
    ``overlap``: of those sliding windows (default MONAI's 1/4). ``lowres``: see :func:`predict_steps`.
    """
    sampler = check_sampler(model, sampler)
    times = model.schedule.timesteps(steps, t_start)
    if sampler == "ddpm":
        eta = 1.0
    stochastic = eta > 0
    if stochastic and generators is None:
        raise ValueError("stochastic sampling needs per-sample generators (see sample_generators)")
    sched = model.schedule
    x = x_start.float()
    total = len(times) - 1
    prev_x0: torch.Tensor | None = None
    prev_h: float | None = None
    x0 = x
    if sw_batch_size is None:
        sw_batch_size = window_batch_size(model, x.device)
    per_step = predict_calls(model, x.shape[0], x.shape[2:], sw_batch_size,
                             _guided(class_labels, masks, guidance), overlap)
    calls = 0
    for i in range(total):
        t, t_next = times[i], times[i + 1]
        inner = predict_steps(model, x, t, class_labels, masks, guidance, sw_batch_size, overlap, lowres)
        if per_call:
            x0, eps = yield from relay(inner, step=calls, total=total * per_step, message=f"{sampler} t={t:.0f}")
        else:
            x0, eps = run_to_end(inner)
        calls += per_step
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            a, s = sched.alpha_sigma(t)
            eps = (x - a * x0) / s if s > 0 else eps
        a_t, s_t = sched.alpha_sigma(t)
        a_n, s_n = sched.alpha_sigma(t_next)
        if s_n == 0:
            x = x0
        elif sampler == "euler":
            # flow ODE: dx/ds = eps - x0, from s_t to s_n
            x = x + (s_n - s_t) * (eps - x0)
        elif sampler == "dpm++2m":
            lam_t, lam_n = np.log(a_t / s_t), np.log(a_n / s_n)
            h = lam_n - lam_t
            if prev_x0 is None or prev_h is None:
                d = x0
            else:
                r = prev_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
            x = (s_n / s_t) * x - a_n * float(np.expm1(-h)) * d
            prev_x0, prev_h = x0, h
        else:  # ddim / ddpm
            c = 0.0
            if stochastic:
                c = eta * (s_n / s_t) * float(np.sqrt(max(1.0 - (a_t / a_n) ** 2, 0.0)))
            x = a_n * x0 + float(np.sqrt(max(s_n**2 - c**2, 0.0))) * eps
            if c > 0:
                x = x + c * draw_noise(generators, x.shape[1:], x.device)
        preview = None
        if preview_every and ((i + 1) % preview_every == 0 or i + 1 == total):
            preview = x0[0, 0].detach().float().cpu().numpy()
        if not per_call:
            yield Progress(step=i + 1, total=total, message=f"{sampler} t={t:.0f}", preview=preview)
        elif i + 1 < total:  # the last call's end is the return
            yield Progress(step=calls, total=total * per_step, message=f"{sampler} t={t:.0f}", preview=preview)
    return x


def invert(
    model: DiffusionModel,
    x0: torch.Tensor,
    *,
    t_end: float,
    steps: int = 10,
    class_labels: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
) -> Generator[Progress, None, torch.Tensor]:
    """DDIM inversion: walk a clean image deterministically forwards to time ``t_end``.

    Running ``sample(..., sampler="ddim", t_start=t_end, steps=steps)`` on the result walks
    back (approximately) to ``x0``.
    """
    times = list(reversed(model.schedule.timesteps(steps, t_end)))  # -1 ... t_end
    sched = model.schedule
    x = x0.float()
    total = len(times) - 1
    for i in range(total):
        t, t_next = max(times[i], 0.0), times[i + 1]
        x0_hat, eps = predict(model, x, t, class_labels, masks)
        a_n, s_n = sched.alpha_sigma(t_next)
        x = a_n * x0_hat + s_n * eps
        yield Progress(step=i + 1, total=total, message=f"invert t={t_next:.0f}")
    return x


def generate_batch(
    model: DiffusionModel,
    seeds: Sequence[int],
    *,
    sampler: str | None = None,
    steps: int = 20,
    class_labels: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    guidance: float = 1.0,
    eta: float = 0.0,
    clip_x0: float | None = 1.0,
    image_size: Sequence[int] | None = None,
    preview_every: int = 0,
    overlap: float = 0.25,
    lowres: torch.Tensor | None = None,
) -> Generator[Progress, None, torch.Tensor]:
    """Generate one sample per seed from pure noise (network units, shape (N, 1, *size)); ``overlap``: of
    the sliding windows of an image larger than the training size; ``lowres``: the images a
    super-resolution model upsamples (network units, (N, 1, *size / factor))."""
    size = tuple(image_size or model.config.image_size)
    gens = sample_generators(seeds)
    noise = draw_noise(gens, (1, *size), model.device)
    if model.schedule.kind == "ddpm":
        a, s = model.schedule.alpha_sigma(model.schedule.T - 1)
        noise = noise * float(np.sqrt(a * a + s * s))  # = 1 for VP; kept explicit
    result = yield from sample(
        model, noise, sampler=sampler, steps=steps, class_labels=class_labels, masks=masks,
        guidance=guidance, eta=eta, generators=gens, clip_x0=clip_x0, preview_every=preview_every, overlap=overlap,
        lowres=lowres,
    )
    return result
