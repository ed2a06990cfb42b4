"""Quality and memorisation report of a generated image set: ``evaluate_generated``.

* fidelity: KID on :func:`medidiff.core.metrics.image_features` (both sets mapped to [0, 1] by
  the real images' 0.5-99.5 percentiles, so absolute intensity counts) with a bootstrap spread
  that resamples both sets (:func:`medidiff.core.metrics.distributions.kid_bootstrap`: it widens
  as the sets shrink), next to the real-vs-real floor of the same run (two random halves of the
  real set, :func:`~medidiff.core.metrics.distributions.kid_floor`) and, with training images,
  the training-vs-real KID (what a model that reproduced its training set exactly would score);
  and the Jensen-Shannon distance of the pooled intensity histograms (:func:`metrics.histogram_distance`);
* diversity: mean pairwise MS-SSIM among the samples and among the real images (lower = more
  diverse; a set of near-copies of each other scores near 1);
* memorisation, rule ``structure-ncc`` (:mod:`medidiff.core.metrics.memorisation`, where the maths
  is): for each sample, the training image, shift and flip with the highest NCC of *structure*:
  difference-of-Gaussians detail (1.5-3 px) inside the training image's foreground, the outline
  left out. A copy scores near 1 (exactly 1 up to brightness and contrast; >= 0.97 with 5 % noise
  or a 0.7 px blur); samples at or above ``threshold`` (default 0.95) are flagged. Whole-image NCC
  of intensities (the rule before) was dominated by the brain outline: neighbouring real slices
  and blurred look-alikes scored 0.93-0.99 like copies. Measured in ``benchmarks/memorisation.py``.

Image sets are compared as 2D images of the samples' size. Volumes contribute their slices along
the coarsest-spacing axis (what ``medidiff train --dims 2`` slices by default); constant slices
(empty background) are skipped. Real images larger than the samples are cut into tiles of the
sample size (a grid, no overlap), which matches the random crops a 2D model is trained on. Each
sample is searched over *every* shift in each training image (a training image of the samples'
size: shifts up to 8 pixels past its edges) and also left-right flipped (training augments with
flips), so a memorised random crop is found wherever it came from.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.core.metrics.memorisation import DEFAULT_RULE, RULE, StructureRule
from medidiff.errors import MedidiffError
from medidiff.io import Scan

# what the KID's features can and cannot see; printed with every report that shows a KID
FEATURES_NOTE = ("KID features are hand-made (intensity histogram, gradient orientations at 16/32 px, power "
                 "spectrum, 8x8 layout, on a 64x64 resize): they see brightness, edges, texture scale and coarse "
                 "layout, not anatomy (a slice with ventricles in the wrong place or no symmetry can score well). "
                 "Read a KID only against the floor of the same run and the contact sheet.")

ImageSet = str | Path | Sequence[str | Path | Scan | np.ndarray]


@dataclass
class Neighbour:
    """The training image most similar to one sample."""

    sample: int
    training: int
    score: float
    position: tuple[int, ...] = ()  # the sample's top-left corner in the training image (may be < 0)
    flipped: bool = False
    sample_name: str = ""


@dataclass
class QualityReport:
    """Fidelity, diversity and memorisation numbers of a generated set (see the module docstring)."""

    n_samples: int
    n_real: int
    kid: float
    kid_std: float  # bootstrap over both sets
    histogram_js: float
    diversity_samples: float
    diversity_real: float
    threshold: float
    n_training: int = 0
    rule: str = RULE  # the memorisation rule ``score`` and ``threshold`` belong to
    rule_settings: str = ""
    neighbours: list[Neighbour] = field(default_factory=list)
    flagged: list[int] = field(default_factory=list)
    report: str | None = None
    kid_low: float = float("nan")  # 95 % bootstrap interval
    kid_high: float = float("nan")
    kid_floor: float = float("nan")  # real vs real: two halves of the real set
    kid_floor_std: float = float("nan")
    kid_floor_low: float = float("nan")
    kid_floor_high: float = float("nan")
    kid_training: float = float("nan")  # training vs real (with training images)
    kid_training_std: float = float("nan")

    @property
    def max_similarity(self) -> float:
        return max((nb.score for nb in self.neighbours), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["max_similarity"] = self.max_similarity
        return d

    def lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs for tables."""
        out = [
            ("samples / real images", f"{self.n_samples} / {self.n_real}"),
            ("KID samples vs real (hand-made features; +- bootstrap std [95 % interval])",
             f"{self.kid:.4f} +- {self.kid_std:.4f} [{self.kid_low:.4f}, {self.kid_high:.4f}]"),
            ("KID floor: real vs real (two halves of the real set)",
             f"{self.kid_floor:.4f} +- {self.kid_floor_std:.4f} [{self.kid_floor_low:.4f}, {self.kid_floor_high:.4f}]"
             if np.isfinite(self.kid_floor) else "n/a (fewer than 4 real images)"),
            ("intensity histogram JS distance (0..1)", f"{self.histogram_js:.4f}"),
            ("diversity: mean pairwise MS-SSIM, samples", f"{self.diversity_samples:.4f}"),
            ("diversity: mean pairwise MS-SSIM, real", f"{self.diversity_real:.4f}"),
        ]
        if self.n_training:
            out += [
                ("KID training vs real (a model that copied its training set)",
                 f"{self.kid_training:.4f} +- {self.kid_training_std:.4f}"),
                ("training images searched", str(self.n_training)),
                (f"highest sample-training similarity ({self.rule})", f"{self.max_similarity:.4f}"),
                (f"samples flagged as memorised ({self.rule} >= {self.threshold:g})", str(len(self.flagged))),
            ]
        return out

    def to_markdown(self) -> str:
        """A '## Quality' section for data cards."""
        rows = "\n".join(f"| {k} | {v} |" for k, v in self.lines())
        text = f"## Quality\n\n| measure | value |\n|---|---|\n{rows}\n\n{FEATURES_NOTE}\n"
        if not self.n_training:
            text += "\nNo memorisation check: no training images were given (`--training`).\n"
        elif self.flagged:
            names = ", ".join(self.neighbours[i].sample_name or str(i) for i in self.flagged[:20])
            text += f"\nFlagged (possible copies of training images; do not share these): {names}\n"
        else:
            text += "\nNo sample reached the memorisation threshold.\n"
        if self.n_training and self.rule_settings:
            text += f"\nMemorisation rule: {self.rule_settings}.\n"
        if self.report:
            text += f"\nContact sheet: `{Path(self.report).name}`.\n"
        return text


# -- loading ----------------------------------------------------------------------------------------
def _load_items(items: ImageSet, what: str) -> list[tuple[str, Scan | np.ndarray]]:
    """(name, Scan or array) for each image of a set: a folder (its manifest.csv if any), files, Scans, arrays."""
    from medidiff.core.data import scan_paths
    from medidiff.io import load_scan

    if isinstance(items, (str, Path)):
        folder = Path(items)
        manifest = folder / "manifest.csv"
        if folder.is_dir() and manifest.is_file():
            with open(manifest, newline="") as f:
                paths = [folder / row["file"] for row in csv.DictReader(f)]
        else:
            paths = scan_paths([folder])
        return [(p.name, load_scan(p)) for p in paths]
    out = []
    for k, item in enumerate(items):
        if isinstance(item, (str, Path)):
            out.extend((p.name, load_scan(p)) for p in scan_paths([item]))
        else:
            out.append((f"{what} {k}", item))
    if not out:
        raise MedidiffError(f"the {what} set is empty")
    return out


def _slices(item: Scan | np.ndarray) -> list[np.ndarray]:
    """2D images of a scan: itself, or its non-constant slices along the coarsest-spacing axis."""
    from medidiff.core.data import default_slice_axis

    arr = np.asarray(item.array if isinstance(item, Scan) else item, dtype=np.float64)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        return [arr]
    if arr.ndim != 3:
        raise MedidiffError(f"cannot compare an image of shape {arr.shape}; need 2D images or 3D volumes")
    axis = default_slice_axis(item) if isinstance(item, Scan) else 0
    return [s for s in np.moveaxis(arr, axis, 0) if np.ptp(s) > 0]


def _fit(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pad (edge values) an image smaller than ``size`` up to it, centred."""
    pads = [((t - s) // 2, t - s - (t - s) // 2) if s < t else (0, 0) for s, t in zip(img.shape, size)]
    return np.pad(img, pads, mode="edge") if any(p != (0, 0) for p in pads) else img


def _window(img: np.ndarray, size: tuple[int, ...], position: tuple[int, ...]) -> np.ndarray:
    """The ``size`` window of ``img`` at top-left ``position`` (which may lie outside: edge values)."""
    y, x = position
    pad = max(0, -y, -x, y + size[0] - img.shape[0], x + size[1] - img.shape[1])
    padded = np.pad(img, pad, mode="edge") if pad else img
    return padded[y + pad : y + pad + size[0], x + pad : x + pad + size[1]]


def _tiles(img: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    """Non-overlapping tiles of ``size`` covering ``img`` (the last row/column flush with the edge)."""
    img = _fit(img, size)
    starts = []
    for s, t in zip(img.shape, size):
        pos = list(range(0, s - t + 1, t))
        if pos[-1] != s - t:
            pos.append(s - t)
        starts.append(pos)
    return [img[y : y + size[0], x : x + size[1]] for y in starts[0] for x in starts[1]]


def _images(items: list[tuple[str, Any]]) -> tuple[list[np.ndarray], list[str]]:
    imgs, names = [], []
    for name, item in items:
        parts = _slices(item)
        for k, s in enumerate(parts):
            imgs.append(s)
            names.append(name if len(parts) == 1 else f"{name}[{k}]")
    return imgs, names


# -- memorisation ------------------------------------------------------------------------------------
def nearest_training(samples: np.ndarray, training: list[np.ndarray],
                     rule: StructureRule = DEFAULT_RULE) -> list[Neighbour]:
    """For each (H, W) sample, the best-matching training image by the ``structure-ncc`` rule (every shift, a flip)."""
    from medidiff.core.metrics.memorisation import structure_scores

    return [Neighbour(i, m.training, m.score, m.position, m.flipped)
            for i, m in enumerate(structure_scores(list(samples), training, rule))]


# -- the report ----------------------------------------------------------------------------------------
def memorisation_threshold(threshold: float | None) -> float:
    """``threshold`` checked (in (0, 1]), or the rule's own when ``None``; one-line error otherwise."""
    if threshold is None:
        return float(DEFAULT_RULE.threshold)
    if not np.isfinite(threshold) or not 0 < threshold <= 1:
        raise MedidiffError(f"--threshold (memorisation) must be in (0, 1], got {threshold}")
    return float(threshold)


def evaluate_generated(
    samples: ImageSet,
    real: ImageSet,
    training: ImageSet | None = None,
    *,
    threshold: float | None = None,
    report: str | Path | None = None,
    seed: int = 0,
    real_pixels: bool = True,
) -> QualityReport:
    """Fidelity, diversity and memorisation of generated ``samples`` against ``real`` (and ``training``) images.

    Each set is a folder (a generated folder's ``manifest.csv`` is followed), a list of files,
    Scans or arrays. ``report`` writes a PNG contact sheet: samples, real images, and each flagged
    sample beside its nearest training image; ``real_pixels=False`` leaves the real and training
    images out of it (only the samples, flagged ones marked), for a sheet shipped inside a data
    set meant for sharing. ``seed`` fixes the KID subsets and MS-SSIM pairs. ``threshold``: flag
    samples whose ``structure-ncc`` score is at least this (``None``: the rule's own, 0.95).
    """
    from dataclasses import replace

    from medidiff.core import metrics

    threshold = memorisation_threshold(threshold)
    rule = replace(DEFAULT_RULE, threshold=threshold)
    s_imgs, s_names = _images(_load_items(samples, "samples"))
    if len(s_imgs) < 2:
        raise MedidiffError(f"need at least 2 generated images to measure quality, got {len(s_imgs)}")
    size = s_imgs[0].shape
    if any(im.shape != size for im in s_imgs):
        raise MedidiffError(f"generated images differ in shape ({sorted({im.shape for im in s_imgs})}); evaluate one size at a time")
    s_stack = np.stack(s_imgs)
    r_imgs, _ = _images(_load_items(real, "real"))
    r_stack = np.stack([t for im in r_imgs for t in _tiles(im, size)])
    if len(r_stack) < 2:
        raise MedidiffError("need at least 2 real images to compare with")
    lo, hi = np.percentile(r_stack, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(r_stack.min()), float(r_stack.max()) + 1.0
    vr = (float(lo), float(hi))
    from medidiff.core.metrics.distributions import kid_bootstrap, kid_floor

    s_feats, r_feats = metrics.image_features(s_stack, value_range=vr), metrics.image_features(r_stack, value_range=vr)
    kid_est = kid_bootstrap(s_feats, r_feats, seed=seed)
    floor = kid_floor(r_feats, seed=seed) if len(r_feats) >= 4 else None
    js = metrics.histogram_distance(list(s_stack), list(r_stack), method="js", value_range=vr)
    div_s = metrics.mean_pairwise_ms_ssim(np.clip(s_stack, *vr), seed=seed, data_range=vr[1] - vr[0])
    div_r = metrics.mean_pairwise_ms_ssim(np.clip(r_stack, *vr), seed=seed, data_range=vr[1] - vr[0])
    neighbours: list[Neighbour] = []
    t_imgs: list[np.ndarray] = []
    kid_training = None
    if training is not None:
        t_imgs, _ = _images(_load_items(training, "training"))
        neighbours = nearest_training(s_stack, t_imgs, rule)
        t_stack = np.stack([t for im in t_imgs for t in _tiles(im, size)])
        if len(t_stack) >= 2:
            kid_training = kid_bootstrap(metrics.image_features(t_stack, value_range=vr), r_feats, seed=seed)
        for nb in neighbours:
            nb.sample_name = s_names[nb.sample]
    flagged = [nb.sample for nb in neighbours if nb.score >= threshold]
    result = QualityReport(
        n_samples=len(s_stack), n_real=len(r_stack), kid=kid_est.value, kid_std=kid_est.std, histogram_js=float(js),
        diversity_samples=float(div_s), diversity_real=float(div_r), threshold=float(threshold),
        n_training=len(t_imgs), neighbours=neighbours, flagged=flagged, kid_low=kid_est.low, kid_high=kid_est.high,
        rule=rule.name, rule_settings=rule.describe(),
    )
    if training is not None and min(size) < 2 * rule.border + 16:
        result.rule_settings += (f" (samples of {size[0]}x{size[1]} are under {2 * rule.border + 16} px a side: "
                                 "the check is weak there, an exact 16x16 copy scores about 0.9)")
    if floor is not None:
        result.kid_floor, result.kid_floor_std = floor.value, floor.std
        result.kid_floor_low, result.kid_floor_high = floor.low, floor.high
    if kid_training is not None:
        result.kid_training, result.kid_training_std = kid_training.value, kid_training.std
    if report is not None:
        result.report = str(contact_sheet(s_stack, r_stack, t_imgs, neighbours, flagged, report, seed=seed,
                                          real_pixels=real_pixels, value_range=vr))
    return result


def contact_sheet(samples: np.ndarray, real: np.ndarray, training: list[np.ndarray], neighbours: list[Neighbour],
                  flagged: list[int], path: str | Path, ncols: int = 8, seed: int = 0, real_pixels: bool = True,
                  value_range: tuple[float, float] | None = None) -> Path:
    """PNG: a row of samples, a row of real images, then flagged samples beside their training match.

    With ``real_pixels=False`` no real or training pixel is drawn: rows of samples, flagged ones titled.
    ``value_range`` (the real images' 0.5-99.5 percentiles in :func:`evaluate_generated`): one
    display window for every image of a sheet with real pixels, so samples and real images are
    drawn on the same scale (a sheet without real pixels keeps a window per sample).
    """
    from medidiff.reporting.figures import save_grid

    if not real_pixels:
        ncols = max(2, min(ncols, len(samples)))
        n = min(len(samples), 2 * ncols)
        titles = [f"FLAGGED sample {i}" if i in flagged else f"sample {i}" for i in range(n)]
        # each sample in its own window: a window from the real images would carry their statistics
        return save_grid([samples[i] for i in range(n)], path, titles=titles, ncols=ncols,
                         suptitle="generated samples (no real or training pixels are shown)")

    rng = np.random.default_rng(seed)
    ncols = max(2, min(ncols, max(len(samples), len(real))))  # no empty columns for small sets
    n = min(ncols, len(samples))
    real_pick = np.sort(rng.choice(len(real), size=min(ncols, len(real)), replace=False))
    images = [samples[i] for i in range(n)] + [None] * (ncols - n)
    titles = [f"sample {i}" for i in range(n)] + [""] * (ncols - n)
    images += [real[i] for i in real_pick] + [None] * (ncols - len(real_pick))
    titles += [f"real {i}" for i in real_pick] + [""] * (ncols - len(real_pick))
    size = samples.shape[1:]
    for i in flagged[: ncols // 2 * 2]:
        nb = neighbours[i]
        window = _window(training[nb.training], size, nb.position or (0, 0))
        images += [samples[i], window[:, ::-1] if nb.flipped else window]
        titles += [f"FLAGGED sample {i}", f"training {nb.training} score={nb.score:.3f}"]
    blank = np.zeros(size)
    keep = [im if im is not None else blank for im in images]
    return save_grid(keep, path, titles=titles, ncols=ncols, value_range=value_range,
                     suptitle="samples (top), real (middle), flagged vs nearest training; one intensity window")
