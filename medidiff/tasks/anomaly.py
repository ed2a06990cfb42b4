"""Anomaly detection by reconstruction with a diffusion model trained on healthy scans.

The scan is partly noised to a moderate time ``t`` and reconstructed by the model; what the
model cannot explain as healthy anatomy (a lesion) comes back changed, so the residual
``|x - reconstruction|`` is the anomaly map. Three ways to noise:

* ``ddpm``    white Gaussian noise at each of ``timesteps`` (AnoDDPM-style with Gaussian noise);
* ``simplex`` multi-octave simplex noise, normalised to unit variance (AnoDDPM, Wyatt et al.
              2022): smooth noise hides whole lesions. A model trained with Gaussian noise sees
              noise it was not trained on, so expect it to reconstruct less faithfully;
* ``patched`` one patch at a time is noised while the rest stays clean as context (pDDPM,
              Behrendt et al. 2023); the residual is kept only inside the noised patch and the
              patches are stitched (overlaps averaged). pDDPM trains with patch noise; here the
              context is the clean image scaled by ``alpha(t)``, the closest thing a model trained
              with whole-image noise has seen. The network sees a training-size window around
              each patch, so the cost is one small window per patch.

Reconstruction is one Tweedie step (``predict``: one network call) or a few DDIM steps from
``t`` (``recon="ddim"``). Residuals are averaged over ``timesteps``, median filtered, kept
inside the foreground (Otsu), and optionally one-signed (``direction="bright"`` keeps only
voxels brighter than the reconstruction). Maps are in the scan's intensity units.

The scan score is the 99th percentile of the map inside the foreground (robust to a few hot
voxels, yet driven by a lesion of about 1% of the tissue); the mask is ``map > threshold``,
where the threshold is calibrated on healthy scans (:func:`calibrate_threshold`, stored in the
model's config.json) or given. A 2D model runs slice by slice (slices batched, slices without
foreground skipped), a 3D model on the whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from medidiff.choices import AnomalyMethod, Direction, Reconstruction
from medidiff.core.devices import release_memory, resolve_device
from medidiff.errors import InvalidScanError, ModelError
from medidiff.io import Scan
from medidiff.core.lesions import foreground as otsu_foreground
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, run_to_end
from medidiff.core.sampling import predict, sample, sample_seed
from medidiff.core.simplex import fractal_noise

METHODS = AnomalyMethod.values()
RECONS = Reconstruction.values()
DIRECTIONS = Direction.values()
SCORE_PERCENTILE = 99.0
# default noise levels as fractions of the schedule length (300 and 450 of a 1000-step DDPM), each
# drawn DEFAULT_DRAWS times with fresh noise. Higher t hides a lesion under more noise, so the model
# paints healthy tissue over it; but one noise draw leaves a grainy residual whose false positives
# move with the seed, and averaging 3 independent draws per level steadies it. On
# benchmarks/anomaly.py this beat the old default (0.15, 0.30, one draw each) on every metric
# (voxel AUPRC 0.25 -> 0.40) at 3x the network calls (6 per slice).
DEFAULT_T_FRACTIONS = (0.30, 0.45)
DEFAULT_DRAWS = 3


@dataclass(frozen=True)
class AnomalyOptions:
    """How a map is made; stored with a calibration so "auto" thresholds are only used alike."""

    method: str = "ddpm"
    timesteps: tuple[float, ...] = ()
    recon: str = "tweedie"
    ddim_steps: int = 3
    patch_size: tuple[int, ...] | None = None
    median_size: int = 3
    foreground: bool = True
    direction: str = "both"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.recon not in RECONS:
            raise ValueError(f"unknown recon {self.recon!r}; choose one of {RECONS}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}; choose one of {DIRECTIONS}")
        if self.ddim_steps < 1:
            raise ValueError(f"ddim_steps must be >= 1, got {self.ddim_steps}")
        if self.median_size < 0:
            raise ValueError(f"median_size must be >= 0, got {self.median_size}")
        if not self.timesteps:
            raise ValueError("at least one timestep is needed")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timesteps"] = [float(t) for t in self.timesteps]
        d["patch_size"] = None if self.patch_size is None else [int(p) for p in self.patch_size]
        return d


@dataclass
class AnomalyResult:
    """An anomaly map and mask with the input's geometry, the scan score and the threshold used.

    ``score`` is the 99th percentile of ``map`` inside the foreground; ``volume_mm3`` the volume
    of ``mask`` (voxel count times voxel volume); ``foreground`` the voxels that were scored.
    """

    map: Scan
    mask: Scan
    score: float
    threshold: float
    volume_mm3: float = 0.0
    foreground: Scan | None = None
    options: dict[str, Any] = field(default_factory=dict)


def resolve_options(
    model: DiffusionModel,
    *,
    use_calibrated: bool = True,
    method: str | None = None,
    timesteps: Sequence[float] | None = None,
    recon: str | None = None,
    ddim_steps: int | None = None,
    patch_size: int | Sequence[int] | None = None,
    median_size: int | None = None,
    foreground: bool | None = None,
    direction: str | None = None,
) -> AnomalyOptions:
    """Options given explicitly win; ``None`` takes the calibrated value (if any), then the default."""
    calibrated = dict(model.config.anomaly.get("options", {})) if use_calibrated else {}
    given = {"method": method, "timesteps": timesteps, "recon": recon, "ddim_steps": ddim_steps,
             "patch_size": patch_size, "median_size": median_size, "foreground": foreground, "direction": direction}
    base = AnomalyOptions.__dataclass_fields__
    values: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            value = calibrated.get(name, base[name].default)
        values[name] = value
    T = model.schedule.T
    ts = values["timesteps"] or [round(f * T) for f in DEFAULT_T_FRACTIONS for _ in range(DEFAULT_DRAWS)]
    if np.ndim(ts) == 0:
        ts = [ts]
    for t in ts:
        if not 0 <= float(t) < T:
            raise ValueError(f"timestep {t} is outside this model's schedule [0, {T})")
    values["timesteps"] = tuple(float(t) for t in ts)
    ps = values["patch_size"]
    if ps is not None:
        ps = (int(ps),) * model.config.spatial_dims if np.ndim(ps) == 0 else tuple(int(p) for p in ps)
        if len(ps) != model.config.spatial_dims or min(ps) < 2:
            raise ValueError(f"patch_size {values['patch_size']} must be {model.config.spatial_dims} sizes >= 2")
    values["patch_size"] = ps
    values["ddim_steps"] = int(values["ddim_steps"])
    values["median_size"] = int(values["median_size"])
    values["foreground"] = bool(values["foreground"])
    return AnomalyOptions(**values)


# -- planning ----------------------------------------------------------------------------------
@dataclass
class _Plan:
    """A scan cut into network items: slices of a 2D model (or the volume of a 3D one)."""

    stack: np.ndarray  # (n, *spatial) scan units
    fg: np.ndarray  # (n, *spatial) bool
    items: list[int]  # indices with foreground (the others are skipped)
    axis: int | None  # slice axis moved to the front (None: no move)
    squeeze: bool  # a 2D scan was given a leading axis
    patches: list[tuple[slice, ...]]
    context: list[tuple[slice, ...]]
    calls: int


def _patch_grid(spatial: tuple[int, ...], patch: tuple[int, ...], window: tuple[int, ...]) -> tuple[list, list]:
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


def _plan(model: DiffusionModel, scan: Scan, opts: AnomalyOptions, batch_size: int) -> _Plan:
    dims = model.config.spatial_dims
    arr = scan.array
    source = scan.meta.get("source_path")
    fg_full = otsu_foreground(arr) if opts.foreground else np.ones(arr.shape, dtype=bool)
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
    per_recon = 1 if opts.recon == "tweedie" else opts.ddim_steps
    patches: list = []
    context: list = []
    spatial = tuple(stack.shape[1:])
    if opts.method == "patched":
        # a quarter of the side: patches smaller than a lesion let the clean context show it again
        patch = opts.patch_size or tuple(max(2, s // 4) for s in spatial)
        patches, context = _patch_grid(spatial, patch, tuple(model.config.image_size))
        calls = len(items) * len(opts.timesteps) * math.ceil(len(patches) / batch_size) * per_recon
    else:
        calls = math.ceil(len(items) / batch_size) * len(opts.timesteps) * per_recon
    return _Plan(stack, fg, items, axis, squeeze, patches, context, calls)


# -- the work ---------------------------------------------------------------------------------
def _draw(method: str, gen: torch.Generator, spatial: tuple[int, ...]) -> torch.Tensor:
    if method == "simplex":
        s = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        return torch.from_numpy(fractal_noise(spatial, s))
    return torch.randn(spatial, generator=gen)


def _reconstruct(model: DiffusionModel, x_t: torch.Tensor, t: float, opts: AnomalyOptions) -> Generator[None, None, torch.Tensor]:
    """Clean estimate from ``x_t``; yields once per network call."""
    if opts.recon == "tweedie":
        x0, _ = predict(model, x_t, t)
        yield None
        return x0
    inner = sample(model, x_t, sampler="ddim", steps=opts.ddim_steps, t_start=t)
    while True:
        try:
            next(inner)
        except StopIteration as stop:
            return stop.value
        yield None


def _residual(x: np.ndarray, recon: np.ndarray, direction: str) -> np.ndarray:
    diff = x - recon  # > 0: brighter than the model expects
    if direction == "bright":
        return np.maximum(diff, 0.0)
    if direction == "dark":
        return np.maximum(-diff, 0.0)
    return np.abs(diff)


def _map_steps(
    model: DiffusionModel, plan: _Plan, opts: AnomalyOptions, seed: int, batch_size: int,
    step0: int = 0, total: int | None = None, label: str = "",
) -> Generator[Progress, None, np.ndarray]:
    """The anomaly map of a planned scan, in the scan's units and axis order."""
    total = plan.calls if total is None else total
    norm = model.normaliser
    device = model.device
    half = float(norm.half_range)
    out = np.zeros(plan.stack.shape, dtype=np.float32)
    ts = opts.timesteps
    step = step0
    spatial = tuple(plan.stack.shape[1:])
    gens = {i: torch.Generator().manual_seed(sample_seed(seed, i)) for i in plan.items}

    if opts.method == "patched":
        for i in plan.items:
            x = torch.from_numpy(norm.forward(plan.stack[i]))
            acc = np.zeros(spatial, dtype=np.float64)
            cnt = np.zeros(spatial, dtype=np.float64)
            for t in ts:
                a, s = model.schedule.alpha_sigma(t)
                eps = _draw("ddpm", gens[i], spatial)
                noisy = a * x + s * eps
                for c0 in range(0, len(plan.patches), batch_size):
                    chunk = range(c0, min(c0 + batch_size, len(plan.patches)))
                    crops = []
                    for k in chunk:
                        ctx, pat = plan.context[k], plan.patches[k]
                        crop = a * x[ctx].clone()  # clean context at the signal level of x_t
                        rel = tuple(slice(p.start - c.start, p.stop - c.start) for p, c in zip(pat, ctx))
                        crop[rel] = noisy[pat]
                        crops.append(crop)
                    x_t = torch.stack(crops)[:, None].to(device)
                    recon, n = yield from _relay(_reconstruct(model, x_t, t, opts), step, total, f"{label}patched t={t:.0f}")
                    step += n
                    recon = recon[:, 0].float().cpu().numpy()
                    for j, k in enumerate(chunk):
                        ctx, pat = plan.context[k], plan.patches[k]
                        rel = tuple(slice(p.start - c.start, p.stop - c.start) for p, c in zip(pat, ctx))
                        r = _residual(x[pat].numpy(), recon[j][rel], opts.direction)
                        acc[pat] += r
                        cnt[pat] += 1
            m = (acc / np.maximum(cnt, 1) / len(ts)) * half
            out[i] = _postprocess(m, plan.fg[i], opts)
            yield Progress(step=step, total=total, message=f"{label}patched", preview=out[i] if out[i].ndim == 2 else None)
    else:
        for b0 in range(0, len(plan.items), batch_size):
            batch = plan.items[b0 : b0 + batch_size]
            x = torch.from_numpy(norm.forward(plan.stack[batch]))[:, None]
            acc = np.zeros((len(batch), *spatial), dtype=np.float64)
            for t in ts:
                a, s = model.schedule.alpha_sigma(t)
                eps = torch.stack([_draw(opts.method, gens[i], spatial) for i in batch])[:, None]
                x_t = (a * x + s * eps).to(device)
                recon, n = yield from _relay(_reconstruct(model, x_t, t, opts), step, total, f"{label}{opts.method} t={t:.0f}")
                step += n
                acc += _residual(x[:, 0].numpy(), recon[:, 0].float().cpu().numpy(), opts.direction)
            for j, i in enumerate(batch):
                out[i] = _postprocess(acc[j] / len(ts) * half, plan.fg[i], opts)
            last = out[batch[-1]]
            yield Progress(step=step, total=total, message=f"{label}{opts.method}", preview=last if last.ndim == 2 else None)
    if plan.squeeze:
        return out[0]
    if plan.axis is not None:
        return np.moveaxis(out, 0, plan.axis)
    return out[0] if model.config.spatial_dims == 3 else out


def _relay(inner: Generator[None, None, torch.Tensor], step: int, total: int, message: str
           ) -> Generator[Progress, None, tuple[torch.Tensor, int]]:
    """Run ``inner``, yielding a Progress per network call; returns its result and the call count."""
    n = 0
    while True:
        try:
            next(inner)
        except StopIteration as stop:
            return stop.value, n
        n += 1
        yield Progress(step=step + n, total=total, message=message)


def _postprocess(m: np.ndarray, fg: np.ndarray, opts: AnomalyOptions) -> np.ndarray:
    if opts.median_size > 1:
        m = ndi.median_filter(m, size=opts.median_size, mode="nearest")
    return np.where(fg, m, 0.0).astype(np.float32)


def _restore_fg(plan: _Plan) -> np.ndarray:
    """The plan's foreground back in the scan's axis order."""
    if plan.squeeze:
        return plan.fg[0]
    if plan.axis is not None:
        return np.moveaxis(plan.fg, 0, plan.axis)
    return plan.fg[0]


def scan_score(amap: np.ndarray, fg: np.ndarray) -> float:
    """The scan's anomaly score: the 99th percentile of the map inside the foreground."""
    values = amap[fg] if fg.any() else amap.ravel()
    return float(np.percentile(values, SCORE_PERCENTILE)) if values.size else 0.0


def _check_threshold(model: DiffusionModel, threshold: str | float, opts: AnomalyOptions) -> float:
    if isinstance(threshold, str):
        if threshold != "auto":
            try:
                return float(threshold)
            except ValueError:
                raise ValueError(f"threshold must be 'auto' or a number, got {threshold!r}") from None
        cal = model.config.anomaly
        where = model.path or "this model"
        if "threshold" not in cal:
            raise ModelError(
                f"{where}: no calibrated anomaly threshold; run `medidiff anomaly calibrate MODEL HEALTHY_DIR` "
                "on healthy scans first, or pass a threshold (--threshold VALUE)"
            )
        stored = cal.get("options", {})
        differ = [k for k, v in opts.to_dict().items() if k in stored and stored[k] != v]
        if differ:
            detail = ", ".join(f"{k}={opts.to_dict()[k]!r} (calibrated: {stored[k]!r})" for k in differ)
            raise ModelError(
                f"{where}: the calibrated threshold was made with other options: {detail}; "
                "use the calibrated options, recalibrate with these (`medidiff anomaly calibrate`), or pass --threshold"
            )
        return float(cal["threshold"])
    return float(threshold)


def detect_anomalies_steps(
    model: DiffusionModel,
    scan: Scan,
    *,
    method: str | None = None,
    timesteps: Sequence[float] | None = None,
    recon: str | None = None,
    ddim_steps: int | None = None,
    patch_size: int | Sequence[int] | None = None,
    median_size: int | None = None,
    foreground: bool | None = None,
    direction: str | None = None,
    threshold: str | float = "auto",
    batch_size: int = 8,
    seed: int = 0,
    device: str = "auto",
) -> Generator[Progress, None, AnomalyResult]:
    """Anomaly map, mask and score of ``scan``; yields one ``Progress`` per network call.

    method:      ``"ddpm"`` (Gaussian noise), ``"simplex"`` (AnoDDPM simplex noise) or ``"patched"``
                 (pDDPM: one noised patch at a time, patch_size default a quarter of the side);
    timesteps:   noise levels (times of the model's schedule), default 30% and 45% of its length,
                 3 times each (300,300,300,450,450,450 for a 1000-step DDPM); residuals are
                 averaged over them; a time given twice is drawn twice with fresh noise;
    recon:       ``"tweedie"`` (one network call per timestep) or ``"ddim"`` (``ddim_steps`` calls);
    median_size: median filter of the map (0 or 1: none); foreground: score Otsu tissue only;
    direction:   ``"both"`` (|x - recon|), ``"bright"`` or ``"dark"`` (one-signed residual);
    threshold:   ``"auto"`` (the model's calibrated threshold, see :func:`calibrate_threshold`) or
                 a number in the map's units (the scan's intensity units).

    Options left ``None`` take the values the model was calibrated with, else the defaults
    (ddpm, Tweedie, median 3, foreground, both). Same ``seed`` -> same map, whatever ``batch_size``.
    """
    if not isinstance(scan, Scan):
        raise TypeError(f"detect_anomalies expects a Scan, got {type(scan).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    opts = resolve_options(model, method=method, timesteps=timesteps, recon=recon, ddim_steps=ddim_steps,
                           patch_size=patch_size, median_size=median_size, foreground=foreground, direction=direction)
    thr = _check_threshold(model, threshold, opts)
    model.to(resolve_device(device))
    model.network.eval()
    plan = _plan(model, scan, opts, batch_size)
    try:
        amap = yield from _map_steps(model, plan, opts, seed, batch_size)
    finally:
        release_memory(model.device)
    fg = _restore_fg(plan)
    score = scan_score(amap, fg)
    mask = (amap > thr) & fg
    volume = float(mask.sum() * np.prod(scan.spacing))
    info = {"score": score, "threshold": thr, "volume_mm3": volume, "method": opts.method,
            "score_definition": f"{SCORE_PERCENTILE:g}th percentile of the map in the foreground"}
    meta = {**scan.meta, "anomaly": info}
    return AnomalyResult(
        map=scan.with_array(amap.astype(np.float32), meta=meta),
        mask=scan.with_array(mask.astype(np.float32), meta={**scan.meta, "anomaly": info, "label": True}),
        score=score, threshold=thr, volume_mm3=volume,
        foreground=scan.with_array(fg.astype(np.float32)), options=opts.to_dict(),
    )


def detect_anomalies(model: DiffusionModel, scan: Scan, *, show: bool = False, **opts: Any) -> AnomalyResult:
    """Plain twin of :func:`detect_anomalies_steps` (``show``: a tqdm progress bar)."""
    return run_to_end(detect_anomalies_steps(model, scan, **opts), show=show, desc="anomaly")


# -- calibration ---------------------------------------------------------------------------------
def calibrate_threshold_steps(
    model: DiffusionModel,
    healthy_scans: Iterable[Scan | str | Path],
    percentile: float = 99.0,
    *,
    save: bool = True,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "auto",
    **detect_opts: Any,
) -> Generator[Progress, None, float]:
    """Threshold = ``percentile`` of the anomaly map over the foreground voxels of healthy scans.

    Stored in ``model.config.anomaly`` (threshold, percentile, method, options, voxel and scan
    counts) and, with ``save`` and a model loaded from a folder, written back to that folder
    atomically (the model card gains an "Anomaly calibration" section). ``detect_opts`` are the
    options of :func:`detect_anomalies_steps` (defaults, not a previous calibration, fill the rest).
    """
    from medidiff.core.data import expand_inputs

    if not 0 < percentile < 100:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    scans = expand_inputs(list(healthy_scans) if not isinstance(healthy_scans, (str, Path, Scan)) else healthy_scans)
    opts = resolve_options(model, use_calibrated=False, **detect_opts)
    model.to(resolve_device(device))
    model.network.eval()
    plans = [_plan(model, s, opts, batch_size) for s in scans]
    total = sum(p.calls for p in plans)
    values = []
    step = 0
    try:
        for k, (s, plan) in enumerate(zip(scans, plans)):
            amap = yield from _map_steps(model, plan, opts, sample_seed(seed, k), batch_size, step, total, f"scan {k + 1}/{len(scans)} ")
            step += plan.calls
            fg = _restore_fg(plan)
            values.append(amap[fg])
    finally:
        release_memory(model.device)
    pooled = np.concatenate(values) if values else np.zeros(0)
    if pooled.size == 0:
        raise InvalidScanError(None, "the healthy scans have no foreground voxels to calibrate on")
    threshold = float(np.percentile(pooled, percentile))
    model.config.anomaly = {
        "threshold": threshold, "percentile": float(percentile), "method": opts.method, "options": opts.to_dict(),
        "n_voxels": int(pooled.size), "n_scans": len(scans), "seed": int(seed),
        "units": "scan intensity units (|x - reconstruction|)",
        "score": f"{SCORE_PERCENTILE:g}th percentile of the map in the foreground",
    }
    if save and model.path is not None:
        _save_calibration(model)
    return threshold


def calibrate_threshold(model: DiffusionModel, healthy_scans: Iterable[Scan | str | Path], percentile: float = 99.0,
                        *, show: bool = False, **detect_opts: Any) -> float:
    """Plain twin of :func:`calibrate_threshold_steps`; returns the threshold."""
    return run_to_end(calibrate_threshold_steps(model, healthy_scans, percentile, **detect_opts), show=show, desc="calibrate")


def _save_calibration(model: DiffusionModel) -> None:
    """Re-save the model folder atomically with the calibration, keeping (and extending) its card."""
    path = Path(model.path)
    card_path = path / "MODEL_CARD.md"
    card = card_path.read_text() if card_path.is_file() else None
    cal = model.config.anomaly
    section = (
        "## Anomaly calibration\n\n"
        f"- threshold: {cal['threshold']:.6g} (scan units), the {cal['percentile']:g}th percentile of the map over "
        f"{cal['n_voxels']:,} foreground voxels of {cal['n_scans']} healthy scans\n"
        f"- method: {cal['method']}, options: {cal['options']}\n"
    )
    if card is not None:
        head = card.split("## Anomaly calibration")[0].rstrip("\n")
        card = head + "\n\n" + section
    else:
        from medidiff.core.model import default_model_card

        card = default_model_card(model).rstrip("\n") + "\n\n" + section
    model.save(path, overwrite=True, model_card=card)


# -- sidecar: what a map file cannot hold ----------------------------------------------------------
_SCAN_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".tiff", ".tif", ".png", ".jpg", ".jpeg")


def scan_stem(path: str | Path) -> str:
    """A scan file's name without its scan suffix (``case1.nii.gz`` -> ``case1``)."""
    name = Path(path).name
    for suffix in _SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def sidecar_path(map_path: str | Path) -> Path:
    """Where the score and threshold of a saved map go: ``case1.nii.gz`` -> ``case1.anomaly.json``."""
    p = Path(map_path)
    return p.with_name(scan_stem(p) + ".anomaly.json")


def write_sidecar(result: AnomalyResult, map_path: str | Path, overwrite: bool = False, extra: dict | None = None) -> Path:
    """Write the map's score, threshold, volume and options as JSON next to it (atomically)."""
    import json

    from medidiff.io.atomic import atomic_file

    path = sidecar_path(map_path)
    info = {"score": result.score, "threshold": result.threshold, "volume_mm3": result.volume_mm3,
            "score_definition": f"{SCORE_PERCENTILE:g}th percentile of the map in the foreground",
            "options": result.options, **(extra or {})}
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return path


def read_sidecar(map_path: str | Path) -> dict[str, Any] | None:
    """The sidecar of a map written by :func:`write_sidecar`, or ``None`` when there is none."""
    import json

    path = sidecar_path(map_path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidScanError(path, f"not a readable anomaly sidecar ({exc})") from None
