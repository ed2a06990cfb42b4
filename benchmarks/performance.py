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
2. **Thread policies**: medidiff's denoise at 1 thread, 2 threads, 2 threads with
   ``OMP_WAIT_POLICY=PASSIVE``, and the default policy (``medidiff.core.threads``) both as the
   Python API applies it and as the CLI applies it (``prepare_environment`` before torch loads),
   each in a fresh process, on the machine as it is ("ambient") and under 2 busy-loop processes
   started (and killed) by this script; ratio to the best setting per condition.
3. **CPU generation**: ``medidiff.tasks.generate`` (its defaults: batched on the CPU, sampler
   ``dpm++2m``; and with ``sampler="ddim"``) against MONAI ``DDIMScheduler`` +
   ``DiffusionInferer.sample``, same steps (one network call each) and batch size; plus
   medidiff's opt-in ``bit_identical=True`` mode (one sample per network call) for reference.

Method: each row is a long-lived worker process (its own memory); the parent sends one warm-up
call to every worker, then ``--repeats`` rounds of interleaved calls (A, B, A, B, ...), and
reports the median and the min-max spread. Memory is the peak RSS during a call (sampled every
millisecond by a thread) minus the RSS after ``import torch, monai``, model load and data
preparation -- never the total RSS. The 1-minute load average is sampled every 2 s throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

NOISE_FRACTION = 0.05
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
    "default (Python API)": {},
    "default (CLI path)": {"BENCH_PREPARE_ENV": "1"},
}
THREAD_VARS = ("OMP_NUM_THREADS", "MEDIDIFF_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")


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


def mosaic(size: int):
    """(clean, noisy) ``size x size`` float32 images tiled from the held-out MR slices; seed 0."""
    import numpy as np

    from medidiff.builtin.sample_scans import mr_sample

    src = mr_sample().array.astype(np.float32)  # (6, 96, 128)
    ty, tx = src.shape[1:]
    rows = []
    for i in range(-(-size // ty)):
        rows.append(np.concatenate([src[(i * 3 + j) % len(src)] for j in range(-(-size // tx))], axis=1))
    clean = np.concatenate(rows, axis=0)[:size, :size].copy()
    sigma = NOISE_FRACTION * float(clean.max() - clean.min())
    noisy = clean + np.random.default_rng(0).normal(0, sigma, clean.shape).astype(np.float32)
    return clean, noisy


def psnr(clean, out) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(out, np.float64) - clean) ** 2))
    return float(10 * np.log10(float(clean.max() - clean.min()) ** 2 / mse))


def _denoise_runner(kind: str, size: int, sw_batch: int):
    import numpy as np
    import torch

    from medidiff.builtin.sample_scans import mr_sample
    from medidiff.core.noise import estimate_sigma
    from medidiff.io import Scan
    from medidiff.model_store.registry import resolve_model
    from medidiff.tasks.denoise import denoise

    model = resolve_model("mr2d", device="cpu")
    clean, noisy = mosaic(size)
    src = mr_sample()
    scan = Scan(noisy, src.spacing[1:], src.affine, "MR")
    if kind == "medidiff":
        def run():
            res = denoise(model, scan, method="tweedie", noise="gaussian", device="cpu")
            return res.scan.array, {"t": res.timestep_median, "threads": torch.get_num_threads(),
                                    "wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
        return run, clean

    from monai.inferers import sliding_window_inference
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler

    net = model.network.eval()
    if kind == "monai-flash":
        c = model.config.network
        net = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(c["channels"]),
                                 attention_levels=tuple(c["attention_levels"]), num_res_blocks=c["num_res_blocks"],
                                 norm_num_groups=c["norm_num_groups"], num_head_channels=c["num_head_channels"],
                                 use_flash_attention=True)
        net.load_state_dict(model.network.state_dict())
        net.eval()
    abar = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta").alphas_cumprod.double()
    ratio = torch.sqrt((1 - abar) / abar).numpy()

    def run():
        norm = model.normaliser.for_scan(noisy)  # medidiff's per-scan percentile rule, same for every row
        s_net = norm.scale_sigma(estimate_sigma(noisy))
        t = int(np.argmin(np.abs(ratio - s_net)))  # matched timestep
        a = float(abar[t])
        x_t = torch.from_numpy(np.sqrt(a) * norm.forward(noisy))[None, None].float()
        tt = torch.tensor([t])
        with torch.inference_mode():
            if kind == "monai-sw":
                eps = sliding_window_inference(x_t, roi_size=(32, 32), sw_batch_size=sw_batch, overlap=0.25,
                                               mode="gaussian",
                                               predictor=lambda w: net(w, timesteps=tt.expand(w.shape[0])))
            else:
                eps = net(x_t, timesteps=tt)
        x0 = (x_t - np.sqrt(1 - a) * eps) / np.sqrt(a)
        return norm.inverse(x0[0, 0].numpy()), {"t": t, "threads": torch.get_num_threads()}
    return run, clean


def _generate_runner(kind: str, n: int, batch: int, steps: int):
    import torch

    from medidiff.model_store.registry import resolve_model
    from medidiff.tasks.generate import generate

    model = resolve_model("mr2d", device="cpu")
    if kind.startswith("medidiff"):
        def run():
            res = generate(model, n, steps=steps, batch_size=batch, device="cpu", seed=0,
                           sampler="ddim" if kind == "medidiff-ddim" else None, bit_identical=kind == "medidiff-bit")
            return None, {"images": len(res.scans), "threads": torch.get_num_threads()}
        return run

    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, schedule="linear_beta", clip_sample=False)
    sched.set_timesteps(steps)
    inferer = DiffusionInferer(sched)
    net = model.network.eval()

    def run():
        g = torch.Generator().manual_seed(0)
        outs = []
        with torch.inference_mode():
            for k in range(0, n, batch):
                noise = torch.randn(min(batch, n - k), 1, 32, 32, generator=g)
                outs.append(inferer.sample(input_noise=noise, diffusion_model=net, scheduler=sched, verbose=False))
        imgs = model.normaliser.inverse(torch.cat(outs)[:, 0].numpy())
        return None, {"images": len(imgs), "threads": torch.get_num_threads()}
    return run


def worker(spec: dict) -> None:
    """Serve ``run`` lines on stdin with one JSON line each on stdout (protocol of :class:`Worker`)."""
    if os.environ.get("BENCH_PREPARE_ENV"):
        from medidiff.core.threads import prepare_environment

        prepare_environment()
    import monai  # noqa: F401  (part of the import floor)
    import torch

    if spec["part"] == "generate":
        run, clean = _generate_runner(spec["kind"], spec["n"], spec["batch"], spec["steps"]), None
    else:
        run, clean = _denoise_runner(spec["kind"], spec["size"], spec["sw_batch"])
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
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
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
    lines = ["| condition | setting | threads used | seconds, median [min-max] | vs best | CPU s per call (median) "
             "| load avg during |", "|---|---|---|---|---|---|---|"]
    reps = max(1, min(args.repeats, args.thread_repeats))
    loops: list[subprocess.Popen] = []
    try:
        for cond in ("ambient", "2 busy loops"):
            mon.phase = f"threads {cond}"
            if cond != "ambient":
                loops = busy_loops(2, args.load_seconds)
                time.sleep(args.load_settle)  # let the 1-minute load average see the loops
            spec = {"part": "threads", "kind": "medidiff", "size": args.thread_size, "sw_batch": args.sw_batch}
            workers = [Worker(name, spec, env) for name, env in THREAD_SETTINGS.items() if name in args.thread_settings]
            try:
                print(f"threads, {cond}", file=sys.stderr)
                interleaved(workers, reps)
            finally:
                for w in workers:
                    w.close()
            best = min(summary(w)[0] for w in workers)
            for w in workers:
                med, lo, hi = summary(w)
                used = f"{w.results[-1]['threads']}" + (" PASSIVE" if w.results[-1].get("wait_policy") else "")
                loads = [r["load"] for r in w.results]
                cpu = statistics.median(r["cpu_s"] for r in w.results)
                lines.append(f"| {cond} | {w.name} | {used} | {med:.3f} [{lo:.3f}-{hi:.3f}] | {med / best:.2f}x | "
                             f"{cpu:.3f} | {min(loads):.1f}-{max(loads):.1f} |")
            for p in loops:
                p.kill()
    finally:
        for p in loops:
            p.kill()
            p.wait()
    return lines


def part_generate(args, mon: LoadMonitor) -> list[str]:
    mon.phase = "generate"
    spec = {"part": "generate", "n": args.gen_n, "batch": args.gen_batch, "steps": args.gen_steps}
    workers = [Worker("medidiff generate (defaults: batched, dpm++2m)", {**spec, "kind": "medidiff"},
                      base_threads=args.threads),
               Worker("medidiff generate sampler=ddim (batched)", {**spec, "kind": "medidiff-ddim"},
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
    ap.add_argument("--gen-n", type=int, default=32)
    ap.add_argument("--gen-batch", type=int, default=32)
    ap.add_argument("--gen-steps", type=int, default=20)
    ap.add_argument("--parts", nargs="+", default=["denoise", "threads", "generate"],
                    choices=["denoise", "threads", "generate"])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    import monai
    import torch

    mon = LoadMonitor()
    t0 = time.time()
    out = []
    for part in args.parts:
        out += [f"\n### {part}\n"] + globals()[f"part_{part}"](args, mon)
    mon.stop()
    out.append(f"\nmachine: {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
               f"affinity {len(os.sched_getaffinity(0))}; torch {torch.__version__}, monai {monai.__version__}, "
               f"python {platform.python_version()}; repeats {args.repeats} after 1 warm-up; wall {time.time() - t0:.0f} s")
    out.append("1-minute load average (min / median / max): all " + mon.stats() + "; "
               + "; ".join(f"{p} {mon.stats(p)}" for p in dict.fromkeys(p for p, _ in mon.samples) if p != "start"))
    print("\n".join(out))


if __name__ == "__main__":
    main()
