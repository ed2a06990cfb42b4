"""Anomaly maps: partial noising, reconstruction by the model, and the residual.

The scan is partly noised to a moderate time ``t`` and reconstructed by the model; what the
model cannot explain as healthy anatomy (a lesion) comes back changed, so the residual
``|x - reconstruction|`` is the anomaly map. Three ways to noise:

* ``ddpm``    white Gaussian noise at each of ``timesteps`` (AnoDDPM-style with Gaussian noise);
* ``simplex`` multi-octave simplex noise, normalised to unit variance (AnoDDPM, Wyatt et al.
              2022): smooth noise hides whole lesions. Only offered for a model trained with
              simplex noise (``config.training["noise"] == "simplex"``): a white-noise model sees
              noise it was never trained to remove (voxel AUROC 0.52 on benchmarks/anomaly.py);
* ``patched`` one patch at a time is noised while the rest stays clean as context (pDDPM,
              Behrendt et al. 2023); the residual is kept only inside the noised patch and the
              patches are stitched (overlaps averaged). pDDPM trains with patch noise; here the
              context is the clean image scaled by ``alpha(t)``, the closest thing a model trained
              with whole-image noise has seen. The network sees a training-size window around
              each patch, so the cost is one small window per patch.

Reconstruction is one Tweedie step (``predict``: one network call) or a few DDIM steps from
``t`` (``recon="ddim"``). Residuals are averaged over ``timesteps``, optionally one-signed
(``direction="bright"`` keeps only voxels brighter than the reconstruction), turned into the
chosen ``score`` (the residual itself, or healthy z-scores given the mean reconstruction,
with a structural 1 - SSIM part: :mod:`.scores`), median filtered, optionally smoothed by a
Gaussian inside the tissue (``smooth_sigma``), kept inside the foreground (Otsu) and, with
``mirror``, compared with its own left-right mirror image (:mod:`.symmetry`).

Units. MR and microscopy have no absolute units (a model with a per-scan normaliser). A
calibrated model of that kind normalises each scan on its own, anchored on its tissue:
``low`` is the dark end the model's rule fits on the scan (:meth:`Normaliser.for_scan`), and
``high = low + (m - low) / k`` with ``m`` the median of the scan's Otsu foreground and ``k``
the median of ``(m_h - low_h) / (high_h - low_h)`` over the healthy calibration scans (stored as
``tissue_level``). For a healthy scan this is the model's own per-scan map; a bright lesion,
which moves the top percentile the rule uses, hardly moves a median. Every step commutes
with ``x -> a x`` (``a > 0``), and residuals (computed in network units) are expressed in the
model's reference units (``model.normaliser.half_range`` per network unit), so the map of
``a * x`` equals the map of ``x`` and a calibrated threshold holds for scans stored in other
units. Without a calibration, and for fixed normalisers (a CT window: HU are absolute), the
model's stored normaliser is used as it is, and maps are in the scan's units. A 2D model
runs slice by slice (``medidiff.core.slicing.SliceLayout``; slices batched, slices without
foreground skipped), a 3D model on the whole volume. Progress: one step per network call,
sliding-window batches included (``Plan.calls``), so cancel takes effect within one call.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from medidiff.core.intensity import Normaliser
from medidiff.core.lesions import foreground as otsu_foreground
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, relay
from medidiff.core.sampling import predict_calls, predict_steps, sample, sample_seed, window_batch_size
from medidiff.core.simplex import fractal_noise
from medidiff.core.slicing import SliceLayout
from medidiff.errors import InvalidScanError
from medidiff.io import Scan

from . import scores
from .options import SCORE_PERCENTILE, MapSettings
from .symmetry import mirror_difference


@dataclass
class Plan:
    """A scan cut into network items (``layout``: slices of a 2D model, or the volume of a 3D one)."""

    layout: SliceLayout
    stack: np.ndarray  # (n, *spatial) scan units
    fg: np.ndarray  # (n, *spatial) bool
    items: list[int]  # indices with foreground (the others are skipped)
    patches: list[tuple[slice, ...]]
    context: list[tuple[slice, ...]]
    calls: int  # network calls, sliding-window batches included: one progress step each
    normaliser: Normaliser  # scan units -> network units for this scan
    sw_batch_size: int  # sliding windows per network call (fixed for the run, so ``calls`` holds)

    @property
    def foreground(self) -> np.ndarray:
        """The scored voxels in the scan's axis order."""
        return self.layout.from_items(self.fg)


def patch_grid(spatial: tuple[int, ...], patch: tuple[int, ...], window: tuple[int, ...]) -> tuple[list, list]:
    """Overlapping patches (stride half a patch, the last flush with the edge) and their context windows."""
    starts_per_dim, ctx_per_dim = [], []
    for length, p, w in zip(spatial, patch, window):
        p = min(p, length)
        stride = max(1, p // 2)
        starts = list(range(0, length - p + 1, stride))
        if starts[-1] != length - p:
            starts.append(length - p)
        c = min(max(p, w), length)
        ctx = [min(max(s + p // 2 - c // 2, 0), length - c) for s in starts]
        starts_per_dim.append([(s, p) for s in starts])
        ctx_per_dim.append([(s, c) for s in ctx])
    patches, contexts = [], []
    for idx in np.ndindex(*[len(s) for s in starts_per_dim]):
        patches.append(tuple(slice(starts_per_dim[d][i][0], starts_per_dim[d][i][0] + starts_per_dim[d][i][1]) for d, i in enumerate(idx)))
        contexts.append(tuple(slice(ctx_per_dim[d][i][0], ctx_per_dim[d][i][0] + ctx_per_dim[d][i][1]) for d, i in enumerate(idx)))
    return patches, contexts


def tissue_fraction(model: DiffusionModel, array: np.ndarray, source: str = "scan") -> float:
    """``(m - low) / (high - low)`` of a healthy scan under the model's per-scan rule (``m``: median tissue)."""
    norm = model.normaliser.for_scan(array, source=source)
    fg = otsu_foreground(array)
    level = float(np.median(array[fg])) if fg.any() else float(np.median(array))
    return (level - norm.low) / (norm.high - norm.low)


def scan_normaliser(model: DiffusionModel, array: np.ndarray, tissue_level: float | None, source: str = "scan") -> Normaliser:
    """The scan's map to network units: anchored on its tissue (per-scan models with a calibration), else the model's."""
    if tissue_level is None or not model.normaliser.per_scan:
        return model.normaliser
    low = model.normaliser.for_scan(array, source=source).low
    fg = otsu_foreground(array)
    level = float(np.median(array[fg])) if fg.any() else float(np.median(array))
    if not level > low or not tissue_level > 0:
        raise InvalidScanError(source, "its tissue is not brighter than its background; cannot normalise it")
    return Normaliser(low, low + (level - low) / tissue_level, kind="fixed", detail="anchored on this scan's tissue")


def check_left_right(scan: Scan, layout: SliceLayout) -> None:
    """Refuse ``mirror`` where the mirrored axis (the items' last one) does not run left-right."""
    source = str(scan.meta.get("source_path") or "scan")
    if layout.axis == scan.ndim - 1:
        raise InvalidScanError(source, "is cut into slices along its left-right axis, so a slice has no mirror "
                                       "image; use a model that slices another axis, or one calibrated without "
                                       "the mirror (`medidiff anomaly calibrate` without --mirror)")
    code = scan.orientation[0]  # the array's last axis is the affine's first (x) voxel axis
    if code not in "LR":
        raise InvalidScanError(source, f"has columns running {code} (orientation {scan.orientation}), not "
                                       "left-right, so the mirror comparison (--mirror) does not apply; reorient "
                                       "it, or use a model calibrated without the mirror (`medidiff anomaly "
                                       "calibrate` without --mirror)")


def plan_scan(model: DiffusionModel, scan: Scan, s: MapSettings, batch_size: int,
              tissue_level: float | None = None) -> Plan:
    """Cut ``scan`` into the network items of ``model`` and count the network calls.

    ``tissue_level``: the calibration's, for a per-scan normalisation anchored on the tissue
    (see the module docstring); ``None`` uses the model's stored normaliser.
    """
    layout = SliceLayout.for_model(model, scan)
    arr = scan.array
    source = scan.meta.get("source_path")
    if s.mirror > 0:
        check_left_right(scan, layout)
    fg_full = otsu_foreground(arr) if s.foreground else np.ones(arr.shape, dtype=bool)
    stack, fg = layout.to_items(arr), layout.to_items(fg_full)
    items = [i for i in range(stack.shape[0]) if fg[i].any()]
    sw = window_batch_size(model, model.device)
    patches: list = []
    context: list = []
    spatial = tuple(stack.shape[1:])
    per_t = [recon_calls(model, s, t) for t in s.timesteps]  # network passes of one reconstruction
    if s.method == "patched":
        # a quarter of the side: patches smaller than a lesion let the clean context show it again
        patch = s.patch_size or tuple(max(2, n // 4) for n in spatial)
        patches, context = patch_grid(spatial, patch, tuple(model.config.image_size))
        window = tuple(c.stop - c.start for c in context[0])  # every context window has this shape
        chunks = [min(batch_size, len(patches) - c0) for c0 in range(0, len(patches), batch_size)]
        calls = len(items) * sum(per_t) * sum(predict_calls(model, n, window, sw) for n in chunks)
    else:
        chunks = [min(batch_size, len(items) - b0) for b0 in range(0, len(items), batch_size)]
        calls = sum(per_t) * sum(predict_calls(model, n, spatial, sw) for n in chunks)
    norm = scan_normaliser(model, arr, tissue_level, str(source or "scan"))
    return Plan(layout, stack, fg, items, patches, context, calls, norm, sw)


def recon_calls(model: DiffusionModel, s: MapSettings, t: float) -> int:
    """Network passes of one reconstruction from time ``t`` (1 for Tweedie; the DDIM steps)."""
    if s.recon == "tweedie":
        return 1
    return len(model.schedule.timesteps(s.ddim_steps, t)) - 1


def _draw(method: str, gen: torch.Generator, spatial: tuple[int, ...]) -> torch.Tensor:
    if method == "simplex":
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        return torch.from_numpy(fractal_noise(spatial, seed))
    return torch.randn(spatial, generator=gen)


def _reconstruct(model: DiffusionModel, x_t: torch.Tensor, t: float, s: MapSettings, sw: int,
                 step: int, total: int, message: str, counts: list[int]) -> Generator[Progress, None, torch.Tensor]:
    """Clean estimate from ``x_t``; a ``Progress`` between its network calls, counted on from ``step``.

    As ``predict_steps``, nothing is yielded after the last call (the caller reports it with
    the result); ``counts`` gets the number of events yielded.
    """
    if s.recon == "tweedie":
        x0, _ = yield from relay(predict_steps(model, x_t, t, sw_batch_size=sw), step=step, total=total,
                                 message=message, counts=counts)
        return x0
    return (yield from relay(sample(model, x_t, sampler="ddim", steps=s.ddim_steps, t_start=t, sw_batch_size=sw,
                                    per_call=True), step=step, total=total, message=message, counts=counts))


def residual(x: np.ndarray, recon: np.ndarray, direction: str) -> np.ndarray:
    """``|x - recon|``, or only its bright (``x > recon``) or dark part."""
    diff = x - recon  # > 0: brighter than the model expects
    if direction == "bright":
        return np.maximum(diff, 0.0)
    if direction == "dark":
        return np.maximum(-diff, 0.0)
    return np.abs(diff)


def _postprocess(m: np.ndarray, fg: np.ndarray, s: MapSettings) -> np.ndarray:
    if s.median_size > 1:
        m = ndi.median_filter(m, size=s.median_size, mode="nearest")
    if s.smooth_sigma > 0 and fg.any():  # normalised convolution: the background does not leak into the edge
        w = ndi.gaussian_filter(fg.astype(np.float64), s.smooth_sigma)
        m = ndi.gaussian_filter(np.where(fg, m, 0.0), s.smooth_sigma) / np.maximum(w, 1e-6)
    return mirror_difference(np.where(fg, m, 0.0).astype(np.float32), fg, s.mirror)


RawParts = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]]  # item -> (residual, mean recon, 1 - SSIM)


def score_item(s: MapSettings, res: np.ndarray, x: np.ndarray, rec: np.ndarray, fg: np.ndarray,
               profile: dict | None, parts: RawParts | None = None, i: int = 0) -> np.ndarray:
    """One item's map: its ``s.score`` from the raw residual and mean reconstruction, post-processed.

    ``parts``, when given, collects the raw maps (what a calibration fits its profile on).
    """
    need = parts is not None or "ssim" in scores.parts_of(s.score)  # a calibration fits every part
    ssim = scores.structural_residual(x, rec) if need else None
    if parts is not None:
        parts[i] = (res.astype(np.float32), rec.astype(np.float32), ssim)
    return _postprocess(scores.combine(s.score, res, rec, ssim, profile), fg, s)


def scored_map(plan: Plan, s: MapSettings, parts: RawParts, profile: dict | None) -> np.ndarray:
    """The map of a planned scan from collected raw parts (after the profile was fitted on them)."""
    out = np.zeros(plan.stack.shape, dtype=np.float32)
    for i, (res, rec, ssim) in parts.items():
        out[i] = _postprocess(scores.combine(s.score, res, rec, ssim, profile), plan.fg[i], s)
    return plan.layout.from_items(out)


def map_steps(
    model: DiffusionModel, plan: Plan, s: MapSettings, seed: int, batch_size: int,
    step0: int = 0, total: int | None = None, label: str = "", profile: dict | None = None,
    parts: RawParts | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """The anomaly map of a planned scan, in the scan's units and axis order.

    Yields one ``Progress`` per network call (sliding-window batches included: ``plan.calls``
    in all); the event after the last call of an item batch carries its map as preview. Item
    ``i`` draws its noise from its own generator (``sample_seed(seed, i)``), so the map does
    not depend on ``batch_size``. ``profile``: the calibration's healthy statistics, needed by
    the ``zscore`` and ``ssim`` scores; ``parts`` collects the raw maps per item.
    """
    total = plan.calls if total is None else total
    norm = plan.normaliser
    device = model.device
    half = float(model.normaliser.half_range)  # residuals in the model's reference units
    out = np.zeros(plan.stack.shape, dtype=np.float32)
    ts = s.timesteps
    step = step0
    spatial = tuple(plan.stack.shape[1:])
    gens = {i: torch.Generator().manual_seed(sample_seed(seed, i)) for i in plan.items}
    # step 0 before the first network call: a one-slice job shows its work from the first second
    yield Progress(step=step, total=total, message=f"{label} {len(plan.items)} slice(s), {total} network calls".strip())

    def recon(x_t: torch.Tensor, t: float, message: str):
        """The reconstruction's events, then ``step`` moved past all its calls."""
        nonlocal step
        counts = [0]
        x0 = yield from _reconstruct(model, x_t, t, s, plan.sw_batch_size, step, total, message, counts)
        step += counts[-1] + 1  # the last call: reported by the caller, with or without a preview
        return x0

    if s.method == "patched":
        chunks = [range(c0, min(c0 + batch_size, len(plan.patches))) for c0 in range(0, len(plan.patches), batch_size)]
        for i in plan.items:
            x = torch.from_numpy(norm.forward(plan.stack[i]))
            acc = np.zeros(spatial, dtype=np.float64)
            racc = np.zeros(spatial, dtype=np.float64)
            cnt = np.zeros(spatial, dtype=np.float64)
            for n_t, t in enumerate(ts):
                a, sig = model.schedule.alpha_sigma(t)
                noisy = a * x + sig * _draw("ddpm", gens[i], spatial)
                for n_c, chunk in enumerate(chunks):
                    crops, rels = [], []
                    for k in chunk:
                        ctx, pat = plan.context[k], plan.patches[k]
                        crop = a * x[ctx].clone()  # clean context at the signal level of x_t
                        rel = tuple(slice(p.start - c.start, p.stop - c.start) for p, c in zip(pat, ctx))
                        crop[rel] = noisy[pat]
                        crops.append(crop)
                        rels.append(rel)
                    x_t = torch.stack(crops)[:, None].to(device)
                    message = f"{label}patched t={t:.0f}"
                    rec = (yield from recon(x_t, t, message))[:, 0].float().cpu().numpy()
                    for j, k in enumerate(chunk):
                        pat = plan.patches[k]
                        acc[pat] += residual(x[pat].numpy(), rec[j][rels[j]], s.direction)
                        racc[pat] += rec[j][rels[j]]
                        cnt[pat] += 1
                    if n_t + 1 < len(ts) or n_c + 1 < len(chunks):
                        yield Progress(step=step, total=total, message=message)
            m = (acc / np.maximum(cnt, 1) / len(ts)) * half
            out[i] = score_item(s, m, x.numpy(), racc / np.maximum(cnt, 1), plan.fg[i], profile, parts, i)
            yield Progress(step=step, total=total, message=f"{label}patched", preview=out[i] if out[i].ndim == 2 else None)
    else:
        for b0 in range(0, len(plan.items), batch_size):
            batch = plan.items[b0 : b0 + batch_size]
            x = torch.from_numpy(norm.forward(plan.stack[batch]))[:, None]
            acc = np.zeros((len(batch), *spatial), dtype=np.float64)
            racc = np.zeros((len(batch), *spatial), dtype=np.float64)
            for n_t, t in enumerate(ts):
                a, sig = model.schedule.alpha_sigma(t)
                eps = torch.stack([_draw(s.method, gens[i], spatial) for i in batch])[:, None]
                x_t = (a * x + sig * eps).to(device)
                message = f"{label}{s.method} t={t:.0f}"
                rec = (yield from recon(x_t, t, message))[:, 0].float().cpu().numpy()
                acc += residual(x[:, 0].numpy(), rec, s.direction)
                racc += rec
                if n_t + 1 < len(ts):
                    yield Progress(step=step, total=total, message=message)
            for j, i in enumerate(batch):
                out[i] = score_item(s, acc[j] / len(ts) * half, x[j, 0].numpy(), racc[j] / len(ts), plan.fg[i],
                                    profile, parts, i)
            last = out[batch[-1]]
            yield Progress(step=step, total=total, message=f"{label}{s.method}", preview=last if last.ndim == 2 else None)
    return plan.layout.from_items(out)


def scan_score(amap: np.ndarray, fg: np.ndarray, percentile: float = SCORE_PERCENTILE) -> float:
    """The scan's anomaly score: the ``percentile`` of the map inside the foreground."""
    values = amap[fg] if fg.any() else amap.ravel()
    return float(np.percentile(values, percentile)) if values.size else 0.0
