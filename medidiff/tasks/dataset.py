"""Synthetic data set folders: ``generate_dataset`` and its generator twin ``generate_dataset_steps``.

::

    DIR/sample_00000.nii.gz       one file per sample (.dcm / folder for DICOM, .tif, .png)
    DIR/masks/sample_00000.nii.gz the mask a sample was conditioned on (mask-conditioned runs)
    DIR/manifest.csv              one row per file (:mod:`medidiff.io.manifest`)
    DIR/DATA_CARD.md              model, its training data and licence, command, counts, quality
                                  (:mod:`medidiff.reporting.data_card`)
    DIR/quality.png               with ``real``: a contact sheet of samples (no real pixels by default)

Each file is written atomically; each process appends one row per finished file to its own
``manifest.part-RANK.csv``. A rerun on the same folder skips samples whose file exists and
matches its recorded sha256 (and settings), regenerates the rest, and removes stale ``.part``
files of its own indices. Under ``torchrun`` rank ``r`` of ``w`` makes the indices ``j`` with
``j % w == r`` (RANK / WORLD_SIZE from the environment, no process group needed); every process,
when it finishes, tries to merge the parts, and the one that finds all ``n`` samples present
writes ``manifest.csv`` and ``DATA_CARD.md`` (identical content whoever writes it). A second run
on the same shard of a folder while one is writing it is refused (a folder lock).

Pixel and latent models (:class:`medidiff.core.latent_model.LatentModel`) write the same
folder through this one path; the manifest's ``options`` column records what else decides a
latent sample's pixels (``latent;clip_x0=...;size=...;latent_field=whole``, or ``windows`` with
the window and overlap), so a resume with other options is
refused like one with another seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, plain_twin
from medidiff.errors import MedidiffError, OutputError
from medidiff.io import Scan, manifest
from medidiff.reporting.data_card import FORMAT_SUFFIX, write_data_card
from medidiff.tasks.distributed import process_device, shard_from_env
from medidiff.tasks.quality import memorisation_threshold
from medidiff.tasks.generate import (AnyModel, Field, _Job, _make_jobs, _sample_jobs, class_name, load_generator,
                                     prior_of, sample_field)


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


def sample_name(index: int, format: str, spatial_dims: int) -> str:
    """File name of sample ``index`` (a DICOM volume is a series folder without suffix)."""
    if format == "dicom" and spatial_dims == 3:
        return f"sample_{index:05d}"
    return f"sample_{index:05d}{FORMAT_SUFFIX[format]}"


def mask_name(index: int, format: str) -> str:
    """Masks keep the images' format, except DICOM (a label map is no image series): NIfTI."""
    fmt = "nifti" if format == "dicom" else format
    return f"masks/sample_{index:05d}{FORMAT_SUFFIX[fmt]}"


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def generate_dataset_steps(
    model: AnyModel | str | Path,
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
    threshold: float | None = None,
    bit_identical: bool = False,
    real_pixels_in_report: bool = False,
    image_size: Sequence[int] | None = None,
    clip_x0: float | str | None = "auto",
) -> Generator[Progress, None, DatasetResult]:
    """Generate a resumable synthetic data set in ``out_dir`` (see the module docstring).

    ``n`` defaults to the number of masks in ``masks_dir``. ``rank``/``world`` default to the
    ``RANK``/``WORLD_SIZE`` environment variables set by ``torchrun``. An existing folder made
    with the same settings is resumed; one made with other settings (or holding other files) is
    refused unless ``overwrite``. ``real`` (and ``training``) add a quality and memorisation
    report (:func:`medidiff.tasks.quality.evaluate_generated`) to the data card; its
    ``quality.png`` shows no real or training pixels unless ``real_pixels_in_report``.
    ``bit_identical`` makes CPU files identical across batch sizes (see :mod:`medidiff.tasks.generate`).
    Only one run at a time may write a shard of a folder (a folder lock). The first event
    (step 0) comes once the settings are checked and the folder is locked, before any sampling.
    ``model`` may be a latent model (folder or loaded); ``image_size`` and ``clip_x0`` are
    :func:`medidiff.tasks.generate.sample_field`'s.
    """
    fmt = str(format).lower()
    fmt = {"nii": "nifti", "dcm": "dicom", "tif": "tiff"}.get(fmt, fmt)
    if fmt not in FORMAT_SUFFIX:
        raise MedidiffError(f"unknown format {format!r}; choose one of {', '.join(FORMAT_SUFFIX)}")
    memorisation_threshold(threshold)  # refuse a bad value before generating, not after
    env_rank, env_world = shard_from_env()
    rank = env_rank if rank is None else int(rank)
    world = env_world if world is None else int(world)
    if world < 1 or not 0 <= rank < world:
        raise MedidiffError(f"rank {rank} / world {world} is not a valid shard")
    if n is not None and int(n) < 1:
        raise MedidiffError(f"n must be >= 1, got {n}")
    if not isinstance(steps, int) or steps < 1:
        raise MedidiffError(f"steps must be an integer >= 1, got {steps!r}")
    dev = process_device(device, rank, world)
    model = load_generator(model, dev)
    field = sample_field(model, image_size, clip_x0)
    dims = prior_of(model).config.spatial_dims
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
    if fmt == "png" and dims == 3:
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
        expected = {job.index: _settings_row(model, job, seed, sampler_name, steps, guidance, masks, field) for job in jobs}

        known = manifest.known_rows(out_dir, world) if out_dir.is_dir() else {}
        if out_dir.is_dir() and not overwrite:
            _check_resumable(out_dir, known, model, n, seed, sampler_name, steps, guidance, labels, masks, world, field)
        out_dir.mkdir(parents=True, exist_ok=True)
        part = manifest.part_path(out_dir, rank)
        if overwrite:
            # start this shard afresh: its files, its part and any merged manifest go
            for job in jobs:
                _remove(out_dir / sample_name(job.index, fmt, dims))
                _remove(out_dir / mask_name(job.index, fmt))
            _remove(part)
            if rank == 0:
                _remove(out_dir / "manifest.csv")
                _remove(out_dir / "DATA_CARD.md")
                for old in out_dir.glob(f"{manifest.PART_PREFIX}*.csv"):  # parts of an earlier run with more processes
                    r = manifest.part_rank(old)
                    if r is not None and r >= world:
                        _remove(old)
            known = {}
        _clean_partials(out_dir, [j.index for j in jobs])

        yield Progress(step=0, total=len(mine) * int(steps), message="checking finished files")
        todo, skipped = [], 0
        for job in jobs:
            row = known.get(job.index)
            path = out_dir / sample_name(job.index, fmt, dims)
            want = expected[job.index]
            if row is not None and path.exists() and row["file"] == path.name and not manifest.settings_differ(row, want) \
                    and manifest.sha256_path(path) == row["sha256"] and (job.mask is None or (out_dir / mask_name(job.index, fmt)).is_file()):
                skipped += 1  # its row (in manifest.csv or a part file) still counts at merge time
                continue
            todo.append(job)

        written = 0

        def write(job: _Job, scan: Scan, mask: Scan | None, pixels: np.ndarray) -> None:
            nonlocal written
            from medidiff.io import save_scan

            path = out_dir / sample_name(job.index, fmt, dims)
            with warnings.catch_warnings():
                # PNG stores 16-bit codes; the data card says so once instead of a warning per file
                warnings.filterwarnings("ignore", message=".*PNG holds integers.*")
                if mask is not None:
                    mpath = out_dir / mask_name(job.index, fmt)
                    mpath.parent.mkdir(exist_ok=True)
                    save_scan(mask, mpath, overwrite=True)
                save_scan(scan, path, format=fmt, overwrite=True)
            row = dict(expected[job.index])
            row.update(file=path.name, sha256=manifest.sha256_path(path), pixel_sha256=manifest.pixel_sha256(pixels))
            manifest.append_row(part, row)
            written += 1

        if todo:
            # Batches lie on a fixed grid over *all* of this shard's jobs, and a batch with any
            # missing file is computed whole (only its missing files are written). So a resumed
            # run computes exactly the batches an uninterrupted one did, and batched CPU files
            # stay bit-identical across kill and resume (on the same machine and thread count).
            per_call = 1 if (bit_identical and model.device.type == "cpu") else max(1, int(batch_size))
            missing = {job.index for job in todo}
            chunks = [jobs[k:k + per_call] for k in range(0, len(jobs), per_call)]
            wanted = [job for chunk in chunks if any(j.index in missing for j in chunk) for job in chunk]

            def write_missing(job: _Job, scan: Scan, mask: Scan | None, pixels: np.ndarray) -> None:
                if job.index in missing:
                    write(job, scan, mask, pixels)

            yield from _sample_jobs(model, wanted, write_missing, sampler=sampler_name, steps=steps, guidance=guidance,
                                    batch_size=batch_size, bit_identical=bit_identical, field=field)
        yield Progress(step=1, total=1, message="manifest")
        merged, card, quality = merge_dataset(out_dir, n, model=model, format=fmt, command=command, real=real,
                                              training=training, threshold=threshold, seed=seed, world=world,
                                              real_pixels_in_report=real_pixels_in_report)
        return DatasetResult(out_dir=out_dir, written=written, skipped=skipped, complete=merged is not None,
                             manifest=merged, data_card=card, quality=quality)


def _sampler_name(model: AnyModel, sampler: str | None) -> str:
    from medidiff.core.sampling import check_sampler

    try:
        return check_sampler(prior_of(model), sampler)
    except ValueError as exc:
        raise MedidiffError(str(exc)) from None


def _condition(model: AnyModel, job: _Job, masks: list[Scan] | None) -> str:
    if job.mask is not None:
        src = job.mask_scan.meta.get("source_path") if job.mask_scan is not None else None
        return f"mask:{Path(src).name if src else job.index % len(masks or [1])}"
    if job.label is not None:
        return f"class:{class_name(prior_of(model), job.label)}"
    return "none"


def _settings_row(model, job: _Job, seed: int, sampler: str, steps: int, guidance: float, masks,
                  field: Field) -> dict[str, Any]:
    return {"file": "", "index": job.index, "seed": job.seed, "condition": _condition(model, job, masks),
            "sampler": sampler, "steps": int(steps), "guidance": f"{float(guidance):g}", "options": field.options(model),
            "sha256": "", "pixel_sha256": ""}


def _check_resumable(out_dir: Path, known: dict[int, dict[str, str]], model, n, seed, sampler, steps, guidance,
                     labels, masks, world, field: Field) -> None:
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
        want = _settings_row(model, job, seed, sampler, steps, guidance, masks, field)
        row = known[job.index]
        diff = manifest.settings_differ(row, want)
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
    model: AnyModel,
    format: str = "nifti",
    command: str | None = None,
    real: Any = None,
    training: Any = None,
    threshold: float | None = None,
    seed: int | None = None,
    world: int | None = None,
    real_pixels_in_report: bool = False,
) -> tuple[Path | None, Path | None, Any]:
    """Write ``manifest.csv`` and ``DATA_CARD.md`` if all ``n`` samples are present; else ``(None, None, None)``.

    Any process may call it; the one that finds the set complete writes both (atomically, the same
    content whoever writes). Rows for indices >= ``n`` (an earlier, larger run) are left out.
    """
    out_dir = Path(out_dir)
    rows = manifest.known_rows(out_dir, world)
    final = []
    for j in range(n):
        row = rows.get(j)
        if row is None or not (out_dir / row["file"]).exists():
            return None, None, None
        final.append({k: row.get(k, "") for k in manifest.MANIFEST_FIELDS})
    merged = manifest.write_manifest(out_dir / "manifest.csv", final)
    quality = None
    if real is not None:
        from medidiff.tasks.quality import evaluate_generated

        samples = [out_dir / r["file"] for r in final]
        quality = evaluate_generated(samples, real, training, threshold=threshold, report=out_dir / "quality.png",
                                     real_pixels=real_pixels_in_report)
    card = write_data_card(out_dir, final, model=model, format=format, command=command, quality=quality, seed=seed)
    return merged, card, quality


generate_dataset = plain_twin(generate_dataset_steps, "generate")
