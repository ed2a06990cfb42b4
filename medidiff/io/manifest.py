"""The ``manifest.csv`` of a generated data set: one row per file, written and read without torch.

Columns: ``file, index, seed, condition, sampler, steps, guidance, options, sha256, pixel_sha256``.
``options`` holds what else decides the pixels, as ``key=value`` parts joined by ``;`` (a latent
model's ``latent;clip_x0=3.91;size=96x128;latent_field=whole``, or with
``latent_field=windows;latent_window=24x32;overlap=0.5`` when the whole latent did not fit and
was sampled in half-overlapping windows of the prior's training latent); it is empty for a pixel
model's defaults, and manifests from before it (no such column) read as empty. Rows from before
``latent_field`` was recorded match a run whatever its latent field (they cannot say).
``sha256`` is the file's (a DICOM series folder: its files' names and hashes); ``pixel_sha256``
is the sha256 of the generated float32 array, equal across formats and runs even where the file
is not (DICOM UIDs, TIFF dates). While a run is going each process appends to its own
``manifest.part-RANK.csv``, one flushed write per row, so a crash leaves at most one torn last
line, which the reader ignores.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from medidiff.io.hashing import sha256_path  # noqa: F401 (manifest.sha256_path is public)

MANIFEST_FIELDS = ["file", "index", "seed", "condition", "sampler", "steps", "guidance", "options", "sha256",
                   "pixel_sha256"]
# columns that must agree for a recorded file to count as "this run's" sample
SETTINGS_FIELDS = ["seed", "condition", "sampler", "steps", "guidance", "options"]
PART_PREFIX = "manifest.part-"


# ``options`` parts that say how a latent field was sampled; absent from rows written before they were recorded
LATENT_FIELD_KEYS = ("latent_field", "latent_window", "overlap")


def option_parts(options: str | None) -> dict[str, str]:
    """``"latent;clip_x0=3.91;size=96x128"`` -> ``{"latent": "", "clip_x0": "3.91", "size": "96x128"}``."""
    parts = {}
    for part in str(options or "").split(";"):
        if part:
            key, _, value = part.partition("=")
            parts[key] = value
    return parts


def settings_differ(row: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """The ``SETTINGS_FIELDS`` where a recorded ``row`` and this run's ``want`` disagree (missing = empty)."""
    def text(v: Any) -> str:
        return "" if v is None else str(v)

    def same_options(recorded: Any, wanted: Any) -> bool:
        have, need = option_parts(text(recorded)), option_parts(text(wanted))
        if "latent_field" not in have:  # an older row: it does not say how its latent was sampled
            need = {k: v for k, v in need.items() if k not in LATENT_FIELD_KEYS}
        return have == need

    return [k for k in SETTINGS_FIELDS
            if not (same_options(row.get(k), want.get(k)) if k == "options" else text(row.get(k)) == text(want.get(k)))]


def pixel_sha256(array: np.ndarray) -> str:
    """sha256 of an array's values as little-endian float32."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").tobytes()).hexdigest()


def part_path(out_dir: Path, rank: int) -> Path:
    """The part file process ``rank`` appends to."""
    return out_dir / f"{PART_PREFIX}{rank}.csv"


def part_rank(path: Path) -> int | None:
    """The rank of a part file's name, None for any other file."""
    if not path.name.startswith(PART_PREFIX) or not path.name.endswith(".csv"):
        return None
    r = path.name[len(PART_PREFIX):-len(".csv")]
    return int(r) if r.isdigit() else None


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


def known_rows(out_dir: Path, world: int | None = None) -> dict[int, dict[str, str]]:
    """The recorded row per index, from manifest.csv and every part file.

    Within a file the last row wins; across files the part of the index's owner in this run
    (``index % world``) wins over the merged manifest and over parts left by earlier runs with
    another number of processes, whose rows may describe files since rewritten.
    """
    rows: dict[int, dict[str, str]] = {}
    owned: dict[int, dict[str, str]] = {}
    for path in [out_dir / "manifest.csv", *sorted(out_dir.glob(f"{PART_PREFIX}*.csv"))]:
        rank = part_rank(path)
        for row in read_manifest_rows(path):
            j = int(row["index"])
            if world is not None and rank is not None and j % world == rank and rank < world:
                owned[j] = row
            else:
                rows[j] = row
    rows.update(owned)
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row (header first), flushed to disk in one write."""
    new = not path.exists() or path.stat().st_size == 0
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    if new:
        w.writeheader()
    w.writerow(row)
    with open(path, "a", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def write_manifest(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write a complete ``manifest.csv`` atomically."""
    from medidiff.io.atomic import atomic_file

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: r.get(k, "") for k in MANIFEST_FIELDS} for r in rows)
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue())
    return path
