"""Memorisation: is a generated image a copy of a training image? The ``structure-ncc`` rule.

Whole-image normalised cross-correlation (NCC) of intensities is dominated by an image's
outline: on one brain, two neighbouring 2.2 mm slices reach NCC 0.95-0.985, and so does a
blurred brain-shaped look-alike, so a threshold on it cannot separate copies from look-alikes.
This module compares *structure* instead:

1. **Band-pass.** Each image ``x`` becomes ``b(x) = G_s1 * x - G_s2 * x`` (a difference of
   Gaussians, ``s1 < s2`` pixels): the detail between about ``s1`` and ``s2`` pixels. Brightness
   and contrast changes (``a x + c``) only scale ``b`` by ``a``; the ``s1`` pre-smoothing
   removes most of the pixel noise a model (or an attacker) adds; a copy slightly blurred by a
   decoder (sigma < s1) keeps almost all of its band, while a look-alike blurred by 2-3 pixels,
   or an image that merely shares the outline, has little detail in the band that matches.
2. **Foreground interior.** Only pixels inside the training image's foreground (Otsu threshold of
   the lightly smoothed image, holes filled), eroded by ``ceil(2 s2)`` pixels, count: the band-pass
   response of the outline itself (the foreground-background edge) is left out, so the outline
   cannot dominate again. The ``ceil(2 s2)``-pixel border of the sample is left out as well (the
   filter sees past the edge of a crop differently from the full training image); a sample
   smaller than that border plus 16 pixels per axis keeps a 16-pixel core.
3. **Every alignment.** The training image is padded by ``margin`` pixels; for every shift of the
   sample over it (and the sample left-right flipped: training augments with flips) the NCC of
   the two band-passed images over the pixels both masks keep is

       r(u) = sum_p (T_p - mT)(R_{p+u} - mR) / sqrt(sum_p (T_p - mT)^2 * sum_p (R_{p+u} - mR)^2),

   with ``p`` over the kept pixels ``K(u)`` and ``mT, mR`` the means over them. All of its sums
   (of ``T``, ``T^2``, ``R``, ``R^2``, ``T R`` and the count ``|K(u)|``) are cross-correlations of
   masked images, so one FFT product each gives ``r`` at every shift (Padfield's masked NCC).
   Shifts that compare fewer than ``min_pixels`` (200, or half the sample's kept pixels if that is
   less) pixels are not scored: an NCC over a
   sliver of overlap is noise. (So a sample that is mostly background, e.g. a crop of the air
   around a head, has too little structure to be called a copy; it also leaks no anatomy.)

The score of a sample is the highest ``r`` over training images, shifts and the flip; a copy
scores near 1 (exactly 1 for a copy up to brightness and contrast), a sample at or above the
threshold is flagged. Settings (``s1 = 1.5``, ``s2 = 3`` px) and threshold (0.95) were chosen on a
validation split of nibabel's ``example4d`` slices and measured on a separate test split
(``benchmarks/memorisation.py``, table in ``benchmarks/README.md``): copies (exact, shifted
crops, flipped, x0.7 + offset, 2-5 % noise, 0.7 px blur) scored >= 0.970; blurred look-alikes
(2-3 px) <= 0.87, a slice against its 2.2 mm neighbours <= 0.82, held-out slices <= 0.27 (48 x 64
crops of them <= 0.71). The boundary case is a 50/50 blend of two neighbouring slices (up to
0.955: by construction a blend correlates with each parent better than the parents with each
other, ``sqrt((1 + rho) / 2)``). Whole-image intensity NCC scored every one of those non-copies
>= 0.93 and could not separate them (copies >= 0.985, non-copies up to 0.996).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RULE = "structure-ncc"


@dataclass(frozen=True)
class StructureRule:
    """Settings of the ``structure-ncc`` rule (see the module docstring)."""

    s1: float = 1.5  # inner Gaussian (pixels): noise suppression
    s2: float = 3.0  # outer Gaussian (pixels): what is taken away (outline, shading)
    threshold: float = 0.95  # flag at or above
    margin: int = 8  # shifts searched beyond the training image's edges (pixels)
    min_pixels: int = 200  # a shift must compare at least this many pixels to be scored

    @property
    def name(self) -> str:
        return RULE

    @property
    def border(self) -> int:
        return int(np.ceil(2 * self.s2))

    def describe(self) -> str:
        """One line naming the rule and its settings, for reports."""
        return (f"{RULE}: NCC of difference-of-Gaussians detail (sigma {self.s1:g}-{self.s2:g} px) inside the "
                f"training foreground, best shift and flip; flagged at >= {self.threshold:g}")


DEFAULT_RULE = StructureRule()


def band_pass(image: np.ndarray, s1: float, s2: float) -> np.ndarray:
    """Difference of Gaussians ``G_s1 * x - G_s2 * x`` (``s1 = 0``: the image itself minus its blur)."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(image, dtype=np.float64)
    inner = gaussian_filter(x, s1, mode="reflect") if s1 > 0 else x
    return inner - gaussian_filter(x, s2, mode="reflect")


def foreground_interior(image: np.ndarray, erode: int) -> np.ndarray:
    """Otsu foreground of the 1-pixel-smoothed image, holes filled, eroded by ``erode`` pixels.

    The image's own edges do not erode it (a crop that is all foreground stays all foreground).
    A constant image has no foreground.
    """
    from scipy.ndimage import binary_erosion, binary_fill_holes, gaussian_filter
    from skimage.filters import threshold_otsu

    smooth = gaussian_filter(np.asarray(image, dtype=np.float64), 1.0)
    if np.ptp(smooth) <= 0:
        return np.zeros(smooth.shape, dtype=bool)
    mask = binary_fill_holes(smooth > threshold_otsu(smooth))
    if erode > 0:
        mask = binary_erosion(mask, iterations=erode, border_value=1)
    return mask


@dataclass
class Reference:
    """A training image prepared once for :func:`best_match`: its padded band-pass and kept-pixel mask.

    ``cache`` keeps, per sample size, the reference's FFTs and its sums under the sample's window
    (they do not depend on the sample), so each further sample costs three inverse FFTs.
    """

    band: np.ndarray
    mask: np.ndarray
    offset: tuple[int, int]  # padding before row 0 and column 0
    cache: dict = field(default_factory=dict, repr=False, compare=False)


def prepare_reference(image: np.ndarray, rule: StructureRule = DEFAULT_RULE,
                      min_shape: tuple[int, int] | None = None) -> Reference:
    """Band-pass and foreground interior of a training image, padded by ``rule.margin`` pixels.

    The padding (reflected for the filter) is never compared: the mask is False there. An image
    smaller than ``min_shape`` (the samples' size) gets more padding so every sample fits over it.
    """
    img = np.asarray(image, dtype=np.float64)
    m = rule.margin
    need = [max(0, t - s) for s, t in zip(img.shape, min_shape or img.shape)]
    pads = [(m + d // 2, m + d - d // 2) for d in need]
    band = band_pass(np.pad(img, pads, mode="reflect" if min(img.shape) > 1 else "edge"), rule.s1, rule.s2)
    mask = np.pad(foreground_interior(img, rule.border), pads, constant_values=False)
    return Reference(band * mask, mask.astype(np.float64), (pads[0][0], pads[1][0]))


def _valid(spectrum: np.ndarray, shape: tuple[int, int], small: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    """The valid part of a cross-correlation given as the product of spectra over ``shape``."""
    from scipy import fft

    full = fft.irfft2(spectrum, shape)
    return full[small[0] - 1 : small[0] - 1 + out[0], small[1] - 1 : small[1] - 1 + out[1]]


def _reference_side(ref: Reference, weight: np.ndarray) -> tuple:
    """FFT shape, valid-output shape, spectra of M and R M, and the sums n, sum R, sum R^2 under ``weight``."""
    from scipy import fft

    key = (weight.shape, weight.tobytes())
    if key not in ref.cache:
        (H, W), (h, w) = ref.band.shape, weight.shape
        shape = (fft.next_fast_len(H + h - 1, real=True), fft.next_fast_len(W + w - 1, real=True))
        out = (H - h + 1, W - w + 1)
        R, M = ref.band, ref.mask
        Mf, RMf, R2Mf = (fft.rfft2(a, shape) for a in (M, R * M, R * R * M))
        wf = fft.rfft2(weight[::-1, ::-1], shape)
        n, s_r, s_r2 = (_valid(f * wf, shape, (h, w), out) for f in (Mf, RMf, R2Mf))
        ref.cache[key] = (shape, out, Mf, RMf, np.round(n), s_r, s_r2)
    return ref.cache[key]


def masked_ncc_map(template: np.ndarray, weight: np.ndarray, ref: Reference,
                   min_pixels: int = 200) -> np.ndarray:
    """Masked NCC of a band-passed ``template`` (kept pixels ``weight``) at every valid shift over ``ref``.

    Returns an array over shifts (``ref`` shape minus template shape plus 1); shifts with too few
    kept pixels, or no variance in either image there, are ``-inf``.
    """
    from scipy import fft

    h, w = template.shape
    if h > ref.band.shape[0] or w > ref.band.shape[1]:
        raise ValueError(f"template {template.shape} larger than the padded reference {ref.band.shape}")
    shape, out, Mf, RMf, n, s_r, s_r2 = _reference_side(ref, weight)
    Tw = template * weight
    tf, t2f = (fft.rfft2(a[::-1, ::-1], shape) for a in (Tw, Tw * template))
    s_t = _valid(Mf * tf, shape, (h, w), out)
    s_t2 = _valid(Mf * t2f, shape, (h, w), out)
    s_tr = _valid(RMf * tf, shape, (h, w), out)
    ok = n >= min_pixels
    nn = np.where(ok, n, 1.0)
    cov = s_tr - s_t * s_r / nn
    var_t = s_t2 - s_t * s_t / nn
    var_r = s_r2 - s_r * s_r / nn
    tiny = 1e-12 * max(float(np.max(np.abs(s_t2))), float(np.max(np.abs(s_r2))), 1e-300)
    ok &= (var_t > tiny) & (var_r > tiny)
    r = np.full(out, -np.inf)
    r[ok] = cov[ok] / np.sqrt(var_t[ok] * var_r[ok])
    return np.clip(r, -1.0, 1.0, out=r)


@dataclass
class Match:
    """A sample's best match in one set of training images."""

    training: int
    score: float
    position: tuple[int, int]  # top-left corner of the sample in the (unpadded) training image
    flipped: bool


def best_match(sample: np.ndarray, references: list[Reference], rule: StructureRule = DEFAULT_RULE) -> Match:
    """The training image, shift and flip with the highest structure NCC for one 2D ``sample``.

    ``score`` is 0.0 (and ``training`` -1) when nothing can be compared (a constant sample, or no
    training foreground under it).
    """
    img = np.asarray(sample, dtype=np.float64)
    best = Match(-1, -np.inf, (0, 0), False)
    b = min(rule.border, max(0, (min(img.shape) - 16) // 2))  # small samples keep a 16-pixel core
    weight = np.zeros(img.shape)
    weight[b : img.shape[0] - b, b : img.shape[1] - b] = 1.0
    min_pixels = int(min(rule.min_pixels, weight.sum() // 2))
    if np.ptp(img) == 0 or min_pixels < 1:
        return Match(-1, 0.0, (0, 0), False)
    for flipped in (False, True):
        tmpl = band_pass(img[:, ::-1] if flipped else img, rule.s1, rule.s2)
        for k, ref in enumerate(references):
            if tmpl.shape[0] > ref.band.shape[0] or tmpl.shape[1] > ref.band.shape[1]:
                continue
            r = masked_ncc_map(tmpl, weight, ref, min_pixels)
            pos = np.unravel_index(int(np.argmax(r)), r.shape)
            if r[pos] > best.score:
                best = Match(k, float(r[pos]), (int(pos[0]) - ref.offset[0], int(pos[1]) - ref.offset[1]), flipped)
    if not np.isfinite(best.score):
        return Match(-1, 0.0, (0, 0), False)
    return best


def structure_scores(samples: np.ndarray | list[np.ndarray], training: list[np.ndarray],
                     rule: StructureRule = DEFAULT_RULE) -> list[Match]:
    """:func:`best_match` of every 2D sample against every 2D training image (prepared once)."""
    size = np.asarray(samples[0]).shape if len(samples) else None
    refs = [prepare_reference(t, rule, size) for t in training]
    return [best_match(s, refs, rule) for s in samples]
