"""Super-resolution: sample a full-resolution image given a low-resolution one (issue 14 §2, a cascade's second stage).

A super-resolution model is an ordinary :class:`~medidiff.core.model.DiffusionModel` whose config
has ``lowres_factor = F`` (``medidiff.tasks.train.train(..., super_resolution=F)``; no CLI flag: see docs/latent.md). Training takes crops ``x`` of
the training scans as any model does and gives the network one more input channel: the crop's own
block mean ``D(x)`` (F x F (x F) voxels averaged, :meth:`DiffusionModel.downsample`), upsampled
bilinearly back to the crop's size. The loss is the ordinary denoising loss, so the network learns
the score of ``p(x | D(x))``: the detail the low-resolution image leaves open, drawn at random, not
averaged away as an interpolation or an L1-trained decoder does. Nothing is dropped for guidance:
the condition is always given.

Upsampling an image ``y`` (scan units, any size): the model's per-scan normaliser is fitted on
``y`` itself (MR, microscopy; CT keeps its window), so the scan's units do not matter, ``y`` goes
to network units, and the sampler starts from noise at ``F`` times the size with ``y`` as the
condition. An output larger than the training crop is predicted in gaussian-blended windows of the
crop (:mod:`medidiff.core.windows`; overlap 1/2 by default): every window sees its part of
``y``, so the windows agree on the layout, and the seam is measured in the benchmark. The output
is inverted with the same normaliser and gets ``y``'s field of view on an F times finer grid
(:func:`medidiff.core.data.regridded_affine`).

Consistency is not enforced: ``D(output)`` is close to ``y`` only as far as the model learnt it;
``benchmarks/cascade.py`` measures it (PSNR of ``D(output)`` against ``y``).

A cascade is a low-resolution model (trained on block-averaged scans, :func:`medidiff.core.data.block_mean`)
whose samples are upsampled here; ``benchmarks/cascade.py`` compares it with one latent model at the
same training budget (``benchmarks/README.md``).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np
import torch

from medidiff.core.data import regridded_affine
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, plain_twin, relay
from medidiff.errors import MedidiffError
from medidiff.io.scan import Scan


def check_super_resolution(model: DiffusionModel) -> int:
    """The model's upsampling factor; one-line ``MedidiffError`` when it is not a super-resolution model."""
    f = int(model.config.lowres_factor)
    if not f:
        raise MedidiffError(f"{model.path or 'model'}: not a super-resolution model "
                            "(train one with medidiff.tasks.train.train(..., super_resolution=F))")
    return f


def upsample_steps(
    model: DiffusionModel | str | Path,
    images: Sequence[Scan | np.ndarray],
    *,
    seed: int = 0,
    steps: int = 25,
    sampler: str | None = None,
    overlap: float = 0.5,
    clip_x0: float | None = 1.0,
) -> Generator[Progress, None, list[Scan]]:
    """Upsample each image ``factor`` times per axis with a super-resolution model; one ``Progress`` per step.

    ``model``: a loaded model or its folder. ``images``: Scans or arrays (2D for a 2D model, 3D for a
    3D one), in scan units. Image ``i`` draws its noise from ``sample_seed(seed, i)``: the same seed gives the same output. Returns one
    Scan per image, on the image's field of view with ``factor`` times finer voxels (arrays get
    unit spacing first).
    """
    from medidiff.core.sampling import check_sampler, generate_batch, sample_seed
    from medidiff.io.scan import affine_from_spacing

    if not isinstance(model, DiffusionModel):
        model = DiffusionModel.load(model)
    f = check_super_resolution(model)
    try:
        sampler = check_sampler(model, sampler)
    except ValueError as exc:
        raise MedidiffError(str(exc)) from None
    if not 0 <= overlap < 1:
        raise MedidiffError(f"overlap {overlap!r}: give a share of the window in [0, 1)")
    scans = [im if isinstance(im, Scan) else Scan(np.asarray(im, np.float32), (1.0,) * np.ndim(im),
                                                      affine_from_spacing((1.0,) * np.ndim(im)))
             for im in images]
    dims = model.config.spatial_dims
    names = [str(s.meta.get("source_path", f"image {k}")) for k, s in enumerate(scans)]
    for name, s in zip(names, scans):
        if s.ndim != dims:
            raise MedidiffError(f"{name}: a {s.ndim}D image; this super-resolution model is {dims}D")
        if not np.isfinite(s.array).all():
            raise MedidiffError(f"{name}: has NaN or infinite values")
    total = len(scans) * steps
    out: list[Scan] = []
    yield Progress(step=0, total=total, message=f"upsampling {len(scans)} images x{f}")
    for k, (name, s) in enumerate(zip(names, scans)):
        norm = model.normaliser.for_scan(s.array, source=name)
        low = torch.from_numpy(norm.forward(s.array))[None, None].to(model.device)
        size = tuple(n * f for n in s.shape)
        inner = generate_batch(model, [sample_seed(seed, k)], sampler=sampler, steps=steps, clip_x0=clip_x0,
                               image_size=size, overlap=overlap, lowres=low)
        x = yield from relay(inner, step=k * steps, total=total, message=f"image {k + 1}/{len(scans)}")
        arr = norm.inverse(x[0, 0].detach().float().cpu().numpy())
        meta = {**s.meta, "super_resolution": f, "seed": int(seed), "index": k,
                "model": model.path.name if model.path else ""}
        out.append(Scan(arr, tuple(v / f for v in s.spacing), regridded_affine(s.affine, [1.0 / f] * s.ndim),
                        s.modality, meta))
    return out


upsample = plain_twin(upsample_steps, "upsample")
