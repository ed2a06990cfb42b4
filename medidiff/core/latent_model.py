"""``LatentModel``: a diffusion prior over autoencoder latents, plus the autoencoder and scale factor.

The latent scale factor
    A diffusion schedule assumes data of about unit variance (the noise it adds at the last
    step is N(0, 1)). Latents of a KL autoencoder have whatever spread the encoder learnt, so
    they are standardised first: ``u = (z - shift) * scale_factor`` with ``shift`` the mean and
    ``scale_factor = 1 / std`` of the training latents (Rombach et al. 2022, sec. 4.3; MONAI's
    tutorials compute it and then lose it). It is **stored** here, twice on purpose: as
    ``latent.json`` (readable) and as the prior's own normaliser, ``Normaliser(shift - 1/sf,
    shift + 1/sf, kind="given")``, whose ``forward`` is exactly that map. Loading checks that the
    two agree.

The x0 limit
    ``x0_limit`` is the largest ``|u|`` of the training latents (about 4 for a unit-variance
    latent). Samplers clip their x0 prediction to it by default: a prior that is unsure early in
    sampling can predict latents far outside anything the decoder was trained on, which decode
    to speckle (measured: clipping there cut the background brightness of failed samples ~2.5x).

A latent model is a folder::

    MODEL/               the ordinary DiffusionModel folder of the latent prior
      latent.json        format, scale_factor, shift, latent and pixel field sizes,
                         the autoencoder's weights sha256
      autoencoder/       the Autoencoder folder (config.json + weights.safetensors)

so pixel-space model folders (no ``latent.json``) load unchanged with ``DiffusionModel.load``.

Whole-field coherence
    A sample larger than the training field is sampled as *one* latent: the prior (a
    convolutional U-Net) runs on the whole latent in every network call
    (:meth:`LatentModel.whole_field_prior`), so there are no prior windows, whose gaussian
    blend still leaves each window its own picture and a faint grid. The decoder (no attention,
    purely convolutional) then decodes the whole latent at once too, unless the output exceeds
    ``WHOLE_DECODE_VOXELS``; only then it decodes in gaussian-blended windows of the training
    latent field. :func:`window_borders` and :func:`seam_ratio` measure what a window grid would
    leave: the mean ``|gradient|`` across the window borders over the mean ``|gradient|`` a few
    pixels beside them (1 = no seam).

When the whole latent does not fit (the fallback)
    :meth:`LatentModel.plan` compares the prior's estimated peak memory on the whole latent
    (:mod:`medidiff.core.latent_memory`) with half the memory available on the device, or the
    latent voxels of one call with a ``max_latent_voxels`` cap given by the caller. If one
    sample's whole latent fits, the batch per network call shrinks to what fits; if not, the
    latent is sampled in gaussian-blended windows of the prior's training latent field (the
    pixel models' sliding window, :func:`medidiff.core.sampling.network_output_steps`, here
    half overlapping) and decoded in half-overlapping windows, with one
    :class:`LatentWindowsWarning` line: windows may show seams (measured in
    ``tests/tasks/test_latent.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medidiff.core.autoencoder import Autoencoder
from medidiff.core.config_check import read_record
from medidiff.core.intensity import Normaliser
from medidiff.core.devices import available_bytes
from medidiff.core.latent_memory import decoder_peak_bytes, prior_peak_bytes
from medidiff.core.model import DiffusionModel
from medidiff.errors import MedidiffError, ModelError

FORMAT = "medidiff-latent"
FORMAT_VERSION = 1
LATENT_JSON = "latent.json"
AUTOENCODER_DIR = "autoencoder"
# outputs up to this many pixels are decoded in one piece (the decoder is convolutional: memory
# grows linearly, ~0.5 GB for a 4M-voxel volume with the small preset); larger ones in windows
WHOLE_DECODE_VOXELS = 2 ** 22
# prior windows of the fallback overlap by half: seam_ratio 1.10 at 2x the test model's field,
# against 1.25 at MONAI's 1/4 (the same samples made whole: 0.91-1.06)
PRIOR_WINDOW_OVERLAP = 0.5


class LatentWindowsWarning(UserWarning):
    """A latent too large for the device is sampled in windows (seams may show)."""


@dataclass(frozen=True)
class LatentPlan:
    """How generation runs a latent of ``latent_size``: whole or in windows, and samples per network call.

    ``reason`` says why windows (empty when whole); ``windows`` counts the prior windows per
    sample (0 when whole).
    """

    latent_size: tuple[int, ...]
    whole: bool
    batch: int
    windows: int = 0
    reason: str = ""
    overlap: float = PRIOR_WINDOW_OVERLAP


def latent_normaliser(shift: float, scale_factor: float) -> Normaliser:
    """The prior's normaliser: latent units -> ``(z - shift) * scale_factor`` (unit variance)."""
    half = 1.0 / float(scale_factor)
    return Normaliser(float(shift) - half, float(shift) + half, kind="given",
                      detail=f"latent: (z - {shift:.6g}) * scale_factor {scale_factor:.6g}")


def is_latent_model(folder: str | Path) -> bool:
    """True when ``folder`` holds a latent model (a ``latent.json``)."""
    return (Path(folder) / LATENT_JSON).is_file()


@dataclass
class LatentModel:
    """A latent diffusion prior, its autoencoder and the latent standardisation."""

    prior: DiffusionModel
    autoencoder: Autoencoder
    scale_factor: float
    shift: float = 0.0
    x0_limit: float | None = None  # max |u| of the training latents: the default x0 clip when sampling
    path: Path | None = None
    # most latent voxels one whole-latent call (prior or decoder) may hold, batch included; beyond it
    # windows (batched as the sliding window batches them); None: decided from free memory
    max_latent_voxels: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale_factor) and self.scale_factor > 0 and math.isfinite(self.shift)):
            raise ModelError(f"latent scale_factor must be a positive finite number and shift finite, "
                             f"got {self.scale_factor!r}, {self.shift!r}")
        cap = self.max_latent_voxels
        if cap is not None and (not isinstance(cap, (int, np.integer)) or isinstance(cap, bool) or cap < 1):
            raise MedidiffError(f"max_latent_voxels must be an integer >= 1 or None, got {cap!r}")
        if self.x0_limit is not None and not (math.isfinite(self.x0_limit) and self.x0_limit > 0):
            raise ModelError(f"latent x0_limit must be a positive finite number or absent, got {self.x0_limit!r}")
        pc, ac = self.prior.config, self.autoencoder.config
        if pc.spatial_dims != ac.spatial_dims:
            raise ModelError(f"the latent prior is {pc.spatial_dims}D but the autoencoder is {ac.spatial_dims}D")
        if ac.latent_channels != 1:
            raise ModelError(f"the autoencoder has {ac.latent_channels} latent channels; latent priors take 1")

    @property
    def device(self) -> torch.device:
        return self.prior.device

    @property
    def field_size(self) -> tuple[int, ...]:
        """The pixel field a sample has by default: the prior's latent size times the factor."""
        return tuple(s * self.autoencoder.factor for s in self.prior.config.image_size)

    @property
    def spatial_dims(self) -> int:
        return self.prior.config.spatial_dims

    def whole_field_prior(self, latent_size: Sequence[int]) -> DiffusionModel:
        """The prior set up to run on a whole latent of ``latent_size`` per network call (no windows).

        A shallow copy sharing the network; only its recorded field differs, which is what the
        samplers compare against to decide on sliding windows.
        """
        view = copy.copy(self.prior)
        view.config = dataclasses.replace(self.prior.config, image_size=tuple(int(s) for s in latent_size))
        return view

    def plan(self, latent_size: Sequence[int], batch: int = 1, available: int | None = None) -> LatentPlan:
        """Whole latent or windows for sampling ``latent_size`` latents, ``batch`` per call (see module docstring).

        With ``max_latent_voxels`` set, a call may hold that many latent voxels; otherwise the
        prior's estimated peak must fit half of ``available`` bytes (default:
        :func:`available_bytes` of the model's device; unknown memory counts as enough). Warns
        (:class:`LatentWindowsWarning`, one line) when it falls back to windows.
        """
        from medidiff.core.windows import pad_widths, window_slices

        size = tuple(int(s) for s in latent_size)
        voxels = int(np.prod(size))
        batch = max(1, int(batch))
        if self.max_latent_voxels is not None:
            fit = int(self.max_latent_voxels) // voxels
            why = f"max_latent_voxels={self.max_latent_voxels}"
        else:
            free = available if available is not None else available_bytes(self.device)
            per_sample = prior_peak_bytes(self.prior.config.network, size)
            fit = batch if free is None else int((free // 2) // max(per_sample, 1))
            why = (f"its estimated peak of {per_sample / 2**30:.3g} GiB per sample exceeds half the "
                   f"{(free or 0) / 2**30:.3g} GiB available on {self.device}")
        roi = tuple(int(s) for s in self.prior.config.image_size)
        if fit >= 1 or all(s <= r for s, r in zip(size, roi)):
            return LatentPlan(size, True, max(1, min(batch, fit)))
        padded = [s + sum(pad_widths(size, roi)[2 * k : 2 * k + 2]) for k, s in enumerate(reversed(size))][::-1]
        count = len(window_slices(padded, roi, PRIOR_WINDOW_OVERLAP))
        pixels = "x".join(str(s * self.autoencoder.factor) for s in size)
        reason = (f"the whole {'x'.join(map(str, size))} latent of the requested {pixels} field does not fit "
                  f"({why}): sampling it in {count} overlapping windows of the prior's "
                  f"{'x'.join(map(str, roi))} training latent instead; window seams may show")
        warnings.warn(reason, LatentWindowsWarning, stacklevel=3)
        return LatentPlan(size, False, batch, count, reason)

    def sampling_prior(self, plan: LatentPlan) -> DiffusionModel:
        """The network the samplers run for ``plan``: the whole-field view, or the prior itself (windows)."""
        return self.whole_field_prior(plan.latent_size) if plan.whole else self.prior

    def decode(self, u: torch.Tensor, window: Sequence[int] | None = None, available: int | None = None) -> np.ndarray:
        """Scan-unit images ``(N, *pixel size)`` from standardised latents ``u`` ``(N, 1, *latent size)``.

        ``u`` is mapped back to ``z`` by the prior's normaliser (the stored scale factor) and
        decoded; by the autoencoder's normaliser into scan units. ``window`` (latent voxels):
        decode in gaussian-blended windows of this size; default: in one piece (as many samples
        at once as fit half of ``available`` bytes, see :meth:`plan`) up to
        ``WHOLE_DECODE_VOXELS`` output voxels and within ``max_latent_voxels``, else windows of
        the training latent field.
        """
        norm = self.prior.normaliser
        z = u.float() * float(norm.half_range) + float((norm.high + norm.low) / 2.0)
        latent = tuple(int(s) for s in z.shape[2:])
        chunk = z.shape[0]
        if window is None:
            voxels = int(np.prod(latent)) * self.autoencoder.factor ** self.spatial_dims
            fit = chunk
            if self.max_latent_voxels is not None:
                fit = int(self.max_latent_voxels) // int(np.prod(latent))
            else:
                free = available if available is not None else available_bytes(self.device)
                need = decoder_peak_bytes(self.autoencoder.config.network, latent, self.autoencoder.factor)
                fit = chunk if free is None else int((free // 2) // max(need, 1))
            whole = voxels <= WHOLE_DECODE_VOXELS and fit >= 1
            window = None if whole else tuple(self.prior.config.image_size)
            chunk = max(1, min(chunk, fit))
        if window is None or all(s <= w for s, w in zip(latent, window)):
            x = torch.cat([self.autoencoder.decode(z[i : i + chunk]).cpu() for i in range(0, z.shape[0], chunk)])
        else:
            x = self._decode_windows(z, tuple(int(w) for w in window))
        return self.autoencoder.normaliser.inverse(x.cpu().numpy()[:, 0])

    @torch.no_grad()
    def _decode_windows(self, z: torch.Tensor, window: tuple[int, ...], overlap: float = 0.5) -> torch.Tensor:
        """Gaussian-blended decoder windows, half overlapping.

        The decoder's GroupNorm normalises each window by its own statistics, so windows differ
        by a few per cent in brightness (mean |difference| ~10 % of the signal on the test model);
        at MONAI's default overlap of 1/4 that left a seam (:func:`seam_ratio` 1.58), at 1/2 the
        blend hides it (1.03, as decoded whole: 0.99-1.04).
        """
        from monai.inferers import sliding_window_inference

        ae = self.autoencoder
        z = z.to(ae.device)
        return torch.cat([sliding_window_inference(z[b : b + 1], roi_size=window, sw_batch_size=4,
                                                   predictor=ae.network.decode, overlap=overlap, mode="gaussian",
                                                   padding_mode="replicate") for b in range(z.shape[0])])

    def to(self, device: str | torch.device) -> "LatentModel":
        self.prior.to(device)
        self.autoencoder.to(self.prior.device)
        return self

    def latent_record(self) -> dict[str, Any]:
        """What ``latent.json`` holds."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "scale_factor": float(self.scale_factor),
            "shift": float(self.shift), "x0_limit": self.x0_limit, "factor": self.autoencoder.factor,
            "latent_size": list(self.prior.config.image_size), "field_size": list(self.field_size),
            "autoencoder": AUTOENCODER_DIR,
        }

    def save(self, folder: str | Path, overwrite: bool = False, model_card: str | None = None) -> Path:
        """Write MODEL/ (the prior), MODEL/autoencoder/ and MODEL/latent.json."""
        folder = Path(folder)
        self.prior.save(folder, overwrite=overwrite, model_card=model_card)
        write_latent_parts(folder, self)
        self.path = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "LatentModel":
        """Load a latent model folder; ``ModelError`` (one line) for anything missing or inconsistent."""
        from medidiff.core.autoencoder import sha256_file

        folder = Path(folder)
        lpath = folder / LATENT_JSON
        if not lpath.is_file():
            if (folder / "config.json").is_file():
                raise ModelError(f"{folder}: a pixel-space model (no {LATENT_JSON}); use `medidiff generate` for it")
            raise ModelError(f"{folder}: not a medidiff latent model folder (no {LATENT_JSON})")
        raw = read_record(lpath, FORMAT, "latent record")
        if raw.get("format_version") not in range(1, FORMAT_VERSION + 1):
            raise ModelError(f"{lpath}: latent format_version {raw.get('format_version')!r} is not one this medidiff reads")
        sf, shift = raw.get("scale_factor"), raw.get("shift", 0.0)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (sf, shift)):
            raise ModelError(f"{lpath}: scale_factor and shift must be numbers, got {sf!r}, {shift!r}")
        limit = raw.get("x0_limit")
        if limit is not None and (not isinstance(limit, (int, float)) or isinstance(limit, bool)
                                  or not math.isfinite(limit) or limit <= 0):
            raise ModelError(f"{lpath}: x0_limit must be a positive number or null, got {limit!r}")
        ae_dir = folder / AUTOENCODER_DIR
        autoencoder = Autoencoder.load(ae_dir, device="cpu")
        expected = raw.get("autoencoder_weights_sha256")
        if expected != sha256_file(ae_dir / "weights.safetensors"):
            raise ModelError(f"{ae_dir}: these autoencoder weights are not the ones the prior was trained on "
                             f"({LATENT_JSON} records another sha256)")
        prior = DiffusionModel.load(folder, device="cpu")
        want = latent_normaliser(float(shift), float(sf))
        got = prior.normaliser
        if not (math.isclose(got.low, want.low, rel_tol=1e-6, abs_tol=1e-9) and
                math.isclose(got.high, want.high, rel_tol=1e-6, abs_tol=1e-9)):
            raise ModelError(f"{lpath}: scale_factor {sf} / shift {shift} disagree with the prior's normaliser "
                             f"[{got.low:.6g}, {got.high:.6g}] in config.json; the folder is damaged")
        model = cls(prior, autoencoder, float(sf), float(shift), None if limit is None else float(limit), path=folder)
        return model.to(device)


def write_latent_parts(folder: Path, model: LatentModel) -> None:
    """Add ``autoencoder/`` and ``latent.json`` to an existing prior folder (replacing older ones)."""
    from medidiff.core.autoencoder import sha256_file
    from medidiff.io.atomic import atomic_file

    folder = Path(folder)
    ae_dir = folder / AUTOENCODER_DIR
    model.autoencoder.save(ae_dir, overwrite=True)
    record = dict(model.latent_record(), autoencoder_weights_sha256=sha256_file(ae_dir / "weights.safetensors"))
    with atomic_file(folder / LATENT_JSON, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def window_borders(size: int, roi: int, overlap: float = 0.25) -> list[int]:
    """Inner edges (start and end positions, ``0 < b < size``) of MONAI's sliding windows along one axis.

    The grid ``sliding_window_inference`` uses: windows of ``roi`` every ``int(roi * (1 - overlap))``
    positions, the last one flush with the end.
    """
    if size <= roi:
        return []
    step = max(1, int(roi * (1 - overlap)))
    starts = list(range(0, size - roi + 1, step))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return sorted({b for s in starts for b in (s, s + roi) if 0 < b < size})


def seam_ratio(images: np.ndarray, borders: Sequence[Sequence[int]], period: int = 1, beside: int = 3) -> float:
    """Mean ``|gradient|`` across window borders over the mean ``|gradient|`` at the same phase beside them.

    ``images`` ``(N, *size)``; ``borders[a]`` the border positions along spatial axis ``a``
    (pixels; the gradient across border ``b`` is ``x[b] - x[b-1]``). The reference is the
    gradient ``k * period`` pixels away (``k = 1..beside``, both sides, not on another border):
    with ``period`` the autoencoder factor, reference and border sit at the same phase of the
    decoder's upsampling grid, which has its own faint period. 1 means the borders look like
    their neighbourhood; a window grid shows as > 1 (the pixel-space windows of issue 14
    measured 1.2-1.3). Borders outside the image are skipped; ``nan`` when none is left.
    """
    stack = np.asarray(images, dtype=np.float64)
    at, near = [], []
    for axis, positions in enumerate(borders):
        ax = axis + 1
        grad = np.abs(np.diff(stack, axis=ax))  # grad[k] = x[k+1] - x[k]: border b is grad[b - 1]
        n = grad.shape[ax]
        edge = set(positions)
        for b in positions:
            if not 0 < b <= n:  # not inside the image: no gradient across it
                continue
            at.append(np.take(grad, [b - 1], axis=ax).ravel())
            ref = [b - 1 + k * period * sign for k in range(1, beside + 1) for sign in (-1, 1)]
            ref = [r for r in ref if 0 <= r < n and (r + 1) not in edge]
            if ref:
                near.append(np.take(grad, ref, axis=ax).ravel())
    if not at or not near:
        return float("nan")
    return float(np.mean(np.concatenate(at)) / max(np.mean(np.concatenate(near)), 1e-12))
