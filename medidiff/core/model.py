"""``DiffusionModel``: a MONAI ``DiffusionModelUNet`` with its schedule, normaliser and metadata.

A model is a folder::

    config.json          network arguments, schedule, normaliser, training size/spacing,
                         conditioning, medidiff version, sha256 of the weights file
    weights.safetensors  (EMA) weights -- never a pickle
    MODEL_CARD.md        what it was trained on and how good it is

``DiffusionModel.load`` never unpickles, checks the hash, checks every config value for sense
(:mod:`medidiff.core.config_check`), and raises ``ModelError`` with a clear message for anything
that is not a medidiff model of a version it understands.

What the hash protects: the sha256 in config.json catches weights that were corrupted, truncated
or swapped by mistake. It is no signature: whoever can replace the weights can rewrite
config.json too. Safety against hostile folders comes from never unpickling (safetensors holds
only tensors) and from the value checks, not from the hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medidiff.version import __version__
from medidiff.errors import MedidiffError, ModelError
from medidiff.core.config_check import FORMAT, FORMAT_VERSION, FolderConfig, built_from_record, check_config, open_folder
from medidiff.core.intensity import Normaliser
from medidiff.io.atomic import atomic_dir
from medidiff.core.schedule import NoiseSchedule, ScheduleConfig
from medidiff.io.hashing import sha256_path as _sha256

# Network sizes. Parameter counts (2D, one input channel) are checked by the tests so this
# table stays true: tiny ~0.27 M (tests, CPU), small ~1.8 M (built-in models, CPU training),
# base ~26.6 M (GPU).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(channels=(16, 32, 32), attention_levels=(False, False, False), num_res_blocks=1, norm_num_groups=8, num_head_channels=8),
    "small": dict(channels=(32, 64, 96), attention_levels=(False, False, True), num_res_blocks=1, norm_num_groups=16, num_head_channels=32),
    "base": dict(channels=(64, 128, 256, 256), attention_levels=(False, False, True, True), num_res_blocks=2, norm_num_groups=32, num_head_channels=64),
}


class ConditioningError(MedidiffError, ValueError):
    """Class labels or masks that do not fit the model (a ``ValueError`` too, for older callers)."""


@dataclass
class ModelConfig(FolderConfig):
    """Everything needed to rebuild a model, stored as config.json (shared parts: ``FolderConfig``)."""

    WHAT = "model"
    PRESETS = PRESETS
    NETWORK_TUPLES = ("channels", "attention_levels")

    spatial_dims: int
    image_size: tuple[int, ...]
    preset: str = "tiny"
    network: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=lambda: ScheduleConfig().to_dict())
    normaliser: dict[str, Any] = field(default_factory=lambda: Normaliser(-1.0, 1.0, kind="identity").to_dict())
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    mask_classes: int = 0
    lowres_factor: int = 0  # > 0: a super-resolution model, conditioned on the image area-downsampled this many times
    spacing: tuple[float, ...] = ()
    orientation: str = ""
    modality: str = "OT"
    slice_axis: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    anomaly: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, Any] = field(default_factory=dict)  # denoise interval calibration (tasks.denoise_intervals)
    medidiff_version: str = __version__

    def __post_init__(self) -> None:
        self.settle()

    def check_network(self) -> None:
        """Every field a network, schedule, normaliser and geometry are built from (``check_config``)."""
        check_config(self.to_dict(), self.where)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if not d.get("lowres_factor"):
            del d["lowres_factor"]  # ordinary models keep the record they always had (re-saves are byte-stable)
        return d

    @property
    def in_channels(self) -> int:
        # image + (mask given indicator + one channel per mask label) when mask-conditioned
        # + the upsampled low-resolution image for a super-resolution model
        return 1 + (1 + self.mask_classes if self.mask_classes else 0) + (1 if self.lowres_factor else 0)


def build_network(config: ModelConfig) -> torch.nn.Module:
    """The MONAI ``DiffusionModelUNet`` described by ``config``."""
    from monai.networks.nets import DiffusionModelUNet

    net = config.network
    return DiffusionModelUNet(
        spatial_dims=config.spatial_dims,
        in_channels=config.in_channels,
        out_channels=1,
        channels=tuple(net["channels"]),
        attention_levels=tuple(net["attention_levels"]),
        num_res_blocks=net["num_res_blocks"],
        norm_num_groups=net["norm_num_groups"],
        num_head_channels=net["num_head_channels"],
        # one extra class index is the "no label" token used for classifier-free guidance
        num_class_embeds=config.num_classes + 1 if config.num_classes else None,
    )


class DiffusionModel:
    """A diffusion network plus schedule, normaliser and metadata; save/load as a folder."""

    def __init__(self, config: ModelConfig, network: torch.nn.Module | None = None) -> None:
        self.config = config
        self.network = network if network is not None else build_network(config)
        self.schedule = NoiseSchedule(ScheduleConfig(**config.schedule))
        self.normaliser = Normaliser.from_dict(config.normaliser)
        self.path: Path | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        spatial_dims: int,
        image_size: tuple[int, ...] | int,
        preset: str = "tiny",
        schedule: str = "ddpm",
        prediction: str | None = None,
        num_classes: int = 0,
        class_names: list[str] | None = None,
        mask_classes: int = 0,
        lowres_factor: int = 0,
        normaliser: Normaliser | None = None,
        spacing: tuple[float, ...] = (),
        orientation: str = "",
        modality: str = "OT",
        slice_axis: int | None = None,
        seed: int = 0,
    ) -> "DiffusionModel":
        """A new, untrained model; ``seed`` fixes the initial weights.

        ``lowres_factor > 0`` makes a super-resolution model: conditioned on its image area-downsampled
        by that factor per axis (:meth:`lowres_channel`)."""
        if isinstance(image_size, int):
            image_size = (image_size,) * spatial_dims
        if prediction is None:
            prediction = "flow" if schedule == "rflow" else "epsilon"
        config = ModelConfig(
            spatial_dims=spatial_dims,
            image_size=tuple(image_size),
            preset=preset,
            schedule=ScheduleConfig(kind=schedule, prediction=prediction).to_dict(),
            normaliser=(normaliser or Normaliser(-1.0, 1.0, kind="identity")).to_dict(),
            num_classes=num_classes,
            class_names=list(class_names or []),
            mask_classes=mask_classes,
            lowres_factor=int(lowres_factor),
            spacing=tuple(spacing),
            orientation=orientation,
            modality=modality,
            slice_axis=slice_axis,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = build_network(config)
        return cls(config, network)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> "DiffusionModel":
        from medidiff.core.devices import resolve_device

        self.network.to(resolve_device(device))
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    @property
    def null_class(self) -> int:
        """The class index meaning "no label" (for classifier-free guidance)."""
        return self.config.num_classes

    def set_normaliser(self, normaliser: Normaliser) -> None:
        self.normaliser = normaliser
        self.config.normaliser = normaliser.to_dict()

    # -- conditioning ---------------------------------------------------------------------
    def condition_channels(self, masks: torch.Tensor | None, batch: int, spatial: tuple[int, ...], device: torch.device,
                           lowres: torch.Tensor | None = None) -> torch.Tensor | None:
        """Extra input channels: mask conditioning ``[given, one-hot labels 1..K]`` (zeros = no mask), then,
        for a super-resolution model, its low-resolution image upsampled to ``spatial`` (:meth:`lowres_channel`)."""
        parts = []
        k = self.config.mask_classes
        if not k and masks is not None:
            raise ConditioningError("this model was not trained with mask conditioning; do not pass masks")
        if k:
            out = torch.zeros((batch, 1 + k, *spatial), device=device)
            if masks is not None:
                masks = masks.to(device)
                if masks.ndim == len(spatial) + 2:
                    masks = masks[:, 0]
                # a per-sample mask of all -1 means "dropped" (classifier-free guidance / no condition)
                given = ~(masks.flatten(1) < 0).all(dim=1)
                out[:, 0] = given.view(-1, *([1] * len(spatial))).float()
                for label in range(1, k + 1):
                    out[:, label] = (masks == label).float()
            parts.append(out)
        if self.config.lowres_factor:
            parts.append(self.lowres_channel(lowres, batch, spatial, device))
        elif lowres is not None:
            raise ConditioningError("this model is not a super-resolution model; do not pass a low-resolution image")
        return torch.cat(parts, dim=1) if parts else None

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, *spatial) area-averaged over ``lowres_factor``-sided blocks: what a super-resolution model is conditioned on."""
        f = self.config.lowres_factor
        pool = torch.nn.functional.avg_pool2d if x.ndim == 4 else torch.nn.functional.avg_pool3d
        return pool(x, kernel_size=f, stride=f)

    def lowres_channel(self, lowres: torch.Tensor | None, batch: int, spatial: tuple[int, ...],
                       device: torch.device) -> torch.Tensor:
        """The low-resolution image (N, 1, *spatial / factor), network units, upsampled (bi/trilinear) to ``spatial``.

        Training makes it from the clean image itself (:meth:`downsample`), so the model learns
        ``p(x | downsample(x))``; at sampling time it is the image to upsample.
        """
        f = self.config.lowres_factor
        if lowres is None:
            raise ConditioningError(f"this is a super-resolution model (x{f}): it needs the low-resolution image to upsample")
        lowres = lowres.to(device).float()
        if lowres.ndim == len(spatial) + 1:
            lowres = lowres[:, None]
        want = tuple(s // f for s in spatial)
        if any(s % f for s in spatial) or lowres.shape[0] != batch or tuple(lowres.shape[2:]) != want:
            raise ConditioningError(f"a x{f} super-resolution model upsamples {batch} image(s) of "
                                    f"{' x '.join(map(str, want))} to {' x '.join(map(str, spatial))}; got "
                                    f"{' x '.join(map(str, lowres.shape[2:]))} for {lowres.shape[0]}")
        mode = "bilinear" if len(spatial) == 2 else "trilinear"
        return torch.nn.functional.interpolate(lowres, size=tuple(spatial), mode=mode, align_corners=False)

    def check_class_labels(self, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Validate labels (MONAI would silently ignore them on an unconditioned network)."""
        n = self.config.num_classes
        if class_labels is None:
            return None
        if not n:
            raise ConditioningError("this model was not trained with class labels; do not pass class_labels")
        labels = torch.as_tensor(class_labels).long().flatten()
        if labels.numel() == 1 and batch > 1:
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise ConditioningError(f"got {labels.numel()} class labels for a batch of {batch}")
        if (labels < 0).any() or (labels > n).any():
            raise ConditioningError(f"class labels must be in 0..{n - 1} (or {n} for 'no label'), got {labels.tolist()}")
        return labels

    # -- training loss ----------------------------------------------------------------------
    def draw_training_noise(self, x_shape: tuple[int, ...], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The randomness of one training batch (noise, times, condition dropout), on the CPU.

        Drawn for the whole global batch so that splitting it across processes (DDP) or
        resuming a run gives exactly the same numbers.
        """
        b = x_shape[0]
        return {
            "eps": torch.randn(x_shape, generator=generator),
            "t": self.schedule.sample_training_timesteps(b, generator=generator),
            "drop": torch.rand((b,), generator=generator),
        }

    def training_loss(
        self,
        x0: torch.Tensor,
        noise: dict[str, torch.Tensor],
        class_labels: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        condition_dropout: float = 0.1,
    ) -> torch.Tensor:
        """MSE between the network output and the schedule's target on a batch of clean images.

        ``noise`` comes from :meth:`draw_training_noise` (sliced to this batch). Conditions
        are dropped with probability ``condition_dropout`` so classifier-free guidance works.
        """
        b = x0.shape[0]
        device = x0.device
        eps, t = noise["eps"].to(device), noise["t"].to(device)
        drop = noise["drop"] < condition_dropout
        x_t = self.schedule.add_noise(x0, eps, t)
        target = self.schedule.training_target(x0, eps, t)
        labels = None
        if self.config.num_classes:
            if class_labels is None:
                raise ConditioningError("this model is class-conditioned: training needs a class label per image")
            labels = class_labels.detach().cpu().long().clone()
            labels[drop] = self.null_class
            labels = labels.to(device)
        m = None
        if self.config.mask_classes:
            if masks is None:
                raise ConditioningError("this model is mask-conditioned: training needs a mask per image")
            m = masks.detach().cpu().clone().float()
            m[drop] = -1.0
        # a super-resolution model is always conditioned on its own input, downsampled (never dropped)
        lowres = self.downsample(x0) if self.config.lowres_factor else None
        cond = self.condition_channels(m, b, tuple(x0.shape[2:]), device, lowres)
        net_in = x_t if cond is None else torch.cat([x_t, cond], dim=1)
        out = self.network(net_in, timesteps=t, class_labels=labels)
        return torch.nn.functional.mse_loss(out.float(), target.float())

    # -- save / load --------------------------------------------------------------------------
    def save(self, folder: str | Path, overwrite: bool = False, model_card: str | None = None,
             state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the model folder atomically; ``state_dict`` overrides the weights (e.g. EMA)."""
        folder = write_folder(folder, FORMAT, FORMAT_VERSION, self.config.to_dict(), state_dict or self.network.state_dict(),
                              overwrite=overwrite, extra={"MODEL_CARD.md": model_card or default_model_card(self)})
        self.path = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "DiffusionModel":
        """Load a model folder (no unpickling; hash checked); ``ModelError`` on any problem."""
        raw, cpath, wpath = open_folder(folder, FORMAT, FORMAT_VERSION, "model")
        check_config(raw, cpath)
        config = ModelConfig.from_record(raw, cpath)
        weights = read_weights(wpath)
        # the schedule and normaliser entries are checked when they are built
        model = built_from_record(lambda: cls(config), cpath, "model")
        fit_weights(model.network, weights, wpath)
        model.path = Path(folder)
        return model.to(device)


def write_folder(folder: str | Path, fmt: str, version: int, record: dict[str, Any], state_dict: dict[str, torch.Tensor],
                 overwrite: bool = False, extra: dict[str, str] | None = None) -> Path:
    """Write a model-like folder atomically: weights.safetensors, config.json (``record`` + format + sha256), ``extra`` text files.

    The one writer of the folders :func:`medidiff.core.config_check.open_folder` reads.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        wpath = tmp / "weights.safetensors"
        save_file(weights, str(wpath), metadata={"format": fmt})
        config = {"format": fmt, "format_version": version, **record, "weights_sha256": _sha256(wpath)}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
    return folder


def read_weights(wpath: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``weights.safetensors`` file (never unpickled); one-line ``ModelError`` if unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{wpath}: cannot read weights ({first})") from None


def fit_weights(network: torch.nn.Module, weights: dict[str, torch.Tensor], wpath: Path) -> None:
    """Load ``weights`` into ``network`` exactly (strict) and switch it to eval mode; one-line ``ModelError`` if they do not fit."""
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{wpath}: weights do not fit the network in config.json ({first})") from None
    network.eval()


def default_model_card(model: DiffusionModel) -> str:
    """A minimal MODEL_CARD.md from the config (training fills in more)."""
    c = model.config
    tr = c.training
    lines = [
        f"# medidiff model ({c.spatial_dims}D, preset {c.preset})",
        "",
        f"- image size: {c.image_size}, spacing: {c.spacing or 'n/a'}, modality: {c.modality}",
        f"- schedule: {c.schedule['kind']} ({c.schedule['prediction']}), parameters: {model.num_parameters():,}",
        f"- normaliser: {c.normaliser['kind']} [{c.normaliser['low']:.4g}, {c.normaliser['high']:.4g}] {c.normaliser.get('detail', '')}",
        f"- conditioning: classes={c.num_classes or 'none'} {c.class_names or ''}, mask classes={c.mask_classes or 'none'}"
        + (f", super-resolution x{c.lowres_factor} (conditioned on the image downsampled x{c.lowres_factor})" if c.lowres_factor else ""),
        f"- medidiff version: {c.medidiff_version}",
    ]
    if tr:
        lines += ["", "## Training", ""] + [f"- {k}: {v}" for k, v in tr.items()]
    return "\n".join(lines) + "\n"
