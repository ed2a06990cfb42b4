"""Generate synthetic scans in memory: ``generate`` and its generator twin ``generate_steps``.

Data set folders (files, manifest, data card, resume, shards) are :mod:`medidiff.tasks.dataset`.

Both kinds of model go through the same code: a pixel-space ``DiffusionModel``, or a
``LatentModel`` (:mod:`medidiff.core.latent_model`), whose prior is sampled on the whole latent
of the requested field in one piece (x0 clipped to the stored ``x0_limit``) and decoded into
scan units; everything after that (seeds, batches, files, manifest) is shared.

Reproducibility
    Sample ``j`` of a run with ``seed`` draws all its noise from ``sample_seed(seed, j)``, so it
    does not depend on which batch or process makes it. On the CPU that is not enough for
    bit-identical arrays: oneDNN convolutions and batched matrix products round differently with
    the batch size and the thread count (measured: up to ~1e-5 in network units, in most pixels).
    By default the CPU therefore runs batched, like a GPU, and a sample agrees with the same
    sample made at another batch size to within that rounding (the tests bound it at 1e-3 of
    the image range after 20 steps). With ``bit_identical=True`` every sample runs as its own
    network call with oneDNN switched off (only while the network runs), which makes the arrays,
    and hence the NIfTI/PNG files and their sha256, identical whatever the batch size, the number
    of processes or threads, at about 2x the time per image on small CPU models. GPUs always run
    batched (their kernels are not batch-invariant either).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medidiff.errors import MedidiffError, ScanError
from medidiff.io import Scan
from medidiff.core.latent_model import LatentModel
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, plain_twin
from medidiff.tasks.generate_field import (AnyModel, Field, load_generator, prior_of,  # noqa: F401 (public here too)
                                           sample_field, training_affine)


@dataclass
class GenerateResult:
    """Generated scans (scan units, training geometry), the masks they were conditioned on, seeds, labels."""

    scans: list[Scan]
    masks: list[Scan] | None
    seeds: list[int]
    labels: list[int | None] = field(default_factory=list)


# -- conditions ---------------------------------------------------------------------------------
def resolve_labels(model: DiffusionModel, labels: Any, indices: Sequence[int], n: int) -> list[int | None]:
    """One class index per sample index (``None`` for an unconditioned model).

    ``labels`` is ``None`` (class-conditioned models: classes in turn, ``j % K``), one int or
    class name for all, or a list of ``n`` ints/names (one per sample, in sample order).
    """
    k = model.config.num_classes
    names = list(model.config.class_names)
    if not k:
        if labels is not None:
            raise MedidiffError(f"{model.path or 'model'}: this model has no class conditioning; do not pass labels")
        return [None] * len(indices)

    def one(value: Any) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= int(value) < k:
                raise MedidiffError(f"label {value} is out of range: this model has classes 0..{k - 1} {names or ''}")
            return int(value)
        text = str(value)
        if text in names:
            return names.index(text)
        if text.lstrip("-").isdigit():
            return one(int(text))
        raise MedidiffError(f"unknown class {text!r}: this model's classes are {names or list(range(k))}")

    if labels is None:
        return [j % k for j in indices]
    if isinstance(labels, (str, int, np.integer)):
        value = one(labels)
        return [value] * len(indices)
    labels = list(labels)
    if len(labels) != n:
        raise MedidiffError(f"got {len(labels)} labels for {n} samples; give one label for all or one per sample")
    return [one(labels[j]) for j in indices]


def class_name(model: DiffusionModel, label: int | None) -> str:
    """How a class is written in manifests and cards: its name, else its index."""
    if label is None:
        return ""
    names = model.config.class_names
    return names[label] if label < len(names) else str(label)


def prepare_mask(model: DiffusionModel, mask: Scan | np.ndarray, where: str) -> tuple[np.ndarray, Scan | None]:
    """A label map as an int array of the model's dimensionality (checked against its classes)."""
    scan = mask if isinstance(mask, Scan) else None
    arr = np.asarray(mask.array if scan is not None else mask, dtype=np.float64)
    name = (scan.meta.get("source_path") if scan is not None else None) or where
    dims = model.config.spatial_dims
    while arr.ndim > dims and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != dims:
        raise ScanError(name, f"mask has shape {arr.shape}; this {dims}D model needs {dims}D label maps")
    if not np.isfinite(arr).all():
        raise ScanError(name, "mask has NaN or infinite values")
    labels = np.rint(arr)
    if labels.min() < 0 or labels.max() > model.config.mask_classes:
        raise ScanError(name, f"mask values {labels.min():g}..{labels.max():g} are outside this model's labels 0..{model.config.mask_classes}")
    return labels.astype(np.int64), scan


# -- sampling -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _batch_invariant(device: torch.device, enabled: bool) -> Iterator[None]:
    """Switch oneDNN off on the CPU for the duration of one network step (see module docstring)."""
    if not enabled or device.type != "cpu":
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a TF32 notice torch prints when flags change
        with torch.backends.mkldnn.flags(enabled=False):
            yield


@dataclass
class _Job:
    index: int
    seed: int
    label: int | None
    mask: np.ndarray | None
    mask_scan: Scan | None


Sink = Callable[[_Job, Scan, Scan | None, np.ndarray], None]


def _sample_jobs(
    model: AnyModel,
    jobs: Sequence[_Job],
    sink: Sink,
    *,
    sampler: str | None,
    steps: int,
    guidance: float,
    batch_size: int,
    bit_identical: bool,
    field: Field | None = None,
) -> Generator[Progress, None, None]:
    """Sample ``jobs`` in batches, hand each finished sample to ``sink``; one Progress per network step.

    The first event (step 0) comes before the first network call. ``field``: see :func:`sample_field`
    (default: the training field).
    """
    from medidiff.core.sampling import check_sampler, generate_batch

    field = field or sample_field(model)
    latent = isinstance(model, LatentModel)
    per_call = 1 if (bit_identical and model.device.type == "cpu") else max(1, int(batch_size))
    # a latent is sampled in one piece where it fits, else in windows: see medidiff.core.latent_model
    plan = None
    if latent:  # the field's plan (warned once there); a whole latent may take several samples per call
        plan = field.plan if field.plan is not None else model.plan(field.network_size, per_call)
        plan = model.plan(field.network_size, per_call) if plan.whole else dataclasses.replace(plan, batch=per_call)
    net = model.sampling_prior(plan) if plan is not None else model
    per_call = plan.batch if plan is not None else per_call
    windowing = {"overlap": plan.overlap} if plan is not None else {}  # the fallback's prior windows
    try:
        sampler = check_sampler(net, sampler)
    except ValueError as exc:
        raise MedidiffError(str(exc)) from None
    dev = net.device
    total = len(jobs) * steps
    done_units = 0
    t0 = time.perf_counter()
    finished = 0
    yield Progress(step=0, total=total, message=f"sampling {len(jobs)} images, {per_call} per network call",
                   values=None if plan is None else {"latent windows": float(plan.windows)})
    k = 0
    while k < len(jobs):
        # a batch: consecutive jobs whose masks (if any) share one shape
        batch = [jobs[k]]
        while len(batch) < per_call and k + len(batch) < len(jobs):
            nxt = jobs[k + len(batch)]
            if (nxt.mask is None) != (batch[0].mask is None) or (nxt.mask is not None and nxt.mask.shape != batch[0].mask.shape):
                break
            batch.append(nxt)
        k += len(batch)
        size = batch[0].mask.shape if batch[0].mask is not None else field.network_size
        labels = None
        if batch[0].label is not None:
            labels = torch.tensor([j.label for j in batch], dtype=torch.long, device=dev)
        masks = None
        if batch[0].mask is not None:
            masks = torch.from_numpy(np.stack([j.mask for j in batch])[:, None].astype(np.float32)).to(dev)
        inner = generate_batch(net, [j.seed for j in batch], sampler=sampler, steps=steps, class_labels=labels,
                               masks=masks, guidance=guidance, clip_x0=field.clip_x0, image_size=size, **windowing)
        try:
            while True:
                with _batch_invariant(dev, bit_identical):
                    try:
                        event = next(inner)
                    except StopIteration as stop:
                        x = stop.value
                        break
                    except ValueError as exc:  # label/mask problems found by the model
                        raise MedidiffError(str(exc)) from None
                done_units += len(batch)
                yield Progress(step=min(done_units, total), total=total,
                               message=f"sample {finished + 1}-{finished + len(batch)}/{len(jobs)} {event.message}",
                               values={"samples/s": finished / max(time.perf_counter() - t0, 1e-9)})
        finally:
            inner.close()
        if latent:
            with _batch_invariant(dev, bit_identical):
                images = model.decode(x.detach())
        else:
            images = model.normaliser.inverse(x[:, 0].detach().float().cpu().numpy())
        for job, img in zip(batch, images):
            src = job.mask_scan
            geo_spacing, affine = (src.spacing, src.affine) if src is not None and src.shape == img.shape else (field.spacing, field.affine)
            meta = {"synthetic": True, "seed": int(job.seed), "index": int(job.index),
                    "label": job.label, "class_name": class_name(net, job.label),
                    "description": f"medidiff {'latent ' if latent else ''}sample {job.index:05d}",
                    "model": Path(model.path).name if model.path else ""}
            if latent:
                meta["latent"] = True
                meta["latent_field"] = "whole" if plan.whole else "windows"
            scan = Scan(np.ascontiguousarray(img, dtype=np.float32), geo_spacing, affine, field.modality, meta)
            mask_scan = None
            if job.mask is not None:
                mask_scan = Scan(job.mask.astype(np.float32), geo_spacing, affine, field.modality,
                                 {"synthetic": True, "label_map": True, "index": int(job.index)})
            sink(job, scan, mask_scan, img)
            finished += 1
        preview = images[0] if images[0].ndim == 2 else images[0][images[0].shape[0] // 2]
        yield Progress(step=min(done_units, total), total=total, message=f"{finished}/{len(jobs)} samples",
                       preview=preview, values={"samples/s": finished / max(time.perf_counter() - t0, 1e-9)})


def _make_jobs(model: AnyModel, indices: Sequence[int], n: int, seed: int, labels: Any,
               masks: Sequence[Scan | np.ndarray] | None) -> list[_Job]:
    from medidiff.core.sampling import sample_seed

    model = prior_of(model)
    if masks is not None and not model.config.mask_classes:
        raise MedidiffError(f"{model.path or 'model'}: this model has no mask conditioning; do not pass masks")
    if masks is not None and len(masks) == 0:
        raise MedidiffError("masks is empty; give at least one label map")
    resolved = resolve_labels(model, labels, indices, n)
    jobs = []
    for j, label in zip(indices, resolved):
        mask = mscan = None
        if masks is not None:
            # sample j is conditioned on mask j (cycling when there are more samples than masks)
            mask, mscan = prepare_mask(model, masks[j % len(masks)], f"mask {j % len(masks)}")
        jobs.append(_Job(int(j), sample_seed(seed, j), label, mask, mscan))
    return jobs


class DenoisingPriorWarning(UserWarning):
    """The model was trained for denoising in a way that makes its samples unlike its training images."""


def denoising_only(model) -> str | None:
    """Why ``model``'s samples will not look like its training images, or ``None``.

    Two training options serve denoising at generation's expense (``benchmarks/README.md``): contrast
    augmentation (the prior also holds fainter copies of the images, so samples come out fainter)
    and log-normal noise levels (the high-noise end, where a sample's layout is decided, is hardly
    trained).
    """
    training = getattr(getattr(model, "config", None), "training", None) or {}
    contrast = float(training.get("contrast_augment", 1.0))
    notes = []
    if contrast < 1.0:
        notes.append(f"with --contrast-augment {contrast:g} (its samples come out at lower contrast)")
    if training.get("timestep_sampling") == "log-normal":
        notes.append("with log-normal noise levels (its high-noise end, which shapes a sample, is hardly trained)")
    if not notes:
        return None
    return ("the model was trained for denoising " + " and ".join(notes) +
            "; its samples will not look like its training images: train a generation model without these options")


def generate_steps(
    model: AnyModel | str | Path,
    n: int | None = None,
    *,
    seed: int = 0,
    sampler: str | None = None,
    steps: int = 20,
    guidance: float = 1.0,
    labels: Any = None,
    masks: Sequence[Scan | np.ndarray] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    start: int = 0,
    bit_identical: bool = False,
    image_size: Sequence[int] | None = None,
    clip_x0: float | str | None = "auto",
) -> Generator[Progress, None, GenerateResult]:
    """Generate ``n`` synthetic scans with a pixel or latent model, yielding a ``Progress`` per network step.

    Sample ``i`` uses the seed ``sample_seed(seed, start + i)``, so the result does not depend on
    ``batch_size`` and a run can be split into pieces with ``start``. ``labels``: ``None`` (a
    class-conditioned model cycles through its classes), one class (index or name) for all, or
    one per sample. ``masks``: label maps (Scans or arrays), one image per mask; ``n`` defaults
    to their number (with more samples than masks, masks repeat in order). Images are in scan
    units with the model's training spacing and orientation (a mask Scan's own geometry when
    given), ``meta["synthetic"] = True`` and the seed and label. ``bit_identical`` trades speed
    for arrays identical across batch sizes on the CPU (see the module docstring). The first
    event (step 0) comes before any network call. ``image_size`` / ``clip_x0``: see
    :func:`sample_field` (a latent model samples a larger field as one latent, no windows).
    """
    if n is None:
        if masks is None:
            raise MedidiffError("say how many samples to generate (n)")
        n = len(masks)
    if int(n) < 0:
        raise MedidiffError(f"n must be >= 0, got {n}")
    if not isinstance(steps, int) or steps < 1:
        raise MedidiffError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MedidiffError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    model = load_generator(model, device)
    reason = denoising_only(model)
    if reason:
        warnings.warn(reason, DenoisingPriorWarning, stacklevel=2)
    field = sample_field(model, image_size, clip_x0)
    yield Progress(step=0, total=int(n) * int(steps), message="preparing")
    indices = list(range(int(start), int(start) + int(n)))
    jobs = _make_jobs(model, [i - int(start) for i in indices], int(n), seed, labels, masks)
    # seeds follow the global index; masks and per-sample labels follow the local one
    from medidiff.core.sampling import sample_seed

    for job, j in zip(jobs, indices):
        job.seed = sample_seed(seed, j)
        job.index = j
    scans: list[Scan] = []
    out_masks: list[Scan] = []

    def keep(job: _Job, scan: Scan, mask: Scan | None, _: np.ndarray) -> None:
        scans.append(scan)
        if mask is not None:
            out_masks.append(mask)

    yield from _sample_jobs(model, jobs, keep, sampler=sampler, steps=steps, guidance=guidance,
                            batch_size=batch_size, bit_identical=bit_identical, field=field)
    return GenerateResult(scans=scans, masks=out_masks if masks is not None else None,
                          seeds=[j.seed for j in jobs], labels=[j.label for j in jobs])


generate = plain_twin(generate_steps, "generate")
