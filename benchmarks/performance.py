"""Speed and memory of the built-in mr2d model against the strongest hand-written MONAI baseline.

    python benchmarks/performance.py [--repeats 5] [--threads 1] [--load-seconds 240]

Everything runs on the CPU. Three parts, each printed as a markdown table:

1. **Denoising at equal quality** (256x256 and 512x512). Images: the six held-out MR slices
   (``mr_heldout.nii.gz``, 96x128 at 2 mm) tiled into a mosaic at their native spacing (no
   resampling, so the 32x32-trained network sees what it was trained on), plus Gaussian noise of
   5 % of the range (seed 0). Rows:

   * ``medidiff tweedie``: ``medidiff.tasks.denoise(model, scan, method="tweedie", noise="gaussian")``;
   * ``MONAI sliding window + Tweedie``: what a MONAI user writes by hand -- the same network, the
     same per-scan normalisation and sigma estimate as medidiff, the *matched* timestep (the
     DDPM scheduler's ``t`` where ``sqrt((1 - abar) / abar)`` equals the noise std in network
     units), ``sliding_window_inference`` (32x32 windows, overlap 0.25, mode gaussian, same
     ``sw_batch_size`` as medidiff) and one Tweedie step ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``;
   * ``MONAI whole image (flash attention) + Tweedie``: the same step on the whole image in one
     call (DiffusionInferer-style), through a second ``DiffusionModelUNet`` built with
     ``use_flash_attention=True`` and the same weights (mr2d's middle block has self-attention);
   * ``MONAI whole image (full attention)``: the same with the plain network, 256x256 only (at
     512x512 its attention matrix needs ~8.7 GB).

   Every row has its PSNR against the clean mosaic, so speed is compared at equal quality.
2. **Thread policies**: medidiff's denoise, and 5 training steps of mr2d's network, at 1 thread, 2 threads, 2 threads with
   ``OMP_WAIT_POLICY=PASSIVE``, 2 threads with a bounded spin (``GOMP_SPINCOUNT=10000``, no
   wait policy), and the default policy (``medidiff.core.threads``) both as the
   Python API applies it and as the CLI applies it (``prepare_environment`` before torch loads),
   each in a fresh process, on the machine as it is ("ambient") and under 2 busy-loop processes
   started (and killed) by this script; ratio to the best setting per condition.
3. **CPU generation**: ``medidiff.tasks.generate`` (its defaults: batched on the CPU, sampler
   ``ddim``; and with ``sampler="dpm++2m"``) against MONAI ``DDIMScheduler`` +
   ``DiffusionInferer.sample``, same steps (one network call each) and batch size; plus
   medidiff's opt-in ``bit_identical=True`` mode (one sample per network call) for reference.

Method: each row is a long-lived worker process (its own memory); the parent sends one warm-up
call to every worker, then ``--repeats`` rounds of interleaved calls (A, B, A, B, ...), and
reports the median and the min-max spread. Memory is the peak RSS during a call (sampled every
millisecond by a thread) minus the RSS after ``import torch, monai``, model load and data
preparation -- never the total RSS. The 1-minute load average is sampled every 2 s throughout.

Files: this one (command line), ``perf_tables.py`` (the three parts and their tables),
``perf_workers.py`` (worker processes, memory sampler, load monitor, busy loops) and
``perf_runners.py`` (the images and the call each row times).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from perf_tables import THREAD_SETTINGS, part_denoise, part_generate, part_threads
from perf_workers import LoadMonitor

PARTS = {"denoise": part_denoise, "threads": part_threads, "generate": part_generate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per row after one warm-up (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for parts 1 and 3, both sides (default 1)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--sw-batch", type=int, default=8, help="windows per network call, both sides (medidiff's CPU default 8)")
    ap.add_argument("--thread-size", type=int, default=256, help="image size for the thread-policy part")
    ap.add_argument("--thread-repeats", type=int, default=3, help="at most this many rounds in the thread part")
    ap.add_argument("--load-seconds", type=float, default=240, help="life time of each busy loop (bound)")
    ap.add_argument("--load-settle", type=float, default=20, help="seconds between starting the loops and the workers")
    ap.add_argument("--thread-settings", nargs="+", default=list(THREAD_SETTINGS), choices=list(THREAD_SETTINGS),
                    metavar="SETTING", help="subset of: " + ", ".join(THREAD_SETTINGS))
    ap.add_argument("--thread-tasks", nargs="+", default=["denoise", "train"], choices=["denoise", "train"],
                    help="what the thread part times: a denoise of the mosaic, 5 training steps of mr2d's network")
    ap.add_argument("--gen-n", type=int, default=32)
    ap.add_argument("--gen-batch", type=int, default=32)
    ap.add_argument("--gen-steps", type=int, default=20)
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    import monai
    import torch

    mon = LoadMonitor()
    t0 = time.time()
    out = []
    for part in args.parts:
        out += [f"\n### {part}\n"] + PARTS[part](args, mon)
    mon.stop()
    out.append(f"\nmachine: {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
               f"affinity {len(os.sched_getaffinity(0))}; torch {torch.__version__}, monai {monai.__version__}, "
               f"python {platform.python_version()}; repeats {args.repeats} after 1 warm-up; wall {time.time() - t0:.0f} s")
    out.append("1-minute load average (min / median / max): all " + mon.stats() + "; "
               + "; ".join(f"{p} {mon.stats(p)}" for p in dict.fromkeys(p for p, _ in mon.samples) if p != "start"))
    print("\n".join(out))


if __name__ == "__main__":
    main()
