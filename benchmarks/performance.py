"""Speed and peak memory of denoising with the built-in mr2d model, against MONAI's own loop.

    OMP_NUM_THREADS=2 python benchmarks/performance.py [--device auto] [--repeats 2]

Cases: a 256x256 slice, a 512x512 slice and a 128x256x256 volume (slice-wise), made by
resizing the held-out MR sample (speed does not depend on content). Methods:

* ``medidiff tweedie``: ``denoise(..., method="tweedie")`` (one network call per slice, slices
  batched, sliding window over the 32x32 training size);
* ``medidiff ddim-5``: ``denoise(..., method="ddim", steps=5)``;
* ``MONAI DiffusionInferer``: what a user would write with MONAI alone: the same network and a
  ``DDIMScheduler`` with 50 inference steps, ``DiffusionInferer.sample`` from the matched noise
  level (timesteps above it dropped), on the whole image at once, one slice at a time.

Each case runs in a fresh subprocess so peak RSS (CPU) or peak CUDA memory is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CASES = {"256x256": (1, 256, 256), "512x512": (1, 512, 512), "128x256x256": (128, 256, 256)}
METHODS = ("medidiff tweedie", "medidiff ddim-5", "MONAI DiffusionInferer (DDIM 50)")


def _scan(shape):
    import numpy as np
    from skimage.transform import resize

    from medidiff.builtin.sample_scans import mr_sample
    from medidiff.io import Scan

    src = mr_sample()
    z, y, x = shape
    vol = resize(src.array, (max(z, 1), y, x), order=1, preserve_range=True).astype(np.float32)
    noisy = vol + np.random.default_rng(0).normal(0, 0.05 * (vol.max() - vol.min()), vol.shape).astype(np.float32)
    spacing = (src.spacing[0], src.spacing[1] * src.shape[1] / y, src.spacing[2] * src.shape[2] / x)
    return Scan(noisy if z > 1 else noisy[0], spacing if z > 1 else spacing[1:], src.affine, "MR")


def run_case(case: str, method: str, device: str) -> dict:
    import resource

    import numpy as np
    import torch

    from medidiff.core.devices import resolve_device
    from medidiff.model_store.registry import resolve_model
    from medidiff.tasks.denoise import denoise

    dev = resolve_device(device)
    model = resolve_model("mr2d", device=str(dev))
    scan = _scan(CASES[case])
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if method.startswith("medidiff"):
        opts = {"method": "tweedie"} if "tweedie" in method else {"method": "ddim", "steps": 5}
        denoise(model, scan, noise="gaussian", device=str(dev), batch_size=16, **opts)
    else:
        from monai.inferers import DiffusionInferer
        from monai.networks.schedulers import DDIMScheduler

        from medidiff.core.noise import estimate_sigma

        sched = DDIMScheduler(num_train_timesteps=1000, schedule="linear_beta", clip_sample=False)
        sched.set_timesteps(50)
        sigma = float(np.median(np.atleast_1d(estimate_sigma(scan.array, per_slice=scan.ndim == 3))))
        t = model.schedule.timestep_for_noise(model.normaliser.scale_sigma(sigma))
        sched.timesteps = sched.timesteps[sched.timesteps <= t]
        a, _ = model.schedule.alpha_sigma(float(sched.timesteps[0]))
        inferer = DiffusionInferer(sched)
        slices = scan.array[None] if scan.ndim == 2 else scan.array
        with torch.inference_mode():
            for s in slices:
                x = torch.from_numpy(a * model.normaliser.forward(s))[None, None].to(dev)
                inferer.sample(input_noise=x, diffusion_model=model.network, scheduler=sched, verbose=False)
    seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        kind = "GPU"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kind = "RSS"
    return {"case": case, "method": method, "seconds": seconds, "peak_mb": peak, "memory": kind, "device": str(dev)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one[0], args.one[1], args.device)))
        return
    rows = []
    for case in CASES:
        for method in METHODS:
            out = subprocess.run([sys.executable, __file__, "--device", args.device, "--one", case, method],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    print(f"| case | method | seconds | peak memory (MB, {rows[0]['memory']}) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['method']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |")
    print(f"\ndevice: {rows[0]['device']}")


if __name__ == "__main__":
    main()
