"""Engine benchmark: sampler quality vs number of steps, and sampler speed vs MONAI's inferer.

    python benchmarks/engine.py --train-steps 800 --threads 1
    python benchmarks/engine.py --model mr2d --threads 1      # a built-in or saved model instead

Prints one markdown table per part (paste them with the command into benchmarks/README.md):

(a) Quality vs steps. A tiny 2D DDPM (epsilon) is trained here on 32x32 crops of real MR
    slices (nibabel ``example4d.nii.gz``, both volumes, slices z < 16), or loaded with
    ``--model`` (a built-in name such as ``mr2d`` or a folder, found by ``medidiff.model_store``).
    From the same per-sample noise, DDIM and DPM-Solver++(2M) at ``--steps`` (5/10/20/50) steps
    are compared with 1000-step DDIM, the reference solution of the probability-flow ODE that
    both deterministic samplers approximate: mean absolute difference and PSNR in network units
    (range [-1, 1], so data range 2) over the first ``--n-ref`` samples. 1000-step DDPM
    (ancestral) is listed too: it is stochastic, so its distance to the ODE solution measures a
    different path, not an error. Samples use ``clip_x0=1`` (``generate_batch``'s default); the
    distance without clipping (to unclipped DDIM-1000) is listed too, since clipping makes the
    ODE's vector field non-smooth and hides the solver order. KID (``medidiff.core.metrics.kid`` on
    ``medidiff.core.metrics.image_features``) of ``--n-kid`` samples against ``--n-kid`` real 32x32
    crops of held-out slices (z >= 18, never trained on), with real training crops vs those
    held-out crops as the floor. 1000-step runs are too slow on a CPU for KID at 64 samples.
(b) Speed. DDIM with the same network, the same steps and the same batch: medidiff's
    ``generate_batch`` vs MONAI's ``DiffusionInferer.sample`` with a ``DDIMScheduler`` of the
    same betas. Network calls are counted; one timed run each after a 2-step warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medidiff.core.data import prepare_training_data
from medidiff.io import Scan
from medidiff.core.metrics import image_features, kid, psnr
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import run_to_end
from medidiff.core.sampling import generate_batch, sample_seed

STEPS = (5, 10, 20, 50)  # the default of --steps


def mr_scans(z: slice) -> list[Scan]:
    """Slices ``z`` of both volumes of nibabel's real EPI example as (z, y, x) scans."""
    import nibabel

    path = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data" / "example4d.nii.gz"
    img = nibabel.load(path)
    data = np.asarray(img.dataobj).astype(np.float32)
    zooms = tuple(float(s) for s in reversed(img.header.get_zooms()[:3]))
    return [Scan(np.ascontiguousarray(data[..., v].T[z]), zooms, img.affine, "MR", {"source_path": f"{path}#vol{v}"})
            for v in range(data.shape[-1])]


def get_model(args: argparse.Namespace) -> tuple[DiffusionModel, str]:
    if args.model:
        from medidiff.model_store.registry import find_model, resolve_model

        return resolve_model(args.model, device="cpu"), f"loaded from {find_model(args.model)}"
    from medidiff.tasks.train import train

    t0 = time.perf_counter()
    result = train(mr_scans(slice(0, 16)), None, dims=2, preset=args.preset, image_size=32, steps=args.train_steps,
                   batch_size=16, lr=2e-3, seed=0, device="cpu")
    seconds = time.perf_counter() - t0
    loss = float(np.mean(result.losses[-50:]))
    return result.model, f"trained here: {args.preset}, {args.train_steps} steps x 16, final loss {loss:.4f}, {seconds:.0f} s"


def generate(model: DiffusionModel, seeds: list[int], sampler: str, steps: int, clip: float | None = 1.0) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    x = run_to_end(generate_batch(model, seeds, sampler=sampler, steps=steps, clip_x0=clip))
    return x[:, 0].numpy(), time.perf_counter() - t0


def real_crops(model: DiffusionModel, z: slice, n: int, seed: int) -> np.ndarray:
    """``n`` random 32x32 crops of real slices, as the training batches draw them (no augmentation)."""
    td = prepare_training_data(mr_scans(z), image_size=model.config.image_size, normaliser=model.normaliser, augment=False)
    return td.batch(seed, 0, n)["images"][:, 0]


def kid_vs(real_feats: np.ndarray, images: np.ndarray) -> str:
    # subsets of half the samples, so the spread says how much the score depends on which ones
    m = max(2, min(len(images), len(real_feats)) // 2)
    mean, std = kid(image_features(images, value_range=(-1.0, 1.0)), real_feats, subsets=50, subset_size=m)
    return f"{mean * 1e3:.2f} ± {std * 1e3:.2f}"


def quality(model: DiffusionModel, args: argparse.Namespace) -> list[str]:
    seeds = [sample_seed(args.seed, i) for i in range(args.n_kid)]
    ref_seeds = seeds[: args.n_ref]
    real = real_crops(model, slice(18, 24), args.n_kid, seed=1)
    real_feats = image_features(real, value_range=(-1.0, 1.0))
    floor = kid_vs(real_feats, real_crops(model, slice(0, 16), args.n_kid, seed=2))
    ref, ref_s = generate(model, ref_seeds, "ddim", args.ref_steps)
    ref_free, _ = generate(model, ref_seeds, "ddim", args.ref_steps, clip=None)
    n = args.ref_steps
    rows = [
        f"| sampler | steps | mean abs diff to DDIM-{n} | PSNR to DDIM-{n} (dB) | without x0 clipping: mean abs diff to DDIM-{n} "
        f"| KID x1e3 ({args.n_kid} vs held-out real) | s / sample |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| ddim (reference) | {n} | 0 | inf | 0 | n/a | {ref_s / len(ref_seeds):.2f} |",
    ]
    anc, anc_s = generate(model, ref_seeds, "ddpm", n)
    rows.append(f"| ddpm ancestral (stochastic) | {n} | {np.abs(anc - ref).mean():.4f} | "
                f"{np.mean([psnr(r, a, data_range=2.0) for r, a in zip(ref, anc)]):.1f} | n/a | n/a | {anc_s / len(ref_seeds):.2f} |")
    errors: dict[tuple[str, int], np.ndarray] = {}  # per-sample mean abs diff to the reference (clipped)
    for sampler in ("ddim", "dpm++2m"):
        for steps in args.steps:
            x, sec = generate(model, seeds, sampler, steps)
            head = x[: args.n_ref]
            errors[sampler, steps] = np.abs(head - ref).reshape(len(ref), -1).mean(axis=1)
            free, _ = generate(model, ref_seeds, sampler, steps, clip=None)
            rows.append(f"| {sampler} | {steps} | {np.abs(head - ref).mean():.4f} | "
                        f"{np.mean([psnr(r, a, data_range=2.0) for r, a in zip(ref, head)]):.1f} | "
                        f"{np.abs(free - ref_free).mean():.4f} | {kid_vs(real_feats, x)} | {sec / len(seeds):.3f} |")
    rows.append(f"| real training crops (floor) | - | - | - | - | {floor} | - |")
    rows.append("")
    rows.append(f"Without clipping, the {n}-step DDIM samples reach mean |x| = {np.abs(ref_free).mean():.2f} "
                f"(clipped: {np.abs(ref).mean():.2f}; data lie in [-1, 1]).")
    rows += ["", f"| steps | samples where dpm++2m is closer to DDIM-{n} than ddim (of {len(ref)}) "
             "| mean paired difference ddim - dpm++2m ± standard error |", "|---:|---:|---:|"]
    for steps in args.steps:
        d = errors["ddim", steps] - errors["dpm++2m", steps]  # same noise per sample: a paired comparison
        rows.append(f"| {steps} | {int((d > 0).sum())} | {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f} |")
    return rows


class CountCalls:
    """Counts calls of a module's forward (the network evaluations)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.n = 0
        self.module = module
        self.forward = module.forward
        module.forward = self  # instance attribute: nn.Module.__call__ finds it first

    def __call__(self, *args, **kwargs):
        self.n += 1
        return self.forward(*args, **kwargs)

    def restore(self) -> None:
        del self.module.forward


def speed(model: DiffusionModel, args: argparse.Namespace) -> list[str]:
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    sc = model.schedule.config
    seeds = [sample_seed(args.seed, i) for i in range(args.speed_batch)]
    noise = torch.stack([torch.randn((1, *model.config.image_size), generator=torch.Generator().manual_seed(s)) for s in seeds])
    net = model.network.eval()

    def monai_run(steps: int) -> torch.Tensor:
        sched = DDIMScheduler(num_train_timesteps=sc.num_train_timesteps, schedule=sc.beta_schedule, beta_start=sc.beta_start,
                              beta_end=sc.beta_end, prediction_type=sc.prediction, clip_sample=True)
        sched.set_timesteps(steps)
        with torch.inference_mode():
            return DiffusionInferer(sched).sample(input_noise=noise, diffusion_model=net, scheduler=sched, verbose=False)

    def ours(steps: int) -> torch.Tensor:
        return run_to_end(generate_batch(model, seeds, sampler="ddim", steps=steps))

    rows = [
        f"| implementation (DDIM, {args.speed_steps} steps, batch {args.speed_batch}) | network calls | s / network call | s / sample | s total |",
        "|---|---:|---:|---:|---:|",
    ]
    outputs = {}
    for name, fn in (("medidiff generate_batch", ours), ("MONAI DiffusionInferer.sample + DDIMScheduler", monai_run)):
        fn(2)  # warm-up
        counter = CountCalls(net)
        t0 = time.perf_counter()
        outputs[name] = fn(args.speed_steps)
        sec = time.perf_counter() - t0
        counter.restore()
        rows.append(f"| {name} | {counter.n} | {sec / counter.n:.4f} | {sec / args.speed_batch:.3f} | {sec:.2f} |")
    a, b = outputs.values()
    rows.append("")
    rows.append(f"Same noise, mean |medidiff - MONAI| = {float((a - b).abs().mean()):.4f} in network units: MONAI clips x0 but "
                "keeps the network's eps and steps to t - T/steps while its next call is at the rounded linspace time; "
                "medidiff recomputes eps from the clipped x0 and steps to the next time it evaluates.")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a built-in model name (e.g. mr2d) or a 2D DDPM model folder (default: train a tiny one here)")
    p.add_argument("--steps", type=lambda v: tuple(int(s) for s in v.split(",")), default=STEPS,
                   help="comma-separated step counts for the DDIM / DPM++2M rows (default 5,10,20,50)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--train-steps", type=int, default=800)
    p.add_argument("--ref-steps", type=int, default=1000)
    p.add_argument("--n-ref", type=int, default=16, help="samples compared with the 1000-step reference")
    p.add_argument("--n-kid", type=int, default=64, help="samples (and real crops) for KID")
    p.add_argument("--speed-steps", type=int, default=50)
    p.add_argument("--speed-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, origin = get_model(args)
    model.to("cpu")
    print(f"model: {origin}; {model.num_parameters():,} parameters; CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}\n")
    print("\n".join(quality(model, args)), "\n", flush=True)
    print("\n".join(speed(model, args)))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; command: python benchmarks/engine.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
