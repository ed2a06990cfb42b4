"""Generate synthetic scans: ``generate`` / ``generate_steps`` (in memory) and
``generate_dataset`` / ``generate_dataset_steps`` (a folder with a manifest and a data card).

Reproducibility
    Sample ``j`` of a run with ``seed`` draws all its noise from ``sample_seed(seed, j)``, so it
    does not depend on which batch or process makes it. On the CPU that is not enough for
    bit-identical files: oneDNN convolutions and batched matrix products round differently with
    the batch size and the thread count (measured: up to 1e-5 in network units, in most pixels),
    and rounding the result to a grid cannot hide that (some pixel always sits on a rounding
    boundary). So with ``deterministic=True`` (the default) the CPU runs every sample as its own
    network call with oneDNN switched off (only while the network runs), which makes the
    arrays, and hence the NIfTI/PNG files and their sha256, identical whatever the batch size,
    the number of processes or threads. That costs about 2x on small CPU models. GPUs run
    batched (their kernels are not batch-invariant either); there the manifest's sha256 still
    guards resuming, but identity across batch sizes is not promised.

Data set folder (``generate_dataset_steps``)::

    DIR/sample_00000.nii.gz       one file per sample (.dcm / folder for DICOM, .tif, .png)
    DIR/masks/sample_00000.nii.gz the mask a sample was conditioned on (mask-conditioned runs)
    DIR/manifest.csv              file, index, seed, condition, sampler, steps, guidance, sha256,
                                  pixel_sha256 (hash of the generated float32 array: equal across
                                  formats and runs even where the file is not, e.g. DICOM UIDs)
    DIR/DATA_CARD.md              model, its training data, command, counts, quality

Each file is written atomically; each process appends one row per finished file to its own
``manifest.part-RANK.csv``. A rerun on the same folder skips samples whose file exists and
matches its recorded sha256 (and settings), regenerates the rest, and removes stale ``.part``
files of its own indices. Under ``torchrun`` rank ``r`` of ``w`` makes the indices ``j`` with
``j % w == r`` (RANK / WORLD_SIZE from the environment, no process group needed); every process,
when it finishes, tries to merge the parts, and the one that finds all ``n`` samples present
writes ``manifest.csv`` and ``DATA_CARD.md`` (identical content whoever writes it).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medidiff.errors import MedidiffError, OutputError, ScanError
from medidiff.io import Scan, affine_from_spacing
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, run_to_end

FORMAT_SUFFIX = {"nifti": ".nii.gz", "dicom": ".dcm", "tiff": ".tif", "png": ".png"}
MANIFEST_FIELDS = ["file", "index", "seed", "condition", "sampler", "steps", "guidance", "sha256", "pixel_sha256"]
# columns that must agree for a recorded file to count as "this run's" sample
SETTINGS_FIELDS = ["seed", "condition", "sampler", "steps", "guidance"]


@dataclass
class GenerateResult:
    """Generated scans (scan units, training geometry), the masks they were conditioned on, seeds, labels."""

    scans: list[Scan]
    masks: list[Scan] | None
    seeds: list[int]
    labels: list[int | None] = field(default_factory=list)


@dataclass
class DatasetResult:
    """What ``generate_dataset`` did: where, how many files it wrote or found complete."""

    out_dir: Path
    written: int
    skipped: int
    complete: bool
    manifest: Path | None
    data_card: Path | None
    quality: Any = None


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


def training_affine(model: DiffusionModel) -> np.ndarray:
    """A RAS affine with the training spacing and the training scans' axis directions.

    ``config.orientation`` is the 3-letter code of the training volumes' (x, y, z) index axes; a
    2D model drops the code of its slice axis. Without a usable code: a diagonal RAS affine.
    """
    cfg = model.config
    spacing = tuple(cfg.spacing) or (1.0,) * cfg.spatial_dims
    if len(spacing) != cfg.spatial_dims:
        spacing = (1.0,) * cfg.spatial_dims
    codes = str(cfg.orientation or "").upper()
    world = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    if len(codes) != 3 or any(c not in world for c in codes) or len({world[c][0] for c in codes}) != 3:
        return affine_from_spacing(spacing)
    if cfg.spatial_dims == 2:
        if cfg.slice_axis is None:
            return affine_from_spacing(spacing)
        drop = 2 - int(cfg.slice_axis)  # array axis a is index axis 2 - a (reversed order)
        codes = "".join(c for i, c in enumerate(codes) if i != drop)
    rev_spacing = list(reversed(spacing))
    aff = np.zeros((4, 4))
    aff[3, 3] = 1.0
    used = set()
    for i, c in enumerate(codes):
        axis, sign = world[c]
        aff[axis, i] = sign * rev_spacing[i]
        used.add(axis)
    if cfg.spatial_dims == 2:  # the (unit) out-of-plane column, so the affine stays invertible
        aff[({0, 1, 2} - used).pop(), 2] = 1.0
    return aff


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
    model: DiffusionModel,
    jobs: Sequence[_Job],
    sink: Sink,
    *,
    sampler: str | None,
    steps: int,
    guidance: float,
    batch_size: int,
    deterministic: bool,
) -> Generator[Progress, None, None]:
    """Sample ``jobs`` in batches, hand each finished sample to ``sink``; one Progress per network step."""
    from medidiff.core.sampling import check_sampler, generate_batch

    try:
        sampler = check_sampler(model, sampler)
    except ValueError as exc:
        raise MedidiffError(str(exc)) from None
    dev = model.device
    per_call = 1 if (deterministic and dev.type == "cpu") else max(1, int(batch_size))
    base_affine = training_affine(model)
    spacing = tuple(model.config.spacing) or (1.0,) * model.config.spatial_dims
    total = len(jobs) * steps
    done_units = 0
    t0 = time.perf_counter()
    finished = 0
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
        size = batch[0].mask.shape if batch[0].mask is not None else tuple(model.config.image_size)
        labels = None
        if batch[0].label is not None:
            labels = torch.tensor([j.label for j in batch], dtype=torch.long, device=dev)
        masks = None
        if batch[0].mask is not None:
            masks = torch.from_numpy(np.stack([j.mask for j in batch])[:, None].astype(np.float32)).to(dev)
        inner = generate_batch(model, [j.seed for j in batch], sampler=sampler, steps=steps, class_labels=labels,
                               masks=masks, guidance=guidance, image_size=size)
        try:
            while True:
                with _batch_invariant(dev, deterministic):
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
        images = model.normaliser.inverse(x[:, 0].detach().float().cpu().numpy())
        for job, img in zip(batch, images):
            src = job.mask_scan
            geo_spacing, affine = (src.spacing, src.affine) if src is not None and src.shape == img.shape else (spacing, base_affine)
            meta = {"synthetic": True, "seed": int(job.seed), "index": int(job.index),
                    "label": job.label, "class_name": class_name(model, job.label),
                    "description": f"medidiff sample {job.index:05d}",
                    "model": str(model.path) if model.path else ""}
            scan = Scan(np.ascontiguousarray(img, dtype=np.float32), geo_spacing, affine, model.config.modality, meta)
            mask_scan = None
            if job.mask is not None:
                mask_scan = Scan(job.mask.astype(np.float32), geo_spacing, affine, model.config.modality,
                                 {"synthetic": True, "label_map": True, "index": int(job.index)})
            sink(job, scan, mask_scan, img)
            finished += 1
        preview = images[0] if images[0].ndim == 2 else images[0][images[0].shape[0] // 2]
        yield Progress(step=min(done_units, total), total=total, message=f"{finished}/{len(jobs)} samples",
                       preview=preview, values={"samples/s": finished / max(time.perf_counter() - t0, 1e-9)})


def _make_jobs(model: DiffusionModel, indices: Sequence[int], n: int, seed: int, labels: Any,
               masks: Sequence[Scan | np.ndarray] | None) -> list[_Job]:
    from medidiff.core.sampling import sample_seed

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


def generate(*args: Any, show_progress: bool = False, **kwargs: Any) -> GenerateResult:
    """Generate synthetic scans in memory; see :func:`generate_steps` for the arguments."""
    return run_to_end(generate_steps(*args, **kwargs), show=show_progress, desc="generate")


def generate_steps(
    model: DiffusionModel | str | Path,
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
    deterministic: bool = True,
) -> Generator[Progress, None, GenerateResult]:
    """Generate ``n`` synthetic scans, yielding a ``Progress`` per network step.

    Sample ``i`` uses the seed ``sample_seed(seed, start + i)``, so the result does not depend on
    ``batch_size`` and a run can be split into pieces with ``start``. ``labels``: ``None`` (a
    class-conditioned model cycles through its classes), one class (index or name) for all, or
    one per sample. ``masks``: label maps (Scans or arrays), one image per mask; ``n`` defaults
    to their number (with more samples than masks, masks repeat in order). Images are in scan
    units with the model's training spacing and orientation (a mask Scan's own geometry when
    given), ``meta["synthetic"] = True`` and the seed and label.
    """
    from medidiff.core.devices import resolve_device
    from medidiff.model_store.registry import resolve_model

    model = resolve_model(model, device=resolve_device(device))
    if n is None:
        if masks is None:
            raise MedidiffError("say how many samples to generate (n)")
        n = len(masks)
    if int(n) < 0:
        raise MedidiffError(f"n must be >= 0, got {n}")
    if steps < 1:
        raise MedidiffError(f"steps must be >= 1, got {steps}")
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
                            batch_size=batch_size, deterministic=deterministic)
    return GenerateResult(scans=scans, masks=out_masks if masks is not None else None,
                          seeds=[j.seed for j in jobs], labels=[j.label for j in jobs])


# -- data set folders --------------------------------------------------------------------------------
def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder (its files' names and hashes, sorted)."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(p.relative_to(path).as_posix().encode())
            h.update(sha256_path(p).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pixel_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").tobytes()).hexdigest()


def sample_name(index: int, format: str, spatial_dims: int) -> str:
    """File name of sample ``index`` (a DICOM volume is a series folder without suffix)."""
    if format == "dicom" and spatial_dims == 3:
        return f"sample_{index:05d}"
    return f"sample_{index:05d}{FORMAT_SUFFIX[format]}"


def mask_name(index: int, format: str) -> str:
    """Masks keep the images' format, except DICOM (a label map is no image series): NIfTI."""
    fmt = "nifti" if format == "dicom" else format
    return f"masks/sample_{index:05d}{FORMAT_SUFFIX[fmt]}"


def read_manifest_rows(path: Path) -> list[dict[str, str]]:
    """Complete rows of a manifest (part) file; a torn last line (crash mid-write) is ignored."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if all(row.get(k) not in (None, "") for k in ("file", "index", "sha256")) and row["index"].isdigit():
                rows.append(row)
    return rows


def _known_rows(out_dir: Path, world: int | None = None) -> dict[int, dict[str, str]]:
    """The recorded row per index, from manifest.csv and every part file.

    Within a file the last row wins; across files the part of the index's owner in this run
    (``index % world``) wins over the merged manifest and over parts left by earlier runs with
    another number of processes, whose rows may describe files since rewritten.
    """
    rows: dict[int, dict[str, str]] = {}
    owned: dict[int, dict[str, str]] = {}
    for path in [out_dir / "manifest.csv", *sorted(out_dir.glob("manifest.part-*.csv"))]:
        rank = path.name[len("manifest.part-"):-len(".csv")] if path.name.startswith("manifest.part-") else ""
        for row in read_manifest_rows(path):
            j = int(row["index"])
            if world is not None and rank.isdigit() and j % world == int(rank) and int(rank) < world:
                owned[j] = row
            else:
                rows[j] = row
    rows.update(owned)
    return rows


def _append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    if new:
        w.writeheader()
    w.writerow(row)
    # one write call per row, flushed to disk: a crash leaves at most one torn last line
    with open(path, "a", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def _shard() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def generate_dataset(*args: Any, show_progress: bool = False, **kwargs: Any) -> DatasetResult:
    """Write a synthetic data set folder; see :func:`generate_dataset_steps`."""
    return run_to_end(generate_dataset_steps(*args, **kwargs), show=show_progress, desc="generate")


def generate_dataset_steps(
    model: DiffusionModel | str | Path,
    out_dir: str | Path,
    n: int | None = None,
    *,
    format: str = "nifti",
    seed: int = 0,
    sampler: str | None = None,
    steps: int = 20,
    guidance: float = 1.0,
    labels: Any = None,
    masks_dir: str | Path | Sequence[str | Path | Scan] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    rank: int | None = None,
    world: int | None = None,
    overwrite: bool = False,
    command: str | None = None,
    real: str | Path | Sequence[str | Path | Scan] | None = None,
    training: str | Path | Sequence[str | Path | Scan] | None = None,
    threshold: float = 0.95,
    deterministic: bool = True,
) -> Generator[Progress, None, DatasetResult]:
    """Generate a resumable synthetic data set in ``out_dir`` (see the module docstring).

    ``n`` defaults to the number of masks in ``masks_dir``. ``rank``/``world`` default to the
    ``RANK``/``WORLD_SIZE`` environment variables set by ``torchrun``. An existing folder made
    with the same settings is resumed; one made with other settings (or holding other files) is
    refused unless ``overwrite``. ``real`` (and ``training``) add a quality and memorisation
    report (:func:`medidiff.tasks.quality.evaluate_generated`) to the data card.
    """
    from medidiff.core.devices import resolve_device
    from medidiff.model_store.registry import resolve_model

    fmt = str(format).lower()
    fmt = {"nii": "nifti", "dcm": "dicom", "tif": "tiff"}.get(fmt, fmt)
    if fmt not in FORMAT_SUFFIX:
        raise MedidiffError(f"unknown format {format!r}; choose one of {', '.join(FORMAT_SUFFIX)}")
    env_rank, env_world = _shard()
    rank = env_rank if rank is None else int(rank)
    world = env_world if world is None else int(world)
    if world < 1 or not 0 <= rank < world:
        raise MedidiffError(f"rank {rank} / world {world} is not a valid shard")
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % max(1, torch.cuda.device_count()))
    model = resolve_model(model, device=dev)
    masks: list[Scan] | None = None
    if masks_dir is not None:
        from medidiff.core.data import expand_inputs

        masks = expand_inputs(masks_dir if not isinstance(masks_dir, (str, Path)) else [masks_dir])
    if n is None:
        if masks is None:
            raise MedidiffError("say how many samples to generate (n)")
        n = len(masks)
    n = int(n)
    if n < 1:
        raise MedidiffError(f"n must be >= 1, got {n}")
    if fmt == "png" and model.config.spatial_dims == 3:
        raise MedidiffError("PNG holds 2D images; this is a 3D model: use --format nifti, tiff or dicom")
    out_dir = Path(out_dir).expanduser()
    if masks_dir is not None and isinstance(masks_dir, (str, Path)):
        from medidiff.io.atomic import check_output_path

        check_output_path(out_dir, overwrite=True, inputs=[masks_dir])  # never write into the masks' folder
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder; choose a folder for the data set")

    from medidiff.io.lock import folder_lock

    # one run per folder (per shard): a second run with other settings must not mix its files in
    with folder_lock(out_dir, f"rank{rank}", what="generate"):
        sampler_name = _sampler_name(model, sampler)
        all_indices = list(range(n))
        mine = [j for j in all_indices if j % world == rank]
        jobs = _make_jobs(model, mine, n, seed, labels, masks)
        expected = {job.index: _settings_row(model, job, seed, sampler_name, steps, guidance, masks) for job in jobs}

        known = _known_rows(out_dir, world) if out_dir.is_dir() else {}
        if out_dir.is_dir() and not overwrite:
            _check_resumable(out_dir, known, model, n, seed, sampler_name, steps, guidance, labels, masks, world)
        out_dir.mkdir(parents=True, exist_ok=True)
        part = out_dir / f"manifest.part-{rank}.csv"
        if overwrite:
            # start this shard afresh: its files, its part and any merged manifest go
            for job in jobs:
                _remove(out_dir / sample_name(job.index, fmt, model.config.spatial_dims))
                _remove(out_dir / mask_name(job.index, fmt))
            _remove(part)
            if rank == 0:
                _remove(out_dir / "manifest.csv")
                _remove(out_dir / "DATA_CARD.md")
                for old in out_dir.glob("manifest.part-*.csv"):  # parts of an earlier run with more processes
                    r = old.name[len("manifest.part-"):-len(".csv")]
                    if r.isdigit() and int(r) >= world:
                        _remove(old)
            known = {}
        _clean_partials(out_dir, [j.index for j in jobs])

        todo, skipped = [], 0
        for job in jobs:
            row = known.get(job.index)
            path = out_dir / sample_name(job.index, fmt, model.config.spatial_dims)
            want = expected[job.index]
            if row is not None and path.exists() and row["file"] == path.name and all(str(row.get(k)) == str(want[k]) for k in SETTINGS_FIELDS) \
                    and sha256_path(path) == row["sha256"] and (job.mask is None or (out_dir / mask_name(job.index, fmt)).is_file()):
                skipped += 1  # its row (in manifest.csv or a part file) still counts at merge time
                continue
            todo.append(job)

        written = 0

        def write(job: _Job, scan: Scan, mask: Scan | None, pixels: np.ndarray) -> None:
            nonlocal written
            from medidiff.io import save_scan

            path = out_dir / sample_name(job.index, fmt, model.config.spatial_dims)
            with warnings.catch_warnings():
                # PNG stores 16-bit codes; the data card says so once instead of a warning per file
                warnings.filterwarnings("ignore", message=".*PNG holds integers.*")
                if mask is not None:
                    mpath = out_dir / mask_name(job.index, fmt)
                    mpath.parent.mkdir(exist_ok=True)
                    save_scan(mask, mpath, overwrite=True)
                save_scan(scan, path, format=fmt, overwrite=True)
            row = dict(expected[job.index])
            row.update(file=path.name, sha256=sha256_path(path), pixel_sha256=_pixel_sha256(pixels))
            _append_row(part, row)
            written += 1

        if todo:
            yield from _sample_jobs(model, todo, write, sampler=sampler_name, steps=steps, guidance=guidance,
                                    batch_size=batch_size, deterministic=deterministic)
        yield Progress(step=1, total=1, message="manifest")
        manifest, card, quality = merge_dataset(out_dir, n, model=model, format=fmt, command=command, real=real,
                                                training=training, threshold=threshold, seed=seed, world=world)
        return DatasetResult(out_dir=out_dir, written=written, skipped=skipped, complete=manifest is not None,
                             manifest=manifest, data_card=card, quality=quality)


def _sampler_name(model: DiffusionModel, sampler: str | None) -> str:
    from medidiff.core.sampling import check_sampler

    try:
        return check_sampler(model, sampler)
    except ValueError as exc:
        raise MedidiffError(str(exc)) from None


def _condition(model: DiffusionModel, job: _Job, masks: list[Scan] | None) -> str:
    if job.mask is not None:
        src = job.mask_scan.meta.get("source_path") if job.mask_scan is not None else None
        return f"mask:{Path(src).name if src else job.index % len(masks or [1])}"
    if job.label is not None:
        return f"class:{class_name(model, job.label)}"
    return "none"


def _settings_row(model, job: _Job, seed: int, sampler: str, steps: int, guidance: float, masks) -> dict[str, Any]:
    return {"file": "", "index": job.index, "seed": job.seed, "condition": _condition(model, job, masks),
            "sampler": sampler, "steps": int(steps), "guidance": f"{float(guidance):g}", "sha256": "", "pixel_sha256": ""}


def _check_resumable(out_dir: Path, known: dict[int, dict[str, str]], model, n, seed, sampler, steps, guidance,
                     labels, masks, world) -> None:
    """Refuse a folder that holds something else than (part of) this very data set."""
    ours = {"manifest.csv", "DATA_CARD.md", "masks", "quality.png"}
    from medidiff.io.lock import is_lock_file

    foreign = [p.name for p in out_dir.iterdir()
               if p.name not in ours and not is_lock_file(p) and not p.name.startswith(("sample_", "manifest.part-", ".sample_", ".manifest", ".DATA_CARD", ".quality"))]
    if foreign:
        raise OutputError(f"{out_dir}: holds other files ({', '.join(sorted(foreign)[:3])}); choose an empty or new folder, or pass --overwrite")
    if not known:
        if any(p.name.startswith("sample_") for p in out_dir.iterdir()):
            raise OutputError(f"{out_dir}: holds samples but no manifest; pass --overwrite to regenerate them")
        return
    # compare the recorded settings with this run's for every recorded index (all shards)
    all_jobs = _make_jobs(model, [j for j in known if j < n], n, seed, labels, masks)
    for job in all_jobs:
        want = _settings_row(model, job, seed, sampler, steps, guidance, masks)
        row = known[job.index]
        diff = [k for k in SETTINGS_FIELDS if str(row.get(k)) != str(want[k])]
        if diff:
            raise OutputError(
                f"{out_dir}: sample {job.index} was made with other settings ({', '.join(f'{k}={row.get(k)}' for k in diff)}, "
                f"not {', '.join(str(want[k]) for k in diff)}); pass --overwrite or choose another folder"
            )


def _clean_partials(out_dir: Path, indices: Sequence[int]) -> None:
    """Remove leftover temporary files of this shard's samples (a crashed run's ``.part`` files)."""
    mine = {f".sample_{j:05d}" for j in indices}
    for folder in (out_dir, out_dir / "masks"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".sample_") and ".part" in p.name and p.name.split(".", 2)[1] and f".{p.name.split('.')[1]}" in mine:
                _remove(p)


def merge_dataset(
    out_dir: str | Path,
    n: int,
    *,
    model: DiffusionModel,
    format: str = "nifti",
    command: str | None = None,
    real: Any = None,
    training: Any = None,
    threshold: float = 0.95,
    seed: int | None = None,
    world: int | None = None,
) -> tuple[Path | None, Path | None, Any]:
    """Write ``manifest.csv`` and ``DATA_CARD.md`` if all ``n`` samples are present; else ``(None, None, None)``.

    Any process may call it; the one that finds the set complete writes both (atomically, the same
    content whoever writes). Rows for indices >= ``n`` (an earlier, larger run) are left out.
    """
    from medidiff.io.atomic import atomic_file

    out_dir = Path(out_dir)
    rows = _known_rows(out_dir, world)
    final = []
    for j in range(n):
        row = rows.get(j)
        if row is None or not (out_dir / row["file"]).exists():
            return None, None, None
        final.append({k: row.get(k, "") for k in MANIFEST_FIELDS})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(final)
    manifest = out_dir / "manifest.csv"
    with atomic_file(manifest, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue())
    quality = None
    if real is not None:
        from medidiff.tasks.quality import evaluate_generated

        samples = [out_dir / r["file"] for r in final]
        quality = evaluate_generated(samples, real, training, threshold=threshold, report=out_dir / "quality.png")
    card = write_data_card(out_dir, final, model=model, format=format, command=command, quality=quality, seed=seed)
    return manifest, card, quality


def default_command() -> str:
    """The command line of this process, for data cards."""
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])


_FORMAT_NOTES = {
    "nifti": ("NIfTI, float32", "NIfTI files hold the generated float32 values exactly."),
    "tiff": ("OME-TIFF, float32", "TIFF files hold the values exactly; their sha256 differs between runs (the writer stamps a date), "
             "`pixel_sha256` does not."),
    "png": ("16-bit PNG, values scaled to 0..65535 per image and undone by medidiff on reading",
            "PNG stores 16-bit codes per image: values are quantised (lossy) and other readers see codes, not scan units."),
    "dicom": ("DICOM, marked SYNTHETIC in SeriesDescription, ImageType DERIVED, fresh patient and study identifiers",
              "DICOM stores int16 with a rescale slope (quantised); files carry fresh UIDs and dates, so their sha256 "
              "differs between runs while `pixel_sha256` does not."),
}


def write_data_card(out_dir: Path, rows: Sequence[dict[str, str]], *, model: DiffusionModel, format: str,
                    command: str | None, quality: Any = None, seed: int | None = None) -> Path:
    """Write ``DIR/DATA_CARD.md`` from the template ``medidiff/templates/generated_data_card.md``."""
    from collections import Counter
    from importlib.resources import files
    from string import Template

    from medidiff.version import __version__
    from medidiff.io.atomic import atomic_file

    cfg = model.config
    tr = dict(cfg.training or {})
    counts = Counter(r["condition"] for r in rows)
    first = rows[0] if rows else {}
    sources = tr.get("sources") or []
    suffix = FORMAT_SUFFIX[format] if not (format == "dicom" and cfg.spatial_dims == 3) else "/ (a DICOM series folder)"
    norm = cfg.normaliser
    values = {
        "name": f"synthetic-{Path(str(model.path or 'model')).parent.name or 'medidiff'}-{out_dir.name}".lower().replace(" ", "-"),
        "version": __version__,
        "model_path": str(model.path) if model.path else "(in memory)",
        "model_summary": f"{cfg.spatial_dims}D, preset {cfg.preset}, {cfg.schedule.get('kind')} ({cfg.schedule.get('prediction')}), "
                         f"classes {cfg.class_names or cfg.num_classes or 'none'}, mask classes {cfg.mask_classes or 'none'}",
        "training_sources": ", ".join(str(s) for s in sources) or "not recorded in the model",
        "training_card": tr.get("data_card") or "not recorded in the model",
        "training_summary": ", ".join(f"{k}={tr[k]}" for k in ("steps", "batch_size", "training_images", "final_loss") if k in tr) or "not recorded",
        "modality": cfg.modality,
        "n": len(rows),
        "size": f"{len(rows)} images of {tuple(cfg.image_size)} voxels ({format})",
        "suffix": suffix,
        "format_note": _FORMAT_NOTES[format][0],
        "format_limit": _FORMAT_NOTES[format][1],
        "mask_note": "; `masks/sample_NNNNN...` holds the label map each image was conditioned on" if any(
            r["condition"].startswith("mask:") for r in rows) else "",
        "units": f"the normaliser maps [{norm['low']:.4g}, {norm['high']:.4g}] to the network's [-1, 1]",
        "shape": " x ".join(str(s) for s in cfg.image_size),
        "spacing": " x ".join(f"{s:g}" for s in (cfg.spacing or ())) or "1 (not recorded)",
        "orientation": cfg.orientation or "RAS (not recorded)",
        "counts": "| condition | images |\n|---|---|\n" + "\n".join(f"| {c} | {k} |" for c, k in sorted(counts.items())),
        "sampler": first.get("sampler", ""),
        "steps": first.get("steps", ""),
        "guidance": first.get("guidance", ""),
        "seed": str(seed) if seed is not None else "(see manifest.csv)",
        "command": command or default_command(),
        "quality": quality.to_markdown() if quality is not None else
        "## Quality\n\nNo quality report: run with `--real REAL_DIR` (and `--training TRAIN_DIR`) to add fidelity, diversity and memorisation numbers.",
    }
    text = Template(files("medidiff").joinpath("templates/generated_data_card.md").read_text()).safe_substitute(values)
    path = out_dir / "DATA_CARD.md"
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(text)
    return path
