"""``Autoencoder``: a MONAI ``AutoencoderKL`` that maps scans to a smaller latent field and back.

Latent diffusion (Rombach et al. 2022) trains the diffusion model on ``z = E(x)`` instead of the
pixels ``x``: with two downsamplings a 2D slice of ``H x W`` becomes a one-channel latent of
``H/4 x W/4`` (16x fewer values; 3D: ``D/4 x H/4 x W/4``, 64x fewer), so every network call of
the diffusion model is that much cheaper, and the decoder ``D`` turns a sampled latent back into
an image. The encoder is variational (KL-regularised): it returns a mean ``z_mu`` and a spread
``z_sigma``; a small KL weight in training keeps the latent space smooth. medidiff encodes with
``z_mu`` (deterministic), so the same scan always gives the same latent.

Inputs are in network units (the pixel normaliser of the training data maps scan units to about
[-1, 1]; it is stored with the autoencoder). ``encode``/``decode`` take an optional window
(``roi``): inputs larger than it are processed in gaussian-blended sliding windows (MONAI
``sliding_window_inference``, whose output scale follows the network's), so memory stays bounded
for volumes that do not fit; generation decodes in windows of the prior's latent field.

An autoencoder is a folder, written and checked exactly like a ``DiffusionModel``::

    config.json          network arguments, training field, pixel normaliser, geometry,
                         medidiff version, sha256 of the weights file
    weights.safetensors  weights -- never a pickle

Loading never unpickles, checks the hash and every network value, and raises ``ModelError``
with one line naming the file for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medidiff.core.config_check import MAX_CHANNELS, FolderConfig, ModelConfigError, built_from_record, open_folder
from medidiff.core.intensity import Normaliser
from medidiff.core.model import fit_weights, read_weights, write_folder
from medidiff.errors import ModelError
from medidiff.version import __version__
from medidiff.io.hashing import sha256_path as sha256_file  # noqa: F401  (latent_model and tasks.latent use it)

FORMAT = "medidiff-autoencoder"
FORMAT_VERSION = 1

# len(channels) - 1 downsamplings: three levels = 4x per axis. Parameter counts (2D, one latent
# channel): tiny ~29 k (tests), small ~0.45 M (CPU), base ~1.8 M (GPU).
AE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(channels=(8, 16, 16), num_res_blocks=1, norm_num_groups=4),
    "small": dict(channels=(32, 64, 64), num_res_blocks=1, norm_num_groups=16),
    "base": dict(channels=(64, 128, 128), num_res_blocks=2, norm_num_groups=32),
}


@dataclass
class AutoencoderConfig(FolderConfig):
    """Everything needed to rebuild an autoencoder, stored as config.json (shared parts: ``FolderConfig``)."""

    WHAT = "autoencoder"
    PRESETS = AE_PRESETS
    NETWORK_TUPLES = ("channels",)

    spatial_dims: int
    image_size: tuple[int, ...]  # training field in pixels (array order)
    preset: str = "tiny"
    network: dict[str, Any] = field(default_factory=dict)
    latent_channels: int = 1
    normaliser: dict[str, Any] = field(default_factory=lambda: Normaliser(-1.0, 1.0, kind="identity").to_dict())
    spacing: tuple[float, ...] = ()
    orientation: str = ""
    modality: str = "OT"
    slice_axis: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    medidiff_version: str = __version__

    def __post_init__(self) -> None:
        self.settle()

    def check_network(self) -> None:
        """The ``AutoencoderKL`` arguments and the latent channel count."""
        _check_network(self.network, self.where)
        lc = self.latent_channels
        if not isinstance(lc, int) or isinstance(lc, bool) or not 1 <= lc <= 64:
            raise ModelConfigError(f"{self.where}: latent_channels must be an integer in 1..64, got {lc!r}")

    @property
    def factor(self) -> int:
        """Downsampling per axis (pixels per latent voxel along each axis)."""
        return self.size_multiple

    @property
    def latent_size(self) -> tuple[int, ...]:
        """The training field in latent voxels."""
        return tuple(s // self.factor for s in self.image_size)


def _check_network(net: Any, where: str | Path) -> None:
    if not isinstance(net, dict):
        raise ModelConfigError(f"{where}: network must be a JSON object, got {type(net).__name__}")
    channels = net.get("channels")
    if not isinstance(channels, (list, tuple)) or not 2 <= len(channels) <= 5 or \
            not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= MAX_CHANNELS for c in channels):
        raise ModelConfigError(f"{where}: network.channels must list 2..5 channel counts in 1..{MAX_CHANNELS}, got {channels!r}")
    blocks, groups = net.get("num_res_blocks"), net.get("norm_num_groups")
    if not isinstance(blocks, int) or isinstance(blocks, bool) or not 1 <= blocks <= 8:
        raise ModelConfigError(f"{where}: network.num_res_blocks must be an integer in 1..8, got {blocks!r}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or any(c % groups for c in channels):
        raise ModelConfigError(f"{where}: network.norm_num_groups must be a positive divisor of every channel count, got {groups!r}")


def build_autoencoder(config: AutoencoderConfig) -> torch.nn.Module:
    """The MONAI ``AutoencoderKL`` described by ``config`` (no attention: cheap on a CPU)."""
    from monai.networks.nets import AutoencoderKL

    net = config.network
    levels = len(net["channels"])
    return AutoencoderKL(
        spatial_dims=config.spatial_dims, in_channels=1, out_channels=1, num_res_blocks=net["num_res_blocks"],
        channels=tuple(net["channels"]), attention_levels=(False,) * levels, latent_channels=config.latent_channels,
        norm_num_groups=net["norm_num_groups"], with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
        include_fc=False,
    )


class Autoencoder:
    """An ``AutoencoderKL`` plus its pixel normaliser and geometry; save/load as a folder."""

    def __init__(self, config: AutoencoderConfig, network: torch.nn.Module | None = None) -> None:
        self.config = config
        self.network = network if network is not None else build_autoencoder(config)
        self.normaliser = Normaliser.from_dict(config.normaliser)
        self.path: Path | None = None

    @classmethod
    def create(cls, spatial_dims: int, image_size: tuple[int, ...] | int, preset: str = "tiny", latent_channels: int = 1,
               normaliser: Normaliser | None = None, spacing: tuple[float, ...] = (), orientation: str = "",
               modality: str = "OT", slice_axis: int | None = None, seed: int = 0) -> "Autoencoder":
        """A new, untrained autoencoder; ``seed`` fixes the initial weights."""
        if isinstance(image_size, int):
            image_size = (image_size,) * spatial_dims
        config = AutoencoderConfig(
            spatial_dims=spatial_dims, image_size=tuple(image_size), preset=preset, latent_channels=latent_channels,
            normaliser=(normaliser or Normaliser(-1.0, 1.0, kind="identity")).to_dict(), spacing=tuple(spacing),
            orientation=orientation, modality=modality, slice_axis=slice_axis,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = build_autoencoder(config)
        return cls(config, network)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def factor(self) -> int:
        return self.config.factor

    def to(self, device: str | torch.device) -> "Autoencoder":
        from medidiff.core.devices import resolve_device

        self.network.to(resolve_device(device))
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    # -- encode / decode ---------------------------------------------------------------------
    def _check_size(self, spatial: tuple[int, ...], unit: int, what: str) -> None:
        if len(spatial) != self.config.spatial_dims or any(s % unit for s in spatial):
            raise ModelError(f"{what} of size {spatial}: this {self.config.spatial_dims}D autoencoder needs "
                             f"{self.config.spatial_dims} sizes divisible by {unit}")

    def _windowed(self, x: torch.Tensor, roi: tuple[int, ...] | None, fn, sw_batch_size: int) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        if roi is None or all(s <= r for s, r in zip(x.shape[2:], roi)):
            return fn(x)
        # larger than the window: gaussian-blended windows of ``roi`` (the output's scale follows)
        return torch.cat([sliding_window_inference(x[b : b + 1], roi_size=tuple(roi), sw_batch_size=sw_batch_size,
                                                   predictor=fn, overlap=0.25, mode="gaussian", padding_mode="replicate")
                          for b in range(x.shape[0])])

    @torch.no_grad()
    def encode(self, x: torch.Tensor, roi: tuple[int, ...] | None = None, sw_batch_size: int = 4) -> torch.Tensor:
        """Latent means ``z_mu`` of images ``x`` (N, 1, *size), network units, sizes divisible by the factor.

        ``roi`` (pixels): encode in gaussian-blended windows of this size when ``x`` is larger
        (bounded memory for big volumes); ``None``: the whole image at once.
        """
        self._check_size(tuple(x.shape[2:]), self.factor, "an image")
        return self._windowed(x.float().to(self.device), roi, lambda w: self.network.encode(w)[0], sw_batch_size)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, roi: tuple[int, ...] | None = None, sw_batch_size: int = 4) -> torch.Tensor:
        """Images (network units) from latents ``z`` (N, C, *latent size).

        ``roi`` (latent voxels): decode in gaussian-blended windows of this size when ``z`` is
        larger, e.g. the latent field the prior was trained on; ``None``: all at once.
        """
        self._check_size(tuple(z.shape[2:]), 1, "a latent")
        return self._windowed(z.float().to(self.device), roi, self.network.decode, sw_batch_size)

    # -- save / load ---------------------------------------------------------------------------
    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the autoencoder folder atomically (config.json + weights.safetensors with its sha256)."""
        self.path = write_folder(folder, FORMAT, FORMAT_VERSION, self.config.to_dict(), self.network.state_dict(),
                                 overwrite=overwrite)
        return self.path

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "Autoencoder":
        """Load an autoencoder folder (no unpickling; hash checked); ``ModelError`` on any problem."""
        raw, cpath, wpath = open_folder(folder, FORMAT, FORMAT_VERSION, "autoencoder",
                                        hint="; train one with `medidiff latent train-autoencoder`")
        config = AutoencoderConfig.from_record(raw, cpath)
        model = built_from_record(lambda: cls(config), cpath, "autoencoder")
        fit_weights(model.network, read_weights(wpath), wpath)
        model.path = Path(folder)
        return model.to(device)
