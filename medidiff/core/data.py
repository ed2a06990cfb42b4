"""Training data: scan files and folders -> normalised 2D slices or 3D patches, batch by batch.

A batch is a pure function of ``(seed, step)``: which images, which crops, which
augmentations. That is what makes a stopped run resume exactly, and a run split over K
processes (each taking its share of the same global batch) equal a one-process run.
Scans are loaded and normalised once and kept in memory (the cache).

Crops are uniform over the image, or (``crop_foreground = p``) with probability
``p`` centred on a voxel drawn uniformly from the foreground (brighter than -0.8 in network
units), like MONAI's ``RandCropByPosNegLabel`` with the intensity foreground as its label. Why:
on a CT slice only about a third of the voxels are body, so about half of uniform 32x32 crops
are nearly all air, and half of a small training budget teaches the model what air looks like.

Coarser voxels (``spacing_augment = F > 1``): half the crops are cut from a region ``s`` times
the crop size (``s`` log-uniform in ``[1, F]``, one factor for every axis, no larger than the
image allows) and shrunk to the crop size with anti-aliasing (skimage ``resize``, linear; masks
nearest). The crop is then the same anatomy at ``s`` times the voxel size. Why: a denoiser's
prior is a prior of image structure *per voxel*; a model trained at 0.48 mm sees a 0.66 mm CT
slice as anatomy shrunk by 1.4x and denoises it worse (training on the slice resampled to the
test spacing gained 0.14-0.21 dB on the CT benchmark). Only coarsening is drawn: shrinking a
clean image gives a clean image at larger voxels, while enlarging one invents a smoothness no
real finer scan has. The noise is added after the crop (by the diffusion forward process), so it
stays white at every scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medidiff.errors import MedidiffError, ScanError
from medidiff.core.intensity import Normaliser
from medidiff.io import Scan, load_scan
from medidiff.io.formats import SCAN_SUFFIXES, is_dicom_folder as is_dicom_series_folder  # one home: io



def expand_inputs(data: Sequence[str | Path | Scan] | str | Path | Scan) -> list[Scan]:
    """Load scans from files, folders (every scan inside; a DICOM series folder is one scan) or Scans."""
    if isinstance(data, (str, Path, Scan)):
        data = [data]
    scans: list[Scan] = []
    for item in data:
        if isinstance(item, Scan):
            scans.append(item)
            continue
        scans.extend(load_scan(p) for p in scan_paths([item]))
    if not scans:
        raise MedidiffError("no training scans were given")
    return scans


def scan_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The scan files/series folders that ``paths`` stand for, in the order ``expand_inputs`` loads them.

    A folder that is not itself a DICOM series contributes its scans sorted by name.
    """
    out: list[Path] = []
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise ScanError(path, "no such file or folder")
        if path.is_dir() and not is_dicom_series_folder(path):
            children = sorted(p for p in path.iterdir() if p.name.lower().endswith(SCAN_SUFFIXES) or (p.is_dir() and is_dicom_series_folder(p)))
            if not children:
                raise ScanError(path, f"folder holds no scans (looked for {', '.join(SCAN_SUFFIXES)} files and DICOM series folders)")
            out.extend(children)
        else:
            out.append(path)
    return out


def default_slice_axis(scan: Scan) -> int:
    """The array axis with the coarsest spacing (ties: the first, i.e. z)."""
    return int(np.argmax(scan.spacing))


FOREGROUND_LEVEL = -0.8  # network units: the level of the empty-slice test and of foreground crops
FOREGROUND_CENTRES = 65536  # at most this many candidate centres per image (evenly strided), to bound memory


def foreground_fraction(normalised: np.ndarray, level: float = FOREGROUND_LEVEL) -> float:
    """Share of voxels brighter than ``level`` (network units): the empty-slice test."""
    return float((normalised > level).mean())


def foreground_centres(img: np.ndarray) -> np.ndarray:
    """Flat indices of ``img``'s foreground voxels (brighter than :data:`FOREGROUND_LEVEL`), at most
    :data:`FOREGROUND_CENTRES` of them, evenly strided (a volume's foreground can be millions)."""
    flat = np.flatnonzero(img > FOREGROUND_LEVEL)
    if flat.size > FOREGROUND_CENTRES:
        flat = flat[:: -(-flat.size // FOREGROUND_CENTRES)]
    return flat


def foreground_start(img: np.ndarray, size: Sequence[int], rng: np.random.Generator,
                     centres: np.ndarray | None = None) -> tuple[int, ...] | None:
    """Window start of a ``size`` crop of ``img`` centred (clipped to the image) on a random foreground voxel.

    The centre is drawn uniformly from ``centres`` (default :func:`foreground_centres`); None when
    the image has no foreground, or is smaller than ``size`` on some axis (then it is padded,
    and there is no window to choose).
    """
    if any(s < t for s, t in zip(img.shape, size)):
        return None
    centres = foreground_centres(img) if centres is None else centres
    if centres.size == 0:
        return None
    centre = np.unravel_index(int(centres[int(rng.integers(0, centres.size))]), img.shape)
    return tuple(int(min(max(c - t // 2, 0), s - t)) for c, s, t in zip(centre, img.shape, size))


def fit_to_size(
    arrays: Sequence[np.ndarray], size: Sequence[int], rng: np.random.Generator | None, fills: Sequence[float]
) -> list[np.ndarray]:
    """Pad (with ``fills``) or crop same-shaped ``arrays`` to ``size`` with one crop for all.

    The crop is random when ``rng`` is given, else centred.
    """
    shape = arrays[0].shape
    pads = []
    for s, t in zip(shape, size):
        extra = max(t - s, 0)
        pads.append((extra // 2, extra - extra // 2))
    padded_shape = [s + a + b for s, (a, b) in zip(shape, pads)]
    starts = [int(rng.integers(0, s - t + 1)) if rng is not None else (s - t) // 2 for s, t in zip(padded_shape, size)]
    window = tuple(slice(st, st + t) for st, t in zip(starts, size))
    out = []
    for arr, fill in zip(arrays, fills):
        if any(p != (0, 0) for p in pads):
            arr = np.pad(arr, pads, mode="constant", constant_values=fill)
        out.append(arr[window])
    return out


@dataclass
class TrainingData:
    """In-memory training images (network units) and their conditions, ready to batch."""

    images: list[np.ndarray]
    normaliser: Normaliser
    spatial_dims: int
    image_size: tuple[int, ...]
    labels: list[int] | None = None
    masks: list[np.ndarray] | None = None
    spacing: tuple[float, ...] = ()
    orientation: str = ""
    modality: str = "OT"
    slice_axis: int | None = None
    sources: list[str] = field(default_factory=list)
    augment: bool = True
    contrast: float = 1.0
    crop_foreground: float = 0.0
    spacing_augment: float = 1.0
    _centres: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """The global batch of ``step``: a pure function of (seed, step)."""
        rng = np.random.default_rng([seed, step, 1])
        idx = rng.integers(0, len(self.images), size=batch_size)
        xs, ms = [], []
        for j, i in enumerate(idx):
            srng = np.random.default_rng([seed, step, 2, j])
            img = self.images[i]
            mask = self.masks[i] if self.masks is not None else None
            start = None
            # its own stream, so that spacing_augment=1 keeps the exact batches of earlier runs
            region = coarser_region(img.shape, self.image_size, self.spacing_augment,
                                    np.random.default_rng([seed, step, 4, j]))
            if self.crop_foreground > 0 and img.shape != region:
                # its own stream, so that crop_foreground=0 keeps the exact batches of earlier runs
                frng = np.random.default_rng([seed, step, 3, j])
                if frng.random() < self.crop_foreground:
                    if int(i) not in self._centres:  # found once per image, then reused
                        self._centres[int(i)] = foreground_centres(img)
                    start = foreground_start(img, region, frng, self._centres[int(i)])
            if start is not None:
                window = tuple(slice(a, a + t) for a, t in zip(start, region))
                img = img[window]
                mask = mask[window] if mask is not None else None
            elif img.shape != region:
                parts = fit_to_size([img] if mask is None else [img, mask], region, srng, [float(img.min()), 0.0])
                img = parts[0]
                mask = parts[1] if mask is not None else None
            if region != self.image_size:
                img, mask = shrink_to(img, mask, self.image_size)
            if self.augment:
                img, mask = augment(img, mask, srng, contrast=self.contrast)
            xs.append(img[None])
            if mask is not None:
                ms.append(mask[None])
        out = {"images": np.stack(xs).astype(np.float32)}
        if self.labels is not None:
            out["labels"] = np.asarray([self.labels[i] for i in idx], dtype=np.int64)
        if ms:
            out["masks"] = np.stack(ms).astype(np.float32)
        return out


def coarser_region(shape: Sequence[int], size: Sequence[int], factor: float,
                   rng: np.random.Generator) -> tuple[int, ...]:
    """The region a crop of ``size`` is cut from: ``size`` itself, or (half the time, when
    ``factor > 1``) ``s * size`` with ``s`` log-uniform in ``[1, factor]``, capped so the region fits
    ``shape`` wherever ``size`` does (module docstring: coarser voxels)."""
    size = tuple(int(t) for t in size)
    if factor <= 1.0:
        return size
    take, draw = rng.random(), rng.uniform(0.0, np.log(factor))
    if take >= 0.5:
        return size
    room = min(max(int(n), t) / t for n, t in zip(shape, size))
    s = min(float(np.exp(draw)), room)
    return tuple(max(t, int(round(t * s))) for t in size)


def shrink_to(img: np.ndarray, mask: np.ndarray | None, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """``img`` resized to ``size`` with anti-aliasing (linear), ``mask`` with nearest labels."""
    return resize_array(img, size, order=1), None if mask is None else resize_array(mask, size, order=0)


def resize_array(arr: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """``arr`` resized to ``shape`` (skimage), anti-aliased when interpolating (``order > 0``); labels: ``order=0``."""
    from skimage.transform import resize

    return resize(arr, tuple(int(n) for n in shape), order=order, preserve_range=True,
                  anti_aliasing=order > 0).astype(np.float32)


def augment(img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator,
            contrast: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """Flips, a small affine and intensity jitter (MONAI transforms), seeded by ``rng``.

    ``contrast < 1`` adds contrast augmentation: half the images are compressed by a factor drawn
    log-uniformly from ``[contrast, 1]`` about a level drawn uniformly from ``[-1, 1]`` (a
    compressed image stays inside the normalised range). Why: a per-scan normaliser maps each
    scan's own dark and bright ends to -1 and 1, so a scan with brighter structures than the
    training scans (a bright cell, a vessel, a marker) shows its other tissue at a lower
    contrast than the model ever saw; the prior then has to know lower-contrast tissue too.
    """
    from monai.transforms import RandAffine, RandFlip

    seed = int(rng.integers(0, 2**31 - 1))
    spatial = img.ndim
    flip = RandFlip(prob=0.5, spatial_axis=spatial - 1)
    flip.set_random_state(seed)
    affine = RandAffine(prob=0.5, rotate_range=[0.1] * (1 if spatial == 2 else 3), scale_range=[0.05] * spatial,
                        padding_mode="border", mode="bilinear")
    affine.set_random_state(seed + 1)
    x = img[None]
    flip.randomize(None)
    affine.randomize(None)
    x = np.asarray(affine(flip(x, randomize=False), randomize=False))
    m = None
    if mask is not None:
        # the same geometric transform, nearest neighbour for labels
        m = np.asarray(flip(mask[None], randomize=False))
        m = np.asarray(affine(m, mode="nearest", randomize=False))[0]
    # intensity jitter: small scale and shift in network units
    scale = 1.0 + rng.uniform(-0.05, 0.05)
    shift = rng.uniform(-0.05, 0.05)
    out = x[0] * scale + shift
    if contrast < 1.0:
        # drawn after the jitter, so a model trained without it keeps its exact batches
        squeeze, level, factor = rng.uniform(), rng.uniform(-1.0, 1.0), float(np.exp(rng.uniform(np.log(contrast), 0.0)))
        if squeeze < 0.5:
            out = level + factor * (out - level)
    return out.astype(np.float32), m


def prepare_training_data(
    data: Sequence[str | Path | Scan] | str | Path | Scan,
    *,
    spatial_dims: int = 2,
    image_size: Sequence[int] | int = 64,
    slice_axis: int | None = None,
    normaliser: Normaliser | None = None,
    ct_window: str | None = None,
    labels: Sequence[int] | None = None,
    masks: Sequence[str | Path | Scan] | None = None,
    min_foreground: float = 0.05,
    target_spacing: Sequence[float] | None = None,
    augment: bool = True,
    modality: str | None = None,
    contrast: float = 1.0,
    crop_foreground: float = 0.0,
    spacing_augment: float = 1.0,
) -> TrainingData:
    """Load, optionally resample, normalise and slice (2D) or keep whole (3D) the training scans.

    ``labels`` gives one class per scan; ``masks`` one label map per scan (same shape).
    ``contrast``: the smallest factor of the contrast augmentation (1: none; see :func:`augment`).
    ``crop_foreground``: the share of crops centred on the foreground (module docstring).
    ``spacing_augment``: the largest voxel-size factor of the coarser-voxel crops (1: none; module docstring).
    """
    scans = expand_inputs(data)
    mask_scans = expand_inputs(masks) if masks is not None else None
    if labels is not None and len(labels) != len(scans):
        raise MedidiffError(f"got {len(labels)} labels for {len(scans)} scans; give one label per scan")
    if mask_scans is not None and len(mask_scans) != len(scans):
        raise MedidiffError(f"got {len(mask_scans)} masks for {len(scans)} scans; give one mask per scan")
    if target_spacing is not None:
        scans = [resample(s, target_spacing) for s in scans]
        if mask_scans is not None:
            mask_scans = [resample(m, target_spacing, order=0) for m in mask_scans]
    # the files may not record the modality (NIfTI, PNG): a given one wins, and picks the normaliser
    modality = modality or scans[0].modality
    if normaliser is None:
        normaliser = Normaliser.for_modality([s.array for s in scans], modality, ct_window)
    size = (image_size,) * spatial_dims if isinstance(image_size, int) else tuple(image_size)
    images: list[np.ndarray] = []
    out_labels: list[int] | None = [] if labels is not None else None
    out_masks: list[np.ndarray] | None = [] if mask_scans is not None else None
    axis_used = None
    for k, scan in enumerate(scans):
        # a per-scan rule (the default for modalities without absolute units) maps each scan on its
        # own, exactly as denoising maps each input scan; fixed maps (CT windows, given) apply as they are
        scan_norm = normaliser.for_scan(scan.array, source=str(scan.meta.get("source_path") or f"training scan {k + 1}")) \
            if normaliser.kind == "foreground" else normaliser
        arr = scan_norm.forward(scan.array)
        marr = None
        if mask_scans is not None:
            marr = np.rint(mask_scans[k].array).astype(np.float32)
            if marr.shape != arr.shape:
                raise ScanError(mask_scans[k].meta.get("source_path"), f"mask shape {marr.shape} differs from its scan's {arr.shape}")
        if spatial_dims == 2:
            if arr.ndim == 2:
                parts = [(arr, marr)]
            else:
                axis = default_slice_axis(scan) if slice_axis is None else slice_axis
                axis_used = axis
                parts = [(np.take(arr, i, axis=axis), None if marr is None else np.take(marr, i, axis=axis)) for i in range(arr.shape[axis])]
            for img, m in parts:
                if foreground_fraction(img) < min_foreground:
                    continue
                images.append(np.ascontiguousarray(img))
                if out_labels is not None:
                    out_labels.append(int(labels[k]))
                if out_masks is not None:
                    out_masks.append(np.ascontiguousarray(m))
        else:
            if arr.ndim != 3:
                raise ScanError(scan.meta.get("source_path"), "3D training needs volumes; this scan is 2D (use --dims 2)")
            images.append(arr)
            if out_labels is not None:
                out_labels.append(int(labels[k]))
            if out_masks is not None:
                out_masks.append(marr)
    if not images:
        raise MedidiffError("no usable training images: every slice failed the foreground test (lower min_foreground?)")
    ref = scans[0]
    spacing = ref.spacing
    if spatial_dims == 2 and ref.ndim == 3 and axis_used is not None:
        spacing = tuple(s for i, s in enumerate(ref.spacing) if i != axis_used)
    return TrainingData(
        images=images, normaliser=normaliser, spatial_dims=spatial_dims, image_size=size,
        labels=out_labels, masks=out_masks, spacing=spacing, orientation=ref.orientation if ref.ndim == 3 else "",
        modality=modality, slice_axis=axis_used, sources=[str(s.meta.get("source_path", "<memory>")) for s in scans],
        augment=augment, contrast=contrast, crop_foreground=crop_foreground, spacing_augment=spacing_augment,
    )


def resample(scan: Scan, spacing: Sequence[float], order: int = 1) -> Scan:
    """Resample a scan to ``spacing`` (array order); the affine is rescaled to match."""
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != scan.ndim:
        raise ValueError(f"target spacing {spacing} does not match a {scan.ndim}D scan")
    shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(scan.shape, scan.spacing, spacing))
    arr = resize_array(scan.array, shape, order=order)
    factors = [old_n / new_n for old_n, new_n in zip(scan.shape, shape)]
    return Scan(arr, tuple(s * f for s, f in zip(scan.spacing, factors)), regridded_affine(scan.affine, factors),
                scan.modality, scan.meta)


def regridded_affine(affine: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """The affine of the same field on voxels ``factors`` (array axis order) times the size (< 1: finer).

    Voxels stay cell-centred: the first new voxel's centre sits ``(f - 1) / 2`` old voxels in from
    the old first centre, so a block-averaged (or upsampled) image covers exactly the same field.
    """
    out = np.asarray(affine, dtype=np.float64).copy()
    first = np.zeros(4)
    first[3] = 1.0
    for i, f in enumerate(reversed([float(v) for v in factors])):
        out[:3, i] *= f
        first[i] = (f - 1) / 2
    out[:3, 3] = (np.asarray(affine, dtype=np.float64) @ first)[:3]
    return out


def block_mean(scan: Scan, factor: int) -> Scan:
    """``scan`` averaged over ``factor``-sided blocks (a low-resolution copy of the same field of view).

    Trailing voxels that do not fill a block are dropped first. The low-resolution image a
    super-resolution model is trained to upsample (:meth:`medidiff.core.model.DiffusionModel.downsample`
    does the same on network batches).
    """
    f = int(factor)
    if f < 1:
        raise ValueError(f"block_mean: factor must be >= 1, got {factor!r}")
    shape = tuple(n // f for n in scan.shape)
    if min(shape) < 1:
        raise ValueError(f"block_mean: a {' x '.join(map(str, scan.shape))} scan is smaller than one {f}-voxel block")
    arr = scan.array[tuple(slice(0, n * f) for n in shape)]
    blocks = arr.reshape([v for n in shape for v in (n, f)]).mean(axis=tuple(range(1, 2 * len(shape), 2)))
    return Scan(blocks.astype(np.float32), tuple(s * f for s in scan.spacing), regridded_affine(scan.affine, [f] * scan.ndim),
                scan.modality, scan.meta)
