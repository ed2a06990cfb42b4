"""How many CPU threads torch may use: a default that never blows up on a shared machine.

Measured on 2 shared cores (issue 18; ``benchmarks/README.md``): when other processes keep the
cores busy, torch's default of one intra-op thread per core made a 512x512 denoise 8.6x slower
at load ~2 and 14.8x slower at load ~3, because OpenMP worker threads spin-wait for cores they
do not get. One thread never blows up; two threads win only ~1.2x on an idle machine. So the
default is *the cores that are free when the work starts*, ``max(1, round(cores - load))``
(load = the 1-minute load average, which counts running and runnable processes), and OpenMP
workers sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) when more than one thread is
used. A user's explicit choice always wins: ``--threads N`` on the command line, the
``MEDIDIFF_THREADS`` environment variable, or ``OMP_NUM_THREADS``.

This module does not import torch at import time: the CLI calls :func:`prepare_environment`
before torch loads, because OpenMP reads its environment only once.
"""

from __future__ import annotations

import math
import os

ENV_VAR = "MEDIDIFF_THREADS"


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset / cgroup CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _explicit() -> int | None:
    for name in (ENV_VAR, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                continue
            if n >= 1:
                return n
    return None


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """The thread count medidiff uses when nobody chose one: the cores free right now (>= 1)."""
    explicit = _explicit()
    if explicit is not None:
        return explicit
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def passive_waits_before_torch() -> bool:
    """Ask OpenMP to let idle worker threads sleep, if torch has not been loaded yet.

    Called when ``medidiff`` is imported, so Python and napari users get the same protection as
    the command line: with two threads and spinning waits a denoise took 13-39 s instead of 0.4 s
    once other jobs loaded the machine; with passive waits it cost the same CPU time as one thread
    (``benchmarks/README.md``). OpenMP reads this only when torch loads: after that it is too late
    and nothing is changed. A value the user set is kept. Returns whether the policy is passive.
    """
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" and "torch" not in sys.modules


def prepare_environment(threads: int | None = None) -> int:
    """Set the environment before torch is imported (CLI start-up); returns the thread count."""
    n = int(threads) if threads is not None else default_threads()
    os.environ[ENV_VAR] = str(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    if n > 1:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return n


def apply_thread_policy(threads: int | None = None) -> int:
    """Give torch the thread count (explicit ``threads``, else :func:`default_threads`).

    Called by every task that computes on the CPU (through ``resolve_device``). A count already
    chosen by someone else is kept when ``threads`` is None: an environment variable above, or a
    ``torch.set_num_threads`` call that left torch with anything but its start-up default of one
    thread per core. Returns the count in force.
    """
    import torch

    current = torch.get_num_threads()
    explicit = _explicit()
    if threads is None and explicit is None and current != available_cores():
        return current  # the caller chose with torch.set_num_threads
    n = int(threads) if threads is not None else (explicit or default_threads())
    if n < 1:
        from medidiff.errors import MedidiffError

        raise MedidiffError(f"threads must be at least 1, not {threads}")
    if n != current:
        torch.set_num_threads(n)
    return n
