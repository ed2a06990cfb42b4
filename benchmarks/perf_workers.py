"""The process machinery of ``benchmarks/performance.py``: one long-lived worker process per row.

Worker side (``python benchmarks/perf_workers.py SPEC``): build the row's runner
(:mod:`perf_runners`), report the RSS floor (after ``import torch, monai``, model load and data
preparation), then answer each ``run`` line on stdin with one JSON line: seconds, CPU seconds,
peak RSS above the floor (sampled every millisecond by a thread) and the load average.

Parent side: :class:`Worker` starts a row's process with a clean thread environment,
:func:`interleaved` runs one warm-up per worker and then rounds A, B, ..., A, B, ...,
:class:`LoadMonitor` samples the 1-minute load average every 2 s, :func:`busy_loops` makes load.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# removed from every worker's environment before its own setting is applied
THREAD_VARS = ("OMP_NUM_THREADS", "MEDIDIFF_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")


# ---------------------------------------------------------------- worker side (one process per row)
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRSS:
    """Peak RSS while the block runs, sampled every millisecond by a thread."""

    def __enter__(self) -> "_PeakRSS":
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mb())


def worker(spec: dict) -> None:
    """Serve ``run`` lines on stdin with one JSON line each on stdout (protocol of :class:`Worker`)."""
    if os.environ.get("BENCH_PREPARE_ENV"):
        from medidiff.core.threads import prepare_environment

        prepare_environment()
    import monai  # noqa: F401  (part of the import floor)
    import torch

    from perf_runners import denoise_runner, generate_runner, psnr, train_runner

    if spec["part"] == "generate":
        run, clean = generate_runner(spec["kind"], spec["n"], spec["batch"], spec["steps"]), None
    elif spec["kind"] == "train":
        run, clean = train_runner(), None
    else:
        run, clean = denoise_runner(spec["kind"], spec["size"], spec["sw_batch"])
    floor = _rss_mb()
    print(json.dumps({"ready": True, "floor_mb": floor, "torch_threads_at_start": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        with _PeakRSS() as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            out, extra = run()
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        row = {"seconds": seconds, "cpu_s": cpu, "mem_mb": mem.peak - floor, "load": os.getloadavg()[0], **extra}
        if clean is not None:
            row["psnr"] = psnr(clean, out)
        print(json.dumps(row), flush=True)


# ---------------------------------------------------------------- parent side
class Worker:
    """A row's process: started once, then asked for one timed call at a time."""

    def __init__(self, name: str, spec: dict, env_changes: dict | None = None, base_threads: int = 1) -> None:
        env = dict(os.environ)
        for var in THREAD_VARS:
            env.pop(var, None)
        env["OMP_NUM_THREADS"] = str(base_threads)
        if env_changes is not None and spec.get("part") == "threads":
            env.pop("OMP_NUM_THREADS", None)
            env.update(env_changes)
        self.name, self.results = name, []
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.log.seek(0)
        raise RuntimeError(f"worker {self.name!r} died:\n{self.log.read()[-3000:]}")

    def call(self, keep: bool = True) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        row = self._read()
        if keep:
            self.results.append(row)
        return row

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def interleaved(workers: list[Worker], repeats: int) -> None:
    """One warm-up call per worker, then ``repeats`` rounds A, B, ..., A, B, ..."""
    for w in workers:
        w.call(keep=False)
    for _ in range(repeats):
        for w in workers:
            w.call()
            r = w.results[-1]
            print(f"  {w.name}: {r['seconds']:.3f} s (cpu {r['cpu_s']:.3f} s, load {r['load']:.1f})",
                  file=sys.stderr, flush=True)


def summary(w: Worker, key: str = "seconds") -> tuple[float, float, float]:
    v = [r[key] for r in w.results]
    return statistics.median(v), min(v), max(v)


class LoadMonitor:
    """Samples the 1-minute load average every 2 s in the background."""

    def __init__(self) -> None:
        self.samples: list[tuple[str, float]] = []
        self.phase = "start"
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()

    def _poll(self) -> None:
        while True:
            self.samples.append((self.phase, os.getloadavg()[0]))
            if self._stop.wait(2.0):
                return

    def stats(self, phase: str | None = None) -> str:
        v = [x for p, x in self.samples if phase is None or p == phase]
        return f"{min(v):.2f} / {statistics.median(v):.2f} / {max(v):.2f}" if v else "n/a"

    def stop(self) -> None:
        self._stop.set()


def busy_loops(n: int, seconds: float) -> list[subprocess.Popen]:
    """``n`` pure-Python busy loops that end by themselves after ``seconds`` (and are killed at the end)."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
