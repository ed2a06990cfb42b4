"""How many CPU threads torch may use: a default that never blows up on a shared machine.

Measured on 2 shared cores (issue 18; ``benchmarks/README.md``, "Thread policies"):

* When other processes keep the cores busy, torch's default of one intra-op thread per core made
  a 512x512 denoise 8.6-60x slower, because OpenMP worker threads spin-wait for cores they do not
  get. Under load one thread is the fastest setting.
* On an idle machine two threads are 1.25x (denoise) to 1.53x (training) faster than one, so
  "always one thread" misses the 1.3x target there.
* How idle workers wait matters as much as their number. ``OMP_WAIT_POLICY=PASSIVE`` (sleep at
  once) costs a futex wake-up per parallel region: on the small convolutions of our networks two
  passive threads were 1.7-2.0x *slower* than two spinning ones when idle, and slower than one
  thread. GNU OpenMP's bounded spin (``GOMP_SPINCOUNT=10000``: spin about ten microseconds, then
  sleep) was as fast as unbounded spinning when idle, without its blow-up.

So the default is *the cores that are free when the work starts*: the cores minus the other tasks
that are runnable right now (``/proc/loadavg``'s running count without this process, the median of
a few reads; the 1-minute load average where that file does not exist), at least one, with
bounded-spin waits. The 1-minute average is not used on Linux because it lags by a minute and
counts the user's previous command: it made the default pick one thread on an idle machine.
A user's explicit choice always wins: ``--threads N`` on the command line, the
``MEDIDIFF_THREADS`` environment variable, or ``OMP_NUM_THREADS``; and their own
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``.

This module does not import torch at import time: the CLI calls :func:`prepare_environment`
before torch loads, because OpenMP reads its environment only once.
"""

from __future__ import annotations

import math
import os
import statistics
import time

ENV_VAR = "MEDIDIFF_THREADS"
# set by prepare_environment when the policy (not the user) chose the count: long runs may adapt it
POLICY_MARK = "MEDIDIFF_THREADS_BY_POLICY"
# GNU OpenMP spins this many iterations (about 10 us) before an idle worker sleeps
SPIN_COUNT = "10000"
_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


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


def _own_running() -> int:
    """Threads of this process that are runnable now (the caller included), from ``/proc/self/task``."""
    try:
        n = 0
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                # the state is the first field after the ")" that closes the command name
                n += f.read().rsplit(")", 1)[1].split()[0] == "R"
        return max(1, n)
    except (OSError, IndexError):
        return 1


def others_running(reads: int = 5, interval: float = 0.003, path: str = "/proc/loadavg") -> int | None:
    """Tasks of other processes that are runnable right now (None where the kernel does not say).

    ``/proc/loadavg``'s fourth field is ``running/total``; the running count includes this
    process's own runnable threads (at least the reader), which are subtracted. The median of a
    few reads a few milliseconds apart ignores a task that happens to be runnable for one instant.
    """
    counts = []
    for i in range(max(1, reads)):
        try:
            with open(path, encoding="ascii") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - _own_running())
        except (OSError, IndexError, ValueError):
            return None
        if i + 1 < reads:
            time.sleep(interval)
    return max(0, int(statistics.median_low(counts)))


def current_load() -> float:
    """What is competing for the cores now: other runnable tasks, or the 1-minute load average."""
    running = others_running()
    if running is not None:
        return float(running)
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """The thread count medidiff uses when nobody chose one: the cores free right now (>= 1)."""
    explicit = _explicit()
    if explicit is not None:
        return explicit
    cores = available_cores() if cores is None else cores
    load = current_load() if load is None else load
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def bounded_waits_before_torch() -> bool:
    """Make idle OpenMP workers spin briefly, then sleep, if torch has not been loaded yet.

    Called when ``medidiff`` is imported, so Python and napari users get the same protection as
    the command line (see the module docstring for the measurements). OpenMP reads this only when
    torch loads: after that it is too late and nothing is changed. A wait policy the user set is
    kept. Returns whether the bounded spin is in force for the torch that will load.
    """
    import sys

    if "torch" in sys.modules:
        return False
    if not any(os.environ.get(name) for name in _WAIT_VARS):
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return os.environ.get("GOMP_SPINCOUNT") == SPIN_COUNT and not os.environ.get("OMP_WAIT_POLICY")


def prepare_environment(threads: int | None = None) -> int:
    """Set the environment before torch is imported (CLI start-up); returns the thread count."""
    by_policy = threads is None and _explicit() is None
    n = int(threads) if threads is not None else default_threads()
    os.environ[ENV_VAR] = str(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    if by_policy:
        os.environ[POLICY_MARK] = "1"
    else:
        os.environ.pop(POLICY_MARK, None)
    bounded_waits_before_torch()
    return n


class ThreadGovernor:
    """Follows the load during a long command: every ``every_s`` seconds, the free cores again.

    Only where the policy chose the count at start-up (:data:`POLICY_MARK`, set by
    :func:`prepare_environment`); a user's ``--threads``, ``MEDIDIFF_THREADS`` or
    ``OMP_NUM_THREADS`` is never changed. Two threads that were right on an idle machine were
    2-2.3x slower than one once six other jobs started (``benchmarks/README.md``); a training run
    lasts long enough for that to happen. Call it between steps: changing torch's count inside an
    operation is not possible, between operations it is cheap.
    """

    def __init__(self, every_s: float = 20.0, loadavg: str = "/proc/loadavg") -> None:
        self.every_s = float(every_s)
        self.loadavg = loadavg
        self.active = os.environ.get(POLICY_MARK) == "1"
        self._next = time.monotonic() + self.every_s

    def __call__(self) -> int | None:
        """Re-apply the free-core count if it is time; returns the new count, or None."""
        import sys

        if not self.active or "torch" not in sys.modules or time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.every_s
        others = others_running(path=self.loadavg)
        if others is None:
            return None
        import torch

        cores = available_cores()
        n = max(1, min(cores, cores - others))
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
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
