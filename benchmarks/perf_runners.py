"""What ``benchmarks/performance.py`` measures: the test images and one callable per table row.

Each ``*_runner`` builds everything a row needs (model, data, baseline networks) once and returns
a ``run()`` that does one timed call and returns ``(output or None, extra fields for the row)``.
They import torch lazily, so a worker process can set its thread environment first.
"""

from __future__ import annotations

import os

NOISE_FRACTION = 0.05  # Gaussian noise std as a fraction of the clean mosaic's range


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


def denoise_runner(kind: str, size: int, sw_batch: int):
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
                                    "wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                                    "spincount": os.environ.get("GOMP_SPINCOUNT", "")}
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


def generate_runner(kind: str, n: int, batch: int, steps: int):
    import torch

    from medidiff.model_store.registry import resolve_model
    from medidiff.tasks.generate import generate

    model = resolve_model("mr2d", device="cpu")
    if kind.startswith("medidiff"):
        def run():
            res = generate(model, n, steps=steps, batch_size=batch, device="cpu", seed=0,
                           sampler="dpm++2m" if kind == "medidiff-dpm" else None, bit_identical=kind == "medidiff-bit")
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


def train_runner(steps: int = 5, batch: int = 16, crop: int = 32):
    """``steps`` optimiser steps of ``mr2d``'s network on crops of the MR sample: the train loop's compute.

    The thread policy is applied as every task applies it (``resolve_device``); the network is a
    copy, trained with AdamW on the epsilon loss at random timesteps (seeded, the same every call).
    """
    import copy

    import torch

    from medidiff.builtin.sample_scans import mr_sample
    from medidiff.core.devices import resolve_device
    from medidiff.model_store.registry import resolve_model

    resolve_device("cpu")
    model = resolve_model("mr2d", device="cpu")
    net = copy.deepcopy(model.network).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    vol = model.normaliser.for_scan(mr_sample().array).forward(mr_sample().array).astype("float32")
    sched = model.schedule

    def run():
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            z = torch.randint(0, vol.shape[0], (batch,), generator=g)
            y = torch.randint(0, vol.shape[1] - crop + 1, (batch,), generator=g)
            x = torch.randint(0, vol.shape[2] - crop + 1, (batch,), generator=g)
            x0 = torch.stack([torch.from_numpy(vol[a, b:b + crop, c:c + crop]) for a, b, c in zip(z, y, x)])[:, None]
            t = sched.sample_training_timesteps(batch, generator=g)
            eps = torch.randn(x0.shape, generator=g)
            loss = (net(sched.add_noise(x0, eps, t), t) - sched.training_target(x0, eps, t)).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return None, {"threads": torch.get_num_threads(), "wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                      "spincount": os.environ.get("GOMP_SPINCOUNT", "")}

    return run
