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
``t`` (``recon="ddim"``). Residuals are averaged over ``timesteps``, median filtered, kept
inside the foreground (Otsu), and optionally one-signed (``direction="bright"`` keeps only
voxels brighter than the reconstruction).

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
runs slice by slice (slices batched, slices without foreground skipped), a 3D model on the
whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from medidiff.core.intensity import Normaliser
from medidiff.core.lesions import foreground as otsu_foreground
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, relay
from medidiff.core.sampling import predict, sample, sample_seed
from medidiff.core.simplex import fractal_noise
from medidiff.errors import InvalidScanError
from medidiff.io import Scan

from .options import SCORE_PERCENTILE, MapSettings


@dataclass
class Plan:
    """A scan cut into network items: slices of a 2D model (or the volume of a 3D one)."""

    stack: np.ndarray  # (n, *spatial) scan units
    fg: np.ndarray  # (n, *spatial) bool
    items: list[int]  # indices with foreground (the others are skipped)
    axis: int | None  # slice axis moved to the front (None: no move)
    squeeze: bool  # a 2D scan was given a leading axis
    patches: list[tuple[slice, ...]]
    context: list[tuple[slice, ...]]
    calls: int
    normaliser: Normaliser  # scan units -> network units for this scan

    def restore(self, stack: np.ndarray) -> np.ndarray:
        """A (n, *spatial) stack back in the scan's axis order."""
        if self.squeeze:
            return stack[0]
        if self.axis is not None:
            return np.moveaxis(stack, 0, self.axis)
        return stack[0]

    @property
    def foreground(self) -> np.ndarray:
        """The scored voxels in the scan's axis order."""
        return self.restore(self.fg)


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


def plan_scan(model: DiffusionModel, scan: Scan, s: MapSettings, batch_size: int,
              tissue_level: float | None = None) -> Plan:
    """Cut ``scan`` into the network items of ``model`` and count the network calls.

    ``tissue_level``: the calibration's, for a per-scan normalisation anchored on the tissue
    (see the module docstring); ``None`` uses the model's stored normaliser.
    """
    dims = model.config.spatial_dims
    arr = scan.array
    source = scan.meta.get("source_path")
    fg_full = otsu_foreground(arr) if s.foreground else np.ones(arr.shape, dtype=bool)
    axis, squeeze = None, False
    if dims == 2:
        if scan.ndim == 2:
            stack, fg, squeeze = arr[None], fg_full[None], True
        else:
            axis = model.config.slice_axis if model.config.slice_axis is not None else 0
            stack, fg = np.moveaxis(arr, axis, 0), np.moveaxis(fg_full, axis, 0)
    else:
        if scan.ndim != 3:
            raise InvalidScanError(source, f"this model is 3D but the scan is 2D {scan.shape}; use a 2D model or a volume")
        stack, fg = arr[None], fg_full[None]
    items = [i for i in range(stack.shape[0]) if fg[i].any()]
    per_recon = s.calls_per_reconstruction
    patches: list = []
    context: list = []
    spatial = tuple(stack.shape[1:])
    if s.method == "patched":
        # a quarter of the side: patches smaller than a lesion let the clean context show it again
        patch = s.patch_size or tuple(max(2, n // 4) for n in spatial)
        patches, context = patch_grid(spatial, patch, tuple(model.config.image_size))
        calls = len(items) * len(s.timesteps) * math.ceil(len(patches) / batch_size) * per_recon
    else:
        calls = math.ceil(len(items) / batch_size) * len(s.timesteps) * per_recon
    norm = scan_normaliser(model, arr, tissue_level, str(source or "scan"))
    return Plan(stack, fg, items, axis, squeeze, patches, context, calls, norm)


def _draw(method: str, gen: torch.Generator, spatial: tuple[int, ...]) -> torch.Tensor:
    if method == "simplex":
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        return torch.from_numpy(fractal_noise(spatial, seed))
    return torch.randn(spatial, generator=gen)


def _reconstruct(model: DiffusionModel, x_t: torch.Tensor, t: float, s: MapSettings,
                 step: int, total: int, message: str) -> Generator[Progress, None, torch.Tensor]:
    """Clean estimate from ``x_t``; one ``Progress`` per network call, counted on from ``step``."""
    if s.recon == "tweedie":
        x0, _ = predict(model, x_t, t)
        yield Progress(step=step + 1, total=total, message=message)
        return x0
    return (yield from relay(sample(model, x_t, sampler="ddim", steps=s.ddim_steps, t_start=t),
                             step=step, total=total, message=message))


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
    return np.where(fg, m, 0.0).astype(np.float32)


def map_steps(
    model: DiffusionModel, plan: Plan, s: MapSettings, seed: int, batch_size: int,
    step0: int = 0, total: int | None = None, label: str = "",
) -> Generator[Progress, None, np.ndarray]:
    """The anomaly map of a planned scan, in the scan's units and axis order.

    Yields one ``Progress`` per network call; item ``i`` draws its noise from its own
    generator (``sample_seed(seed, i)``), so the map does not depend on ``batch_size``.
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
    per_recon = s.calls_per_reconstruction
    # step 0 before the first network call: a one-slice job shows its work from the first second
    yield Progress(step=step, total=total, message=f"{label} {len(plan.items)} slice(s), {total} network calls".strip())

    if s.method == "patched":
        for i in plan.items:
            x = torch.from_numpy(norm.forward(plan.stack[i]))
            acc = np.zeros(spatial, dtype=np.float64)
            cnt = np.zeros(spatial, dtype=np.float64)
            for t in ts:
                a, sig = model.schedule.alpha_sigma(t)
                noisy = a * x + sig * _draw("ddpm", gens[i], spatial)
                for c0 in range(0, len(plan.patches), batch_size):
                    chunk = range(c0, min(c0 + batch_size, len(plan.patches)))
                    crops, rels = [], []
                    for k in chunk:
                        ctx, pat = plan.context[k], plan.patches[k]
                        crop = a * x[ctx].clone()  # clean context at the signal level of x_t
                        rel = tuple(slice(p.start - c.start, p.stop - c.start) for p, c in zip(pat, ctx))
                        crop[rel] = noisy[pat]
                        crops.append(crop)
                        rels.append(rel)
                    x_t = torch.stack(crops)[:, None].to(device)
                    recon = yield from _reconstruct(model, x_t, t, s, step, total, f"{label}patched t={t:.0f}")
                    step += per_recon
                    recon = recon[:, 0].float().cpu().numpy()
                    for j, k in enumerate(chunk):
                        pat = plan.patches[k]
                        acc[pat] += residual(x[pat].numpy(), recon[j][rels[j]], s.direction)
                        cnt[pat] += 1
            m = (acc / np.maximum(cnt, 1) / len(ts)) * half
            out[i] = _postprocess(m, plan.fg[i], s)
            yield Progress(step=step, total=total, message=f"{label}patched", preview=out[i] if out[i].ndim == 2 else None)
    else:
        for b0 in range(0, len(plan.items), batch_size):
            batch = plan.items[b0 : b0 + batch_size]
            x = torch.from_numpy(norm.forward(plan.stack[batch]))[:, None]
            acc = np.zeros((len(batch), *spatial), dtype=np.float64)
            for t in ts:
                a, sig = model.schedule.alpha_sigma(t)
                eps = torch.stack([_draw(s.method, gens[i], spatial) for i in batch])[:, None]
                x_t = (a * x + sig * eps).to(device)
                recon = yield from _reconstruct(model, x_t, t, s, step, total, f"{label}{s.method} t={t:.0f}")
                step += per_recon
                acc += residual(x[:, 0].numpy(), recon[:, 0].float().cpu().numpy(), s.direction)
            for j, i in enumerate(batch):
                out[i] = _postprocess(acc[j] / len(ts) * half, plan.fg[i], s)
            last = out[batch[-1]]
            yield Progress(step=step, total=total, message=f"{label}{s.method}", preview=last if last.ndim == 2 else None)
    return plan.restore(out)


def scan_score(amap: np.ndarray, fg: np.ndarray, percentile: float = SCORE_PERCENTILE) -> float:
    """The scan's anomaly score: the ``percentile`` of the map inside the foreground."""
    values = amap[fg] if fg.any() else amap.ravel()
    return float(np.percentile(values, percentile)) if values.size else 0.0
