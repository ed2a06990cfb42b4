"""The three parts of ``benchmarks/performance.py``, each run through workers and printed as a markdown table."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from perf_runners import mosaic, psnr
from perf_workers import LoadMonitor, Worker, busy_loops, interleaved, summary

DENOISE_ROWS = {
    "medidiff": "medidiff tweedie",
    "monai-sw": "MONAI sliding window + Tweedie",
    "monai-flash": "MONAI whole image (flash attention) + Tweedie",
    "monai-full": "MONAI whole image (full attention) + Tweedie",
}
THREAD_SETTINGS = {  # name -> environment changes (None = remove the variable)
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "2 threads PASSIVE": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    # libgomp spins ~10 k iterations (a few microseconds) before sleeping, instead of its default
    # 300 k (ACTIVE-like) or PASSIVE's 0; no OMP_WAIT_POLICY
    "2 threads bounded spin": {"OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": "10000"},
    "default (Python API)": {},
    "default (CLI path)": {"BENCH_PREPARE_ENV": "1"},
}


def part_denoise(args, mon: LoadMonitor) -> list[str]:
    lines = ["| image | method | matched t | PSNR (dB) | seconds, median [min-max] | vs medidiff | CPU s (median) "
             "| memory above floor (MB) |", "|---|---|---|---|---|---|---|---|"]
    for size in args.sizes:
        mon.phase = f"denoise {size}"
        kinds = ["medidiff", "monai-sw", "monai-flash"] + (["monai-full"] if size <= 256 else [])
        workers = [Worker(DENOISE_ROWS[k], {"part": "denoise", "kind": k, "size": size, "sw_batch": args.sw_batch},
                          base_threads=args.threads) for k in kinds]
        try:
            print(f"denoise {size}x{size}", file=sys.stderr)
            interleaved(workers, args.repeats)
        finally:
            for w in workers:
                w.close()
        base = summary(workers[0])[0]
        clean, noisy = mosaic(size)
        lines.append(f"| {size}x{size} | noisy input | - | {psnr(clean, noisy):.2f} | - | - | - | - |")
        for w in workers:
            med, lo, hi = summary(w)
            mem = max(r["mem_mb"] for r in w.results)
            t = w.results[-1]["t"]
            lines.append(f"| {size}x{size} | {w.name} | {t:.1f} | {w.results[-1]['psnr']:.2f} | "
                         f"{med:.3f} [{lo:.3f}-{hi:.3f}] | {med / base:.2f}x | {summary(w, 'cpu_s')[0]:.3f} | {mem:.0f} |")
    return lines


def part_threads(args, mon: LoadMonitor) -> list[str]:
    lines = ["| task | condition | setting | threads used | seconds, median [min-max] | vs best | CPU s per call (median) "
             "| load avg during |", "|---|---|---|---|---|---|---|---|"]
    reps = max(1, min(args.repeats, args.thread_repeats))
    tasks = {"denoise": "medidiff", "train": "train"}
    loops: list[subprocess.Popen] = []
    try:
        for cond in ("ambient", "2 busy loops"):
            mon.phase = f"threads {cond}"
            if cond != "ambient":
                loops = busy_loops(2, args.load_seconds)
                time.sleep(args.load_settle)  # let the 1-minute load average see the loops
            for task in args.thread_tasks:
                lines += _thread_rows(args, task, tasks[task], cond, reps)
            for p in loops:
                p.kill()
    finally:
        for p in loops:
            p.kill()
            p.wait()
    return lines


def _thread_rows(args, task: str, kind: str, cond: str, reps: int) -> list[str]:
    """One task's rows of the thread table: every setting in its own worker, interleaved."""
    lines = []
    spec = {"part": "threads", "kind": kind, "size": args.thread_size, "sw_batch": args.sw_batch}
    workers = [Worker(name, spec, env) for name, env in THREAD_SETTINGS.items() if name in args.thread_settings]
    try:
        print(f"threads, {task}, {cond}", file=sys.stderr)
        interleaved(workers, reps)
    finally:
        for w in workers:
            w.close()
    best = min(summary(w)[0] for w in workers)
    for w in workers:
        med, lo, hi = summary(w)
        last = w.results[-1]
        used = f"{last['threads']}" + (f" {last['wait_policy']}" if last.get("wait_policy") else "") \
            + (f" spin {last['spincount']}" if last.get("spincount") else "")
        loads = [r["load"] for r in w.results]
        cpu = statistics.median(r["cpu_s"] for r in w.results)
        lines.append(f"| {task} | {cond} | {w.name} | {used} | {med:.3f} [{lo:.3f}-{hi:.3f}] | {med / best:.2f}x | "
                     f"{cpu:.3f} | {min(loads):.1f}-{max(loads):.1f} |")
    return lines


def part_generate(args, mon: LoadMonitor) -> list[str]:
    mon.phase = "generate"
    spec = {"part": "generate", "n": args.gen_n, "batch": args.gen_batch, "steps": args.gen_steps}
    workers = [Worker("medidiff generate (defaults: batched, ddim)", {**spec, "kind": "medidiff"},
                      base_threads=args.threads),
               Worker("medidiff generate sampler=dpm++2m (batched)", {**spec, "kind": "medidiff-dpm"},
                      base_threads=args.threads),
               Worker("MONAI DDIM + DiffusionInferer.sample", {**spec, "kind": "monai"}, base_threads=args.threads),
               Worker("medidiff generate bit_identical=True (opt-in)", {**spec, "kind": "medidiff-bit"},
                      base_threads=args.threads)]
    try:
        print("generate", file=sys.stderr)
        interleaved(workers, args.repeats)
    finally:
        for w in workers:
            w.close()
    base = summary(workers[2])[0]
    lines = [f"| method ({args.gen_n} images 32x32, {args.gen_steps} steps = network calls, batch {args.gen_batch}) | "
             "seconds, median [min-max] | ms per image | vs MONAI | CPU s (median) | memory above floor (MB) |",
             "|---|---|---|---|---|---|"]
    for w in workers:
        med, lo, hi = summary(w)
        lines.append(f"| {w.name} | {med:.3f} [{lo:.3f}-{hi:.3f}] | {1000 * med / args.gen_n:.1f} | "
                     f"{med / base:.2f}x | {summary(w, 'cpu_s')[0]:.3f} | {max(r['mem_mb'] for r in w.results):.0f} |")
    return lines
