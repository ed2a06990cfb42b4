"""Sliding windows over an image larger than the network's training size: placement and weights.

An image larger than the training size ``roi`` is covered by windows of size ``roi``. Along
each axis of length ``L`` the stride is ``int(roi * (1 - overlap))`` (the whole axis when
``L == roi``) and the last window is moved back to end flush with the far edge, so every voxel
is covered and no window leaves the image. An axis shorter than ``roi`` is first padded to
``roi`` (replicate, split evenly before and after) and cropped again at the end.

Each window's output ``o_w`` is weighted by a gaussian importance map ``g`` (std ``0.125 roi``
per axis, peak 1, tiny values raised to a floor so no voxel gets zero weight), and the blend is

    out(v) = sum_w g(v - start_w) o_w(v) / sum_w g(v - start_w),

so overlapping windows cross-fade and window edges (where a convolutional network is least
reliable) count least: no seams. Placement and weights are MONAI's
(``monai.inferers.sliding_window_inference(mode="gaussian")``, whose helpers
``dense_patch_slices`` and ``compute_importance_map`` are used here); the loop over windows
lives in :func:`medidiff.core.sampling.network_output_steps`, which reports progress per
batch of windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["fits", "pad_widths", "window_slices", "window_calls", "importance_map"]


def fits(spatial: Sequence[int], roi: Sequence[int]) -> bool:
    """Whether an image of ``spatial`` size is one network call (no axis longer than ``roi``)."""
    return all(int(s) <= int(r) for s, r in zip(spatial, roi))


def pad_widths(spatial: Sequence[int], roi: Sequence[int]) -> list[int]:
    """``torch.nn.functional.pad`` widths (last axis first) that bring every axis up to ``roi``."""
    pad: list[int] = []
    for s, r in zip(reversed(tuple(spatial)), reversed(tuple(roi))):
        diff = max(int(r) - int(s), 0)
        pad += [diff // 2, diff - diff // 2]
    return pad


def window_slices(spatial: Sequence[int], roi: Sequence[int], overlap: float = 0.25) -> list[tuple[slice, ...]]:
    """The windows over an image of ``spatial`` size (already padded to at least ``roi``), row-major."""
    from monai.data.utils import dense_patch_slices

    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}")
    size = tuple(max(int(s), int(r)) for s, r in zip(spatial, roi))
    interval = tuple(r if s == r else max(int(r * (1 - overlap)), 1) for s, r in zip(size, roi))
    return list(dense_patch_slices(size, tuple(int(r) for r in roi), interval))


def window_calls(n_items: int, spatial: Sequence[int], roi: Sequence[int], sw_batch_size: int,
                 overlap: float = 0.25) -> int:
    """Network calls for ``n_items`` images of ``spatial`` size: 1 when they fit, else window batches.

    The windows of all items are taken in one sequence, ``sw_batch_size`` per call.
    """
    if fits(spatial, roi):
        return 1
    return math.ceil(n_items * len(window_slices(spatial, roi, overlap)) / max(int(sw_batch_size), 1))


def importance_map(roi: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """The gaussian window weight ``(1, 1, *roi)``: std 0.125 roi, peak 1, floored above zero."""
    from monai.data.utils import compute_importance_map

    w = compute_importance_map(tuple(int(r) for r in roi), mode="gaussian", sigma_scale=0.125, device=device,
                               dtype=torch.float32)
    return w.reshape(1, 1, *w.shape[-len(roi):])
