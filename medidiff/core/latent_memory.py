"""Peak memory of a latent model's networks on a whole latent.

The prior's peak memory on a latent of ``V`` voxels per sample, batch ``b``, is estimated
as ``4 b (sum_l (r + 2) c_l V_l + 12 max_l c_l V_l + sum_attn 2 h_l V_l^2)`` bytes
(:func:`prior_peak_bytes`): level ``l`` of the U-Net has ``c_l`` channels on
``V_l = V / 2^(d l)`` voxels, ``r`` residual blocks whose outputs are kept as skips, a
working set of about twelve maps of the widest level, and at each attention level (always
the middle block) the ``h_l`` heads' ``V_l x V_l`` attention matrix, which grows with the
square of the latent. Measured against the CPU's peak resident memory of one forward pass
it is 0.9-1.3x for peaks of 150 MiB and up (smaller ones are dominated by fixed overheads;
docs/latent.md). The decoder (:func:`decoder_peak_bytes`) keeps no skips and has no
attention: about nine maps of its widest level, the full pixel field at its first channel
count. :meth:`medidiff.core.latent_model.LatentModel.plan` compares these with half of
:func:`medidiff.core.devices.available_bytes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _levels(channels: Sequence[int], size: Sequence[int]) -> list[tuple[int, float]]:
    """``(channels, voxels)`` of each U-Net level (level 0 at ``size``, each level half per axis)."""
    voxels = float(np.prod([int(s) for s in size]))
    return [(int(c), voxels / 2 ** (len(size) * level)) for level, c in enumerate(channels)]


def prior_peak_bytes(network: dict[str, Any], latent_size: Sequence[int], batch: int = 1) -> int:
    """Estimated peak memory (bytes, float32, inference) of one prior call on ``batch`` latents of ``latent_size``.

    See the module docstring; ``network`` is a ``ModelConfig.network`` (channels, attention
    levels, residual blocks, head channels). Rough by design (measured 0.9-1.3x of the real peak).
    """
    levels = _levels(network["channels"], latent_size)
    r = int(network.get("num_res_blocks", 1))
    skips = sum((r + 2) * c * v for c, v in levels)
    working = 12 * max(c * v for c, v in levels)
    attn_at = list(network.get("attention_levels", ()))
    attn_at = [bool(a) for a in attn_at] + [False] * (len(levels) - len(attn_at))
    attn_at[-1] = True  # MONAI's middle block always attends
    head = max(1, int(network.get("num_head_channels", 8)))
    attention = sum(2 * max(1, c // head) * v * v for (c, v), a in zip(levels, attn_at) if a)
    return int(4 * batch * (skips + working + attention))


def decoder_peak_bytes(network: dict[str, Any], latent_size: Sequence[int], factor: int, batch: int = 1) -> int:
    """Estimated peak memory (bytes, float32) of decoding ``batch`` latents of ``latent_size`` in one piece.

    The decoder keeps no skips: about nine maps of its widest level (the full pixel field at
    the first channel count) are alive at once.
    """
    pixels = [int(s) * int(factor) for s in latent_size]
    widest = max(c * v for c, v in _levels(network["channels"], pixels))
    return int(4 * batch * 9 * widest)
