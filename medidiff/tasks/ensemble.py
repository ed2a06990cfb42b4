"""Geometric self-ensemble: average a denoiser over flips and 90-degree rotations of its input.

For a group ``G`` of pixel-grid symmetries (flips, and 90-degree rotations when the pixels are
square) the ensemble estimate is ``f_G(x) = 1/|G| sum_g g^-1 f(g x)``. If the noise and the
prior are invariant under ``G`` (white noise is; anatomy is nearly so), every ``g^-1 f(g x)`` is
an equally good estimate with partly independent errors, so the average has a lower error (the
usual gain is a few tenths of a dB, at ``|G|`` times the cost). ``f_G`` is *exactly* equivariant:
``f_G(h x) = h f_G(x)`` for every ``h`` in ``G``, because ``g -> g h`` only reorders the sum.

``ensemble=1``: the plain network. ``4``: the flips of the two in-plane axes (any pixel grid).
``8``: the whole dihedral group of the square (flips and rotations): only for square pixels,
since a rotation of a grid with non-square pixels is not a symmetry of the scan.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import torch

from medidiff.core.progress import Progress, run_to_end

__all__ = ["ENSEMBLE_SIZES", "transforms", "ensemble_average", "ensemble_average_steps"]

ENSEMBLE_SIZES = (1, 4, 8)

Transform = tuple[int, bool, bool]  # (quarter turns, flip rows, flip columns) on the last two axes


def transforms(size: int) -> list[Transform]:
    """The group elements for ``size`` 1, 4 or 8 (identity first)."""
    flips = [(0, False, False), (0, True, False), (0, False, True), (0, True, True)]
    if size == 1:
        return flips[:1]
    if size == 4:
        return flips
    if size == 8:
        return flips + [(1, False, False), (1, True, False), (1, False, True), (1, True, True)]
    raise ValueError(f"ensemble must be one of {ENSEMBLE_SIZES}, got {size}")


def _apply(x: torch.Tensor, g: Transform) -> torch.Tensor:
    turns, flip_r, flip_c = g
    dims = [d for d, on in ((-2, flip_r), (-1, flip_c)) if on]
    y = torch.flip(x, dims) if dims else x
    return torch.rot90(y, turns, dims=(-2, -1)) if turns else y


def _undo(x: torch.Tensor, g: Transform) -> torch.Tensor:
    turns, flip_r, flip_c = g
    y = torch.rot90(x, -turns, dims=(-2, -1)) if turns else x
    dims = [d for d, on in ((-2, flip_r), (-1, flip_c)) if on]
    return torch.flip(y, dims) if dims else y


def ensemble_average_steps(fn: Callable[[torch.Tensor], Generator[Any, None, torch.Tensor]], x: torch.Tensor,
                           size: int) -> Generator[Progress, None, torch.Tensor]:
    """``1/|G| sum_g g^-1 fn(g x)`` with ``fn`` a generator twin (e.g. ``predict_steps``).

    Passes on ``fn``'s events and yields one more between group elements (none after the last:
    as ``fn``, the last call's end is the return), so per-call progress counts every call.
    """
    group = transforms(size)
    total = None
    for k, g in enumerate(group):
        out = _undo((yield from fn(_apply(x, g))), g)
        total = out if total is None else total + out
        if k + 1 < len(group):
            yield Progress(step=k + 1, total=len(group), message=f"ensemble {k + 1}/{len(group)}")
    return total / len(group)


def _at_once(value: torch.Tensor) -> Generator[Any, None, torch.Tensor]:
    return value
    yield  # pragma: no cover - makes this a generator


def ensemble_average(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int) -> torch.Tensor:
    """``1/|G| sum_g g^-1 fn(g x)`` over the ``size`` transforms of the last two axes of ``x``."""
    return run_to_end(ensemble_average_steps(lambda y: _at_once(fn(y)), x, size))
