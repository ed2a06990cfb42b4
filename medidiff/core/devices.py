"""Pick the compute device: ``"auto"`` means CUDA, then MPS, then CPU.

Nothing in medidiff hard-codes ``cuda``; every public function that computes takes
``device=`` and passes it through :func:`resolve_device`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medidiff.errors import MedidiffError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``None``, a name like ``"cuda:1"`` or a device into a usable device.

    Applies the CPU thread policy (:mod:`medidiff.core.threads`) on the way, so every task that
    computes gets a thread count that does not blow up on a shared machine.
    """
    from medidiff.core.threads import apply_thread_policy

    apply_thread_policy()
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise MedidiffError(f"device {device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedidiffError(f"device {device!r} was requested but CUDA is not available here; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MedidiffError(f"device {device!r} was requested but MPS is not available here; use --device cpu or auto")
    return dev


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA only (where it is fast and safe); None elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


@dataclass(frozen=True)
class DeviceInfo:
    """A device that really works here, with a label for pickers."""

    name: str
    label: str


def available_devices() -> list[DeviceInfo]:
    """List devices that can run a tensor op now (CUDA with free memory, MPS, CPU)."""
    found = [DeviceInfo("auto", "auto")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            try:
                free, total = torch.cuda.mem_get_info(i)
                label = f"cuda:{i} {torch.cuda.get_device_name(i)} ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
            except RuntimeError:
                continue
            found.append(DeviceInfo(f"cuda:{i}", label))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append(DeviceInfo("mps", "mps (Apple GPU)"))
    found.append(DeviceInfo("cpu", "cpu"))
    return found


def release_memory(device: torch.device | str | None = None) -> None:
    """Give cached accelerator memory back to the driver after a run; nothing to do on the CPU.

    ``device`` is the device the run used (``None``: whichever accelerator this process has
    initialised). On CUDA this is ``torch.cuda.empty_cache()``, on MPS ``torch.mps.empty_cache()``.
    There is deliberately no ``gc.collect()``: a full collection takes most of a second on a big
    heap and holds the GIL, freezing a GUI (the napari viewer) that calls this after every run;
    tensors are freed by reference counting as soon as a run's results are dropped.
    """
    kind = None if device is None else torch.device(device).type
    if kind == "cpu":
        return
    # is_initialized(): a process that never used CUDA has no cache to empty (and must not create a context)
    if kind in (None, "cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if kind in (None, "mps"):
        mps = getattr(torch, "mps", None)
        if mps is not None and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            torch.mps.empty_cache()


def available_bytes(device: torch.device | str) -> int | None:
    """Memory free for tensors on ``device`` now: CUDA's free memory, else the host's available memory."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    from medidiff.io.limits import available_memory

    return available_memory()
