"""Fit to this scan: denoising with no clean data (``medidiff denoise MODEL|none IN OUT --fit``).

A diffusion prior is normally learnt from clean images. Here the only data is the noisy scan
``y = x + sigma n`` (``n`` unit white Gaussian, after the noise model's variance-stabilising map
``NoiseDomain.to_gaussian``: the identity for Gaussian noise, the Rician VST for Rician noise,
the rescaled generalised Anscombe transform for Poisson-Gaussian noise, whose noise is then
Gaussian of std ``sigma``).

Derivation (consistent Tweedie / Noisier2Noise with a diffusion network)
-------------------------------------------------------------------------
Train an ordinary epsilon-prediction diffusion network with ``y`` as if it were clean
(:mod:`medidiff.tasks.fit_train`): ``z = y + s e`` (``e ~ N(0, I)``) and the network learns, by
denoising score matching, ``D(z, s) = E[y | z]``, so ``(D(z, s) - z) / s^2 = grad log p_z(z)``
(Tweedie for the density of ``z``). Because ``y`` already carries Gaussian noise of std
``sigma``, ``z = x + sqrt(sigma^2 + s^2) n'``: ``p_z`` is the *clean* density smoothed at level
``tau = sqrt(sigma^2 + s^2)``. Tweedie's formula for that level then gives the clean posterior
mean from the noisy network alone::

    E[x | z] = z + tau^2 grad log p_z(z) = z + (sigma^2 + s^2) / s^2 * (D(z, s) - z).

No clean image enters anywhere; the estimate is unbiased for any ``s > 0`` if ``D`` is exact
(the "consistent Tweedie" of ambient diffusion; for ``s = sigma`` it is Noisier2Noise's
``2 D(z) - z``). We evaluate it at a fresh ``z = y + s e_k`` for ``draws`` independent ``e_k``
and average: each draw estimates ``E[x | z_k]``, and the average removes most of the extra
noise the draws added (``E_e E[x | y + s e]`` is a slightly smoothed ``E[x | y]``).

Why not plain Noise2Score (``y + sigma^2 grad log p_y(y)``, the score at ``s -> 0``)? The
score of ``p_y`` at levels ``s << sigma`` is what the network learns worst from noisy data (its
regression target is almost pure noise), and the factor ``sigma^2 / s^2`` multiplies its error.
Training levels are therefore drawn log-uniformly in ``[0.5, 2] * sigma`` (the low-noise end,
where this scan's denoising happens) and the estimator uses ``s = RATIO * sigma``. Measured on
the held-out cell sample (660x275, Poisson-Gaussian 10%, noisy 23.84 dB, Gaussian blur at its
best sigma *on this image* 40.74 dB), one network trained 60 s on one CPU core, PSNR in dB:

===================================================  ============  ==================
estimator                                            from scratch  micro2d fine-tuned
===================================================  ============  ==================
fresh z, s = 0.5 sigma, 1 / 8 draws                  40.05 / 40.68  38.73 / 39.46
fresh z, s = 0.75 sigma, 1 / 8 draws                 39.63 / 40.89  39.93 / 41.14
fresh z, s = sigma (Noisier2Noise), 1 / 8 draws      39.23 / 40.91  39.47 / 41.05
fresh z, s = 1.5 sigma, 1 / 8 draws                  38.06 / 40.55  38.13 / 40.58
at y: y + sigma^2/s^2 (D(y,s) - y), s = 0.5 sigma    37.53          38.85
at y: y + tau^2/s^2 (D(y,s) - y), s = 0.5 sigma      40.35          38.21
at y: 2 D(y, sigma) - y                              37.16          36.40
===================================================  ============  ==================

So: fresh draws, ``s = sigma`` (``RATIO``), 8 draws by default (``draws``). Feeding ``y``
itself to the network (the shortcut of Noise2Score and of Noisier2Noise at test time) is a
distribution shift that costs 1-4 dB here.

A given model (``mr2d``, ``micro2d``, a user's) is fine-tuned the same way: its weights are the
starting point (a copy; the loaded model is never changed), its per-scan normaliser maps the
scan, and its window is the crop size; ``model=None`` trains a ``tiny`` network from scratch.
Progress is one event per training step and per estimator draw, so closing the generator
(cancel) stops within one step; ``minutes`` bounds training by wall clock and ``max_steps`` by
steps (the result is exactly reproducible for a seed when ``max_steps`` stops it first).
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from medidiff.core import noise as noise_lib
from medidiff.core.intensity import Normaliser
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import Progress, plain_twin, relay
from medidiff.core.slicing import SliceLayout
from medidiff.errors import InvalidScanError, MedidiffError
from medidiff.io import Scan
from medidiff.tasks import denoise_checks as checks
from medidiff.tasks import denoise_selfcheck as selfcheck
from medidiff.tasks.fit_train import FitTrainConfig, fit_network_steps

__all__ = ["FitOptionError", "FitResult", "MIN_FIT_SIDE", "RATIO", "fit_and_denoise_steps", "fit_and_denoise",
           "fit_advice"]

MIN_FIT_SIDE = 32  # the smallest image side a network can be fitted on (one 32x32 crop at least)
RATIO = 1.0  # estimator level s / sigma
SCRATCH_PRESET = "tiny"


class FitOptionError(MedidiffError, ValueError):
    """A ``--fit`` option is out of range (the message names it)."""


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit_and_denoise` returns: the denoised scan, the fitted model and how it was fitted.

    ``sigma``: the noise std removed (scan units; Poisson-Gaussian: the stabilised domain's).
    ``steps``/``seconds``: training steps and seconds; ``stopped_by_clock``: the time budget ended it.
    ``self_check``: the SURE-estimated gain of the returned image (``denoise_selfcheck.SelfCheck``),
    None when skipped.
    """

    scan: Scan
    model: DiffusionModel
    sigma: float
    noise_model: str
    reason: str
    steps: int
    seconds: float
    stopped_by_clock: bool
    losses: tuple[float, ...] = ()
    self_check: selfcheck.SelfCheck | None = None


def _source(scan: Scan) -> str:
    return str(scan.meta.get("source_path") or "scan")


def _check_options(minutes: float, max_steps: int, draws: int, batch_size: int) -> None:
    if not (np.isfinite(minutes) and minutes > 0):
        raise FitOptionError(f"--fit-minutes must be a number > 0, got {minutes}")
    if minutes > 24 * 60:
        raise FitOptionError(f"--fit-minutes {minutes} is more than a day; give at most 1440")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise FitOptionError(f"--fit-steps must be an integer >= 1, got {max_steps!r}")
    if not isinstance(draws, int) or not 1 <= draws <= 64:
        raise FitOptionError(f"fit draws must be an integer in 1..64, got {draws!r}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 1024:
        raise FitOptionError(f"batch size must be an integer in 1..1024, got {batch_size!r}")


def _start_model(model, scan: Scan, device: str) -> DiffusionModel:
    """A private copy of the given model (never the caller's or the registry's), or a new tiny one."""
    from medidiff.model_store.registry import resolve_model

    if model is None or (isinstance(model, str) and model.lower() == "none"):
        norm = Normaliser(0.0, 1.0, kind="foreground", detail="0.5-99.5")
        return DiffusionModel.create(2, MIN_FIT_SIDE, preset=SCRATCH_PRESET, normaliser=norm,
                                     modality=scan.modality, spacing=tuple(scan.spacing[-2:]))
    net = resolve_model(model, device="cpu")
    if net.config.spatial_dims != 2:
        raise FitOptionError(f"{net.path or 'model'}: --fit fine-tunes 2D models only; this one is 3D")
    if net.config.num_classes or net.config.mask_classes:
        raise FitOptionError(f"{net.path or 'model'}: --fit cannot fine-tune a class- or mask-conditioned model")
    if net.schedule.kind != "ddpm" or net.schedule.config.prediction != "epsilon":
        raise FitOptionError(f"{net.path or 'model'}: --fit fine-tunes DDPM epsilon-prediction models only")
    return copy.deepcopy(net)


def _crop_size(model: DiffusionModel, item_shape: tuple[int, ...], source: str) -> int:
    side = min(item_shape)
    if len(item_shape) != 2 or side < MIN_FIT_SIDE:
        raise InvalidScanError(source, f"is {'x'.join(map(str, item_shape))} pixels per image; fitting a model to "
                                       f"the scan itself needs at least {MIN_FIT_SIDE}x{MIN_FIT_SIDE} "
                                       "(too little data to learn from); use a pre-trained model without --fit")
    m = model.config.size_multiple
    return int(min(max(model.config.image_size), side) // m * m)


@torch.no_grad()
def _estimate(model: DiffusionModel, y: np.ndarray, sigma: float, draws: int, seed: int, index: int,
              ratio: float = RATIO) -> Generator[Progress, None, np.ndarray]:
    """Consistent Tweedie ``E[x | z] = z + (sigma^2+s^2)/s^2 (D(z,s) - z)`` averaged over ``draws`` fresh ``z``."""
    from medidiff.core.sampling import predict

    s = ratio * sigma
    t = model.schedule.timestep_for_noise(s)
    alpha = model.schedule.alpha_sigma(t)[0]
    gain = (sigma ** 2 + s ** 2) / s ** 2
    yy = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[None, None].to(model.device)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index, 7]).generate_state(1)[0]))
    acc = torch.zeros_like(yy, dtype=torch.float64)
    for k in range(draws):
        z = yy + s * torch.randn(yy.shape, generator=gen).to(model.device)
        d = predict(model, alpha * z, t)[0]
        acc += (z + gain * (d - z)).double()
        yield Progress(step=k + 1, total=draws, message="fit estimate")
    return (acc / draws)[0, 0].float().cpu().numpy()


def fit_and_denoise_steps(
    model,
    scan: Scan,
    *,
    noise: str = "auto",
    sigma: float | None = None,
    minutes: float = 2.0,
    max_steps: int = 100_000,
    draws: int = 8,
    batch_size: int = 16,
    lr: float | None = None,
    seed: int = 0,
    device: str = "auto",
    self_check: bool = True,
) -> Generator[Progress, None, FitResult]:
    """Fit ``model`` (``None``/``"none"``: a new tiny network) to the noisy ``scan`` itself, then denoise it.

    noise, sigma: as for ``denoise`` (the noise model and its std in scan units; estimated by default).
    minutes:      wall-clock budget for training; ``max_steps`` caps the steps.
    draws:        fresh-noise draws averaged by the estimator (one network call each per item).
    lr:           learning rate (default 1e-3 from scratch, 2e-4 fine-tuning). ``seed``: crops,
                  levels and draws. ``device``: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    self_check:   estimate the result's gain without clean data (SURE, as ``denoise`` does) and warn
                  when it is small. The estimator with its seeded draws is a fixed function of the
                  scan, so one more pass at ``y + eps s b`` (``draws`` network calls per item) gives
                  Monte-Carlo SURE of exactly the returned image.
    Yields ``Progress`` (training: per cent of the budget, one event per step; then per draw).
    """
    from medidiff.core.devices import release_memory, resolve_device

    _check_options(minutes, max_steps, draws, batch_size)
    if noise not in ("auto", *noise_lib.NOISE_MODELS):
        raise FitOptionError(f"unknown noise model {noise!r}; choose auto or one of {', '.join(noise_lib.NOISE_MODELS)}")
    if sigma is not None and not (np.isfinite(sigma) and sigma >= 0):
        raise FitOptionError(f"sigma must be a finite number >= 0, got {sigma}")
    if not isinstance(scan, Scan):
        raise TypeError(f"fit_and_denoise expects a Scan, got {type(scan).__name__}")
    source = _source(scan)
    dev = resolve_device(device)
    fresh = model is None or (isinstance(model, str) and model.lower() == "none")
    net = _start_model(model, scan, device)
    layout = SliceLayout.for_model(net, scan)
    crop = _crop_size(net, layout.item_shape(scan.shape), source)
    checks.check_constant(scan.array, source)
    items = layout.to_items(scan.array)
    try:
        domain, reason = noise_lib.noise_domain(items, items, noise, sigma=sigma, modality=scan.modality,
                                                source_format=scan.meta.get("format"))
    except ValueError as exc:
        raise InvalidScanError(source, f"cannot estimate its noise: {exc}") from exc
    checks.check_signal(scan.array, domain.sigma, source)
    norm = net.normaliser.for_scan(scan.array, source=source, signal_of_mean=domain.signal_of_mean,
                                    noise_std=domain.std_at)
    if fresh:  # the new model keeps the rule, with this scan's fit as its reference units
        net.set_normaliser(Normaliser(norm.low, norm.high, kind="foreground", detail="0.5-99.5"))
    sigma_scan = float(np.median(domain.sigma))
    s_net = float(norm.scale_sigma(sigma_scan))
    if not s_net > 0:
        raise InvalidScanError(source, "has no measurable noise (sigma 0); there is nothing to fit or remove")
    work = norm.forward(domain.to_gaussian(items))
    cfg = FitTrainConfig(minutes=minutes, max_steps=max_steps, batch_size=batch_size, crop=crop,
                         lr=lr if lr is not None else (1e-3 if fresh else 2e-4), seed=seed)
    try:
        trained = yield from relay(fit_network_steps(net, work, s_net, cfg, dev))

        def run_pass(stack: np.ndarray, label: str) -> Generator[Progress, None, np.ndarray]:
            """The whole fitted denoiser on a scan-units stack (the same seeded draws every pass)."""
            net_in = work if stack is items else norm.forward(domain.to_gaussian(stack))
            res = np.empty(items.shape, dtype=np.float32)
            for i in range(items.shape[0]):
                est = yield from relay(_estimate(net, net_in[i], s_net, draws, seed, i),
                                       message=f"{label} {i + 1}/{items.shape[0]}")
                res[i] = domain.from_gaussian(norm.inverse(est), i)
            return res

        out = yield from run_pass(items, "estimate")
        check = None
        if self_check and selfcheck.available_on(net.device):
            s_map = selfcheck.noise_std_map(domain, items)
            probe_items, b = selfcheck.probe_input(items, s_map, seed)
            probed = yield from run_pass(probe_items, "self-check (SURE)")
            check = selfcheck.warn_if_unhelpful(
                selfcheck.evaluate(items, out, probed, s_map, b, domain, f"fit ({draws} draws)"), source,
                **fit_advice(trained.stopped_by_clock, minutes, trained.steps, sigma is not None))
    finally:
        release_memory(dev)
    net.config.training = {"fit": "noisy scan itself (consistent Tweedie)", "steps": trained.steps,
                           "seconds": round(trained.seconds, 1), "seed": seed, "sigma_network_units": s_net,
                           "source": source.rsplit("/", 1)[-1], "fine_tuned_from": "" if fresh else str(model)}
    meta = dict(scan.meta)
    meta["description"] = f"medidiff denoise (fit, {domain.model})"
    return FitResult(scan.with_array(layout.from_items(out), meta=meta), net, sigma_scan, domain.model, reason,
                     trained.steps, trained.seconds, trained.stopped_by_clock, tuple(trained.losses), check)


fit_and_denoise = plain_twin(fit_and_denoise_steps, "fit and denoise")


def fit_advice(stopped_by_clock: bool, minutes: float, steps: int, sigma_given: bool) -> dict[str, str]:
    """The self-check warning's wording for a fitted result (``denoise_selfcheck.warn_if_unhelpful``).

    A fit that helps little has most often not trained long enough, or was given a wrong noise
    level; "try --fit", the advice after a pretrained model, would be no advice here.
    """
    longer = (f"a larger --fit-minutes than {minutes:g}" if stopped_by_clock
              else f"more --fit-steps than {steps}")
    level = "check the --sigma given" if sigma_given else "check the noise level (give --sigma)"
    return {"subject": "the fitted model",
            "advice": f"train longer ({longer}), or {level}",
            "sigma_advice": "check --sigma" if sigma_given else "give the noise level with --sigma"}
