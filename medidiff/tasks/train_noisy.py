"""``medidiff train --noisy``: a diffusion model trained on a folder of noisy scans, no clean data.

The objective is the one ``denoise --fit`` uses, in one home (:mod:`medidiff.tasks.fit_train`;
the derivation is in :mod:`medidiff.tasks.fit`): each scan ``y = x + sigma n`` (after its noise
model's variance-stabilising map) is treated as data, extra noise ``s`` drawn log-uniformly in
``[0.5, 2] * sigma`` *of that scan* is added, and the network regresses the added noise. The
network then learns the score of the noisy-data density smoothed by ``s``, i.e. of the clean
density at level ``sqrt(sigma^2 + s^2)``, from which the consistent Tweedie estimator of
:mod:`medidiff.tasks.fit` recovers ``E[x | z]`` with no clean image anywhere. What differs from
``--fit`` is only the data: many scans, each normalised by the per-scan rule and each at its own
estimated noise level (``sigma`` in network units, recorded per scan in ``config.json``).

Plain ``denoise --method tweedie`` with such a model evaluates ``D(y, sigma) = E[y' | y]`` for a
noisy copy ``y'``, which is about half-way between ``y`` and the clean estimate (the two noises
are exchangeable given ``y``); it beats the noisy input but the consistent estimator of ``--fit``
is the sound one.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.core import noise as noise_lib
from medidiff.core.intensity import Normaliser
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, relay
from medidiff.core.slicing import SliceLayout
from medidiff.errors import InvalidScanError
from medidiff.io import Scan, load_scan

__all__ = ["NoisyItems", "noisy_items", "train_noisy_steps"]

RULE = ("foreground", "0.5-99.5")  # the per-scan normaliser rule (the one --fit and the built-ins use)


class NoisyItems:
    """The 2D items of all scans in network units, the noise std of each, and what was read."""

    def __init__(self) -> None:
        self.items: list[np.ndarray] = []
        self.sigmas: list[float] = []
        self.per_scan: list[dict[str, Any]] = []
        self.reference: Normaliser | None = None
        self.modality = "OT"
        self.spacing: tuple[float, ...] = ()


def noisy_items(data: Sequence[str | Path | Scan], noise: str, crop: int, slice_axis: int | None) -> NoisyItems:
    """Read, normalise (per scan) and noise-estimate every scan; refuse scans smaller than ``crop``."""
    from medidiff.core.data import scan_paths

    paths = [d for d in data if not isinstance(d, Scan)]
    scans = [d for d in data if isinstance(d, Scan)] + [load_scan(p) for p in (scan_paths(paths) if paths else [])]
    out = NoisyItems()
    rule = Normaliser(0.0, 1.0, kind=RULE[0], detail=RULE[1])
    for scan in scans:
        source = str(scan.meta.get("source_path") or "scan")
        axis = slice_axis if slice_axis is not None else (int(np.argmax(scan.spacing)) if scan.array.ndim == 3 else None)
        layout = SliceLayout.for_dims(2, scan.array.ndim, axis, source=source, shape=scan.shape)
        items = layout.to_items(scan.array)
        if min(items.shape[1:]) < crop:
            raise InvalidScanError(source, f"slices are {'x'.join(map(str, items.shape[1:]))} pixels; --noisy "
                                           f"training at --image-size {crop} needs at least {crop}x{crop}")
        try:
            domain, _ = noise_lib.noise_domain(items, items, noise, modality=scan.modality,
                                               source_format=scan.meta.get("format"))
        except ValueError as exc:
            raise InvalidScanError(source, f"cannot estimate its noise: {exc}") from exc
        norm = rule.for_scan(scan.array, source=source, signal_of_mean=domain.signal_of_mean,
                             noise_std=domain.std_at)
        s_net = float(norm.scale_sigma(float(np.median(domain.sigma))))
        if not s_net > 0:
            raise InvalidScanError(source, "has no measurable noise (sigma 0); train it without --noisy")
        work = norm.forward(domain.to_gaussian(items)).astype(np.float32)
        out.items.extend(work)
        out.sigmas.extend([s_net] * len(work))
        out.per_scan.append({"source": source.rsplit("/", 1)[-1], "noise_model": domain.model,
                             "sigma_network_units": round(s_net, 5), "items": len(work)})
        if out.reference is None:
            out.reference = Normaliser(norm.low, norm.high, kind=RULE[0], detail=RULE[1])
            out.modality, out.spacing = scan.modality, tuple(layout.item_spacing(tuple(scan.spacing)))
    if not out.items:
        raise InvalidScanError("DATA", "no scans to train on")
    return out


def train_noisy_steps(data: Sequence[str | Path | Scan], cfg, device) -> Generator[Progress, None, tuple]:
    """Train a new 2D model on noisy scans with the ``--fit`` objective; returns ``(model, fit result, items)``.

    ``cfg`` is a :class:`medidiff.tasks.train_config.TrainConfig` (``steps``, ``batch_size``,
    ``lr``, ``ema_decay``, ``preset``, ``image_size`` = crop side, ``seed``); ``noise="auto"``
    picks the noise model from each scan's modality.
    """
    from medidiff.tasks.fit_train import FitTrainConfig, fit_network_steps

    size = cfg.image_size if isinstance(cfg.image_size, int) else int(max(cfg.image_size))
    found = noisy_items(data, "auto", size, cfg.slice_axis)
    model = DiffusionModel.create(2, size, preset=cfg.preset, normaliser=found.reference, modality=found.modality,
                                  spacing=found.spacing, seed=cfg.seed)
    fit_cfg = FitTrainConfig(minutes=1e9, max_steps=cfg.total_steps, batch_size=cfg.batch_size, crop=size, lr=cfg.lr,
                             ema_decay=cfg.ema_decay, seed=cfg.seed)
    result = yield from relay(fit_network_steps(model, found.items, np.asarray(found.sigmas), fit_cfg, device),
                              message="train (noisy data)")
    return model, result, found
