"""Process layout under ``torchrun``: rank, world size, this process's device, and the process group.

One home for what ``train`` and ``generate`` both need, so API users get the same rules as the
command line: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` come from the environment ``torchrun`` sets;
with several processes on CUDA each one takes the GPU of its local rank; a process group that a
task opened is closed again when the task ends, however it ends.
"""

from __future__ import annotations

import os

import torch

from medidiff.core.devices import resolve_device


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) from ``RANK``/``WORLD_SIZE`` (``(0, 1)`` outside torchrun)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def process_device(device: str | torch.device, rank: int, world: int) -> torch.device:
    """The device of this process: ``device`` resolved; with several CUDA processes, the local rank's GPU."""
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        local = int(os.environ.get("LOCAL_RANK", rank)) % max(1, torch.cuda.device_count())
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    return dev


def init_process_group(device: str | torch.device) -> tuple[int, int, bool]:
    """Join the torchrun process group if there is more than one process.

    Returns ``(rank, world, opened)``; ``opened`` says this call created the group, so the
    caller should close it with :func:`close_process_group` when it is done.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    opened = False
    if not dist.is_initialized():
        dev = resolve_device(device)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        opened = True
    return dist.get_rank(), dist.get_world_size(), opened


def close_process_group() -> None:
    """Close the process group if one is open (safe to call twice)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
