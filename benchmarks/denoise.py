"""Denoising benchmark: medidiff against non-local means, BM3D and CAREamics Noise2Void.

    OMP_NUM_THREADS=1 python benchmarks/denoise.py --steps 600 --threads 1 --fit-minutes 1 \\
        --n2v-python /work/venvs/careamics/bin/python --out /tmp/bench_denoise

One command, one markdown table (printed and written to OUT/denoise_table.md, with a second
table of the issue's targets). Everything is real data that ships with installed packages (see
data_cards/benchmark-denoise.md), split so that no test pixel was trained on and every choice is
made on a separate validation image:

* MR:  nibabel ``example4d.nii.gz`` volume 0; model trained on slices z < 16, validation slices
       z = 16, 17, test slices z >= 18 (six of 96 x 128).
* CT:  pydicom test files; model trained on crops of ``693_J2KI.dcm`` (512 x 512), validation on
       ``J2K_pixelrep_mismatch.dcm`` (2 x 2 block mean, central 128 x 128; a third patient), test
       on ``CT_small.dcm`` (128 x 128): three different patients and scanners. ``--ct-train both``
       also trains on the validation slice outside its central 256 x 256 block (four strips, the
       block never trained on), so the test patient stays unseen and validation stays disjoint.
* Microscopy: ``skimage.data.cell()`` (660 x 550); model trained on the left half (x < 275),
       validation on the top 128 rows of the right half, test on the rest of the right half
       (532 x 275).

Columns. Baselines get the noisy image and estimate sigma with ``skimage.restoration.estimate_sigma``
(a Gaussian assumption): NLM (fast, patch 5, distance 6, ``h = 0.8 sigma``) and BM3D (``bm3d``,
``sigma_psd``); on Rician rows also "BM3D+Rician": BM3D with medidiff's Rician sigma estimate
followed by the same Rician bias correction medidiff applies (``rician_bias_correct``, mean
inversion, the old Rician path, kept so its numbers stay comparable); "BM3D+VST", BM3D in a
variance-stabilised domain: on Poisson-Gaussian rows as its authors pair it with signal-dependent
noise (Makitalo & Foi 2013): medidiff's gain/read-noise estimate, the generalised Anscombe
transform (unit noise variance), BM3D at sigma 1, the exact unbiased inverse; on Rician rows in
medidiff's default Rician domain (``rician.domain(transform="vst-mmse")``: ``sigma F(m / sigma)``
at medidiff's Rician sigma estimate, BM3D at that sigma, the same posterior-mean inverse). The
targets table compares with the best BM3D variant of the row. medidiff trained on clean data (a tiny 2D DDPM per modality, ``--steps``, unless
``--mr-model`` etc. give model folders): ``tweedie``, ``tweedie x8`` (geometric self-ensemble),
``ddim`` and ``posterior``. No clean data at all, trained on the noisy test image itself with the
same wall-clock budget (``--fit-minutes``) on the ``--fit-datasets``: medidiff ``--fit`` (a tiny
network from scratch, ``fit_and_denoise(None, ...)``) and CAREamics Noise2Void
(``benchmarks/n2v_peer.py`` run by ``--n2v-python``, the Python of a venv with ``careamics``;
"not run" without it). "val pick" is the clean-trained medidiff method with the highest PSNR on
the validation image at the same noise and level: the number the targets table compares with BM3D.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from medidiff.core import noise as noise_lib
from medidiff.core.noise import rician as rician_lib
from medidiff.core.metrics import psnr, ssim
from medidiff.io import Scan, load_scan
from medidiff.io.scan import affine_from_spacing

LEVELS = (0.05, 0.10, 0.20)
MEDIDIFF = {"tweedie": {}, "tweedie x8": {"ensemble": 8}, "ddim": {"method": "ddim"},
            "posterior": {"method": "posterior"}}
COLUMNS = ("noisy", "NLM", "BM3D", "BM3D+Rician", "BM3D+VST", "N2V", *MEDIDIFF, "fit")
PEER = Path(__file__).with_name("n2v_peer.py")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- data: (training Scans, validation stack, test stack, (slice, row, column) spacing of the stacks, mm) -------
def mr_data() -> tuple[list[Scan], np.ndarray, np.ndarray, tuple[float, float, float]]:
    import nibabel as nib

    img = nib.load(Path(os.path.dirname(nib.__file__)) / "tests" / "data" / "example4d.nii.gz")
    vol = np.asarray(img.dataobj)[..., 0].astype(np.float32).T  # (z, y, x)
    spacing = tuple(float(z) for z in reversed(img.header.get_zooms()[:3]))
    return [Scan(vol[:16], spacing, img.affine, "MR")], vol[16:18], vol[18:24], spacing


def ct_data(second: bool = False) -> tuple[list[Scan], np.ndarray, np.ndarray, tuple[float, float, float]]:
    """CT train scans, validation, test. ``second``: also train on the validation patient's slice
    *around* the validation block (four strips; the block itself is never trained on)."""
    from pydicom.data import get_testdata_file

    train = [load_scan(get_testdata_file("693_J2KI.dcm"))]
    other_scan = load_scan(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    other = other_scan.array
    half = other.reshape(other.shape[0] // 2, 2, other.shape[1] // 2, 2).mean(axis=(1, 3))
    c0, c1 = half.shape[0] // 2 - 64, half.shape[1] // 2 - 64
    val = half[c0:c0 + 128, c1:c1 + 128].astype(np.float32)
    if second:  # the validation block is rows r0:r1, columns k0:k1 of the full-resolution slice
        r0, r1, k0, k1 = 2 * c0, 2 * (c0 + 128), 2 * c1, 2 * (c1 + 128)
        strips = (other[:r0], other[r1:], other[r0:r1, :k0], other[r0:r1, k1:])
        train += [Scan(np.ascontiguousarray(a), other_scan.spacing, other_scan.affine, "CT") for a in strips]
    test = load_scan(get_testdata_file("CT_small.dcm"))
    return train, val[None], test.array[None], (1.0, *map(float, test.spacing[-2:]))  # one slice: its own grid


def cell_data() -> tuple[list[Scan], np.ndarray, np.ndarray, tuple[float, float, float]]:
    import skimage.data

    cell = skimage.data.cell().astype(np.float32)
    half = cell.shape[1] // 2
    train = Scan(cell[:, :half], (1.0, 1.0), affine_from_spacing((1.0, 1.0)), "SM")
    return [train], cell[None, :128, half:], cell[None, 128:, half:], (1.0, 1.0, 1.0)


DATASETS = {"MR": (mr_data, ("gaussian", "rician")), "CT": (ct_data, ("gaussian",)),
            "microscopy": (cell_data, ("gaussian", "poisson-gaussian"))}
MODALITY = {"MR": "MR", "CT": "CT", "microscopy": "SM"}


def get_model(name: str, train: list[Scan], path: str | None, steps: int, out: Path, timestep_sampling: str = "uniform",
              contrast: float = 1.0, crop_foreground: float = 0.0, preset: str = "tiny",
              spacing_augment: float = 1.0):
    from medidiff.core.model import DiffusionModel
    from medidiff.tasks.train import train as train_model

    if path:
        return DiffusionModel.load(path), 0.0
    t0 = time.perf_counter()
    result = train_model(train, out / f"model_{name}", dims=2, preset=preset, image_size=32, steps=steps,
                         batch_size=16, lr=2e-3, seed=0, device="cpu", checkpoint_every=0, overwrite=True,
                         timestep_sampling=timestep_sampling, contrast=contrast,
                         crop_foreground=crop_foreground, spacing_augment=spacing_augment)
    return result.model, time.perf_counter() - t0


# -- baselines ---------------------------------------------------------------------------------------
def nlm(img: np.ndarray) -> np.ndarray:
    from skimage.restoration import denoise_nl_means, estimate_sigma

    s = float(estimate_sigma(img))
    return denoise_nl_means(img, h=0.8 * s, sigma=s, fast_mode=True, patch_size=5, patch_distance=6)


def bm3d_gaussian(img: np.ndarray) -> np.ndarray:
    import bm3d
    from skimage.restoration import estimate_sigma

    return bm3d.bm3d(img.astype(np.float64), sigma_psd=float(estimate_sigma(img)))


def bm3d_rician(img: np.ndarray) -> np.ndarray:
    """BM3D at medidiff's Rician sigma estimate, then medidiff's Rician bias correction (mean inversion)."""
    import bm3d

    sigma = noise_lib.estimate_sigma_rician(img)
    return noise_lib.rician_bias_correct(bm3d.bm3d(img.astype(np.float64), sigma_psd=sigma), sigma, method="mean")


def bm3d_vst(img: np.ndarray) -> np.ndarray:
    """BM3D in the generalised Anscombe domain at medidiff's (gain, read) estimate, exact unbiased inverse."""
    import bm3d
    from medidiff.core.noise.poisson_gaussian import anscombe, estimate_poisson_gaussian, inverse_anscombe

    gain, read = estimate_poisson_gaussian(img)
    if gain <= 0:  # no photon noise found: plain BM3D at the read noise
        return bm3d.bm3d(img.astype(np.float64), sigma_psd=max(read, 1e-12))
    z = np.asarray(anscombe(img.astype(np.float64), gain, read), dtype=np.float64)
    return inverse_anscombe(bm3d.bm3d(z, sigma_psd=1.0), gain, read)


def bm3d_rician_vst(img: np.ndarray) -> np.ndarray:
    """BM3D in medidiff's default Rician domain (VST, posterior-mean inverse) at medidiff's Rician sigma estimate."""
    import bm3d

    sigma = noise_lib.estimate_sigma_rician(img)
    dom = rician_lib.domain(np.array([sigma]), transform="vst-mmse")
    z = dom.to_gaussian(img[None].astype(np.float64))[0]
    return dom.from_gaussian(bm3d.bm3d(z.astype(np.float64), sigma_psd=sigma), 0)


def have_bm3d() -> bool:
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def n2v(python: str, noisy: np.ndarray, minutes: float, seed: int, threads: int, work: Path) -> tuple[np.ndarray, dict]:
    """Run CAREamics Noise2Void on ``noisy`` (S, Y, X) in its own venv; the prediction and its report."""
    work.mkdir(parents=True, exist_ok=True)
    src, dst = work / "noisy.npy", work / "n2v.npy"
    np.save(src, noisy.astype(np.float32))
    env = dict(os.environ, OMP_NUM_THREADS=str(max(threads, 1)))
    cmd = [python, str(PEER), "--input", str(src), "--output", str(dst), "--minutes", str(minutes),
           "--seed", str(seed), "--threads", str(max(threads, 1)), "--workdir", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60 * minutes + 600)
    if proc.returncode != 0:
        raise RuntimeError(f"n2v_peer failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return np.load(dst), json.loads(proc.stdout.strip().splitlines()[-1])


# -- one condition -----------------------------------------------------------------------------------
def score(clean: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    dr = float(clean.max() - clean.min())
    p = float(np.mean([psnr(c, o, data_range=dr) for c, o in zip(clean, out)]))
    s = float(np.mean([ssim(c, o, data_range=dr) for c, o in zip(clean, out)]))
    return p, s


def estimate_text(result, noise: str, level: float, span: float) -> str:
    if noise == "poisson-gaussian":
        gain, read = 0.8 * level * level * span, np.sqrt(0.2) * level * span
        return f"gain {result.gain:.3g}/{gain:.3g}, read {result.sigma_read:.3g}/{read:.3g}"
    return f"{float(np.median(result.sigma)):.3g}/{level * span:.3g}"


def as_scan(arr: np.ndarray, name: str, spacing: tuple[float, float, float]) -> Scan:
    """A stack of the dataset's slices with their true voxel size (a wrong one only triggers the spacing warning)."""
    return Scan(arr, tuple(spacing), affine_from_spacing(tuple(spacing)), MODALITY[name])


def run_medidiff(model, scan: Scan, clean: np.ndarray, noise: str, seed: int, args) -> tuple[dict, object]:
    from medidiff.tasks.denoise import denoise

    row, res = {}, None
    for label, kw in MEDIDIFF.items():
        t0 = time.perf_counter()
        res = denoise(model, scan, noise=noise, steps=args.ddim_steps, samples=args.samples, seed=seed,
                      device="cpu", **kw)
        row[label] = (*score(clean, res.scan.array), (time.perf_counter() - t0) / clean.shape[0])
    return row, res


def run_condition(model, name, val, clean, spacing, noise, level, seed, args, fit_here) -> tuple[str, str, dict]:
    """All columns for one (data, noise, level): the estimate text, the validation pick and the row."""
    from medidiff.tasks.fit import fit_and_denoise

    span = float(clean.max() - clean.min())
    noisy = noise_lib.add_noise(clean, noise, level, np.random.default_rng(seed)).astype(np.float32)
    noisy_val = noise_lib.add_noise(val, noise, level, np.random.default_rng(seed + 500)).astype(np.float32)
    val_row, _ = run_medidiff(model, as_scan(noisy_val, name, spacing), val, noise, seed, args)
    pick = max(val_row, key=lambda k: val_row[k][0])
    log(f"  {name} {noise} {level:g} validation PSNR: " + ", ".join(f"{k} {v[0]:.2f}" for k, v in val_row.items()))
    row, res = run_medidiff(model, as_scan(noisy, name, spacing), clean, noise, seed, args)
    row["noisy"] = (*score(clean, noisy), 0.0)
    n = clean.shape[0]
    baselines = {"NLM": nlm}
    if have_bm3d():
        baselines["BM3D"] = bm3d_gaussian
        if noise == "rician":
            baselines["BM3D+Rician"] = bm3d_rician
            baselines["BM3D+VST"] = bm3d_rician_vst
        if noise == "poisson-gaussian":
            baselines["BM3D+VST"] = bm3d_vst
    for label, fn in baselines.items():
        t0 = time.perf_counter()
        out = np.stack([fn(s) for s in noisy])
        row[label] = (*score(clean, out), (time.perf_counter() - t0) / n)
    if fit_here:
        t0 = time.perf_counter()
        fitted = fit_and_denoise(None, as_scan(noisy, name, spacing), noise=noise, minutes=args.fit_minutes,
                                 seed=0, device="cpu")
        row["fit"] = (*score(clean, fitted.scan.array), (time.perf_counter() - t0) / n)
        log(f"  fit: {fitted.steps} steps in {fitted.seconds:.0f} s")
        if args.n2v_python:
            t0 = time.perf_counter()
            try:
                pred, rep = n2v(args.n2v_python, noisy, args.fit_minutes, 0, args.threads,
                                args.out / "n2v" / f"{name}_{noise}_{level:g}")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:  # one failed peer must not lose the run
                log(f"  n2v failed: {exc}")
            else:
                row["N2V"] = (*score(clean, pred), (time.perf_counter() - t0) / n)
                log(f"  n2v: {rep}")
    return estimate_text(res, noise, level, span), pick, row


def cell(v) -> str:
    return "n/a" if v is None else f"{v[0]:.2f} / {v[1]:.3f}"


def write_tables(out: Path, lines: list[str], targets: list[str]) -> str:
    """Write both tables to OUT/denoise_table.md; return the text."""
    table = "\n".join(lines) + "\n\n" + "\n".join(targets)
    (out / "denoise_table.md").write_text(table + "\n")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600, help="training steps per clean-trained model (CPU)")
    ap.add_argument("--out", type=Path, default=Path("bench_denoise"), help="folder for models and the tables")
    ap.add_argument("--mr-model"), ap.add_argument("--ct-model"), ap.add_argument("--cell-model")
    ap.add_argument("--timestep-sampling", default="uniform", choices=("uniform", "low-noise", "log-normal"),
                    help="training noise levels of the clean-trained models (log-normal: denoising only)")
    ap.add_argument("--contrast-augment", type=float, default=1.0,
                    help="contrast augmentation of the clean-trained models down to this factor (1: none)")
    ap.add_argument("--crop-foreground", type=float, default=0.0,
                    help="share of the clean-trained models' crops centred on the foreground (0: uniform)")
    ap.add_argument("--spacing-augment", type=float, default=1.0,
                    help="coarser-voxel crops of the clean-trained models, up to this voxel-size factor (1: none)")
    ap.add_argument("--ct-train", choices=("one", "both"), default="one",
                    help="CT training data: one = 693_J2KI.dcm; both = also the validation patient's slice "
                         "around (never inside) the validation block")
    ap.add_argument("--preset", default="tiny", help="network preset of the clean-trained models")
    ap.add_argument("--levels", type=float, nargs="+", default=list(LEVELS))
    ap.add_argument("--samples", type=int, default=4, help="posterior samples")
    ap.add_argument("--ddim-steps", type=int, default=5)
    ap.add_argument("--datasets", nargs="+", default=["microscopy", "MR", "CT"], choices=list(DATASETS))
    ap.add_argument("--noises", nargs="+", default=None, help="only these noise models (default: each dataset's)")
    ap.add_argument("--fit-datasets", nargs="*", default=["microscopy"], choices=list(DATASETS),
                    help="datasets that also get --fit and N2V (each costs 2 x --fit-minutes per row)")
    ap.add_argument("--fit-minutes", type=float, default=1.0, help="wall-clock training budget of --fit and of N2V")
    ap.add_argument("--n2v-python", help="python of a venv with careamics (benchmarks/README.md); N2V 'not run' without")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.n2v_python and not Path(args.n2v_python).is_file():
        sys.exit(f"--n2v-python {args.n2v_python}: no such file")
    paths = {"MR": args.mr_model, "CT": args.ct_model, "microscopy": args.cell_model}
    lines = ["| data | noise | level | sigma est/true | " + " | ".join(COLUMNS) + " | val pick |",
             "|" + "---|" * (5 + len(COLUMNS))]
    targets = ["| data | noise | level | val pick | val pick - BM3D (dB) | fit - BM3D (dB) | fit - N2V (dB) |",
               "|---|---|---|---|---|---|---|"]
    for name in args.datasets:
        d_i = list(DATASETS).index(name)  # seeds follow the dataset, not its place in the run
        loader, noises = DATASETS[name]
        train, val, clean, spacing = loader(args.ct_train == "both") if name == "CT" else loader()
        model, secs = get_model(name, train, paths[name], args.steps, args.out, args.timestep_sampling,
                                args.contrast_augment, args.crop_foreground, args.preset, args.spacing_augment)
        log(f"{name}: model ready ({secs:.0f} s training)")
        times: dict[str, list[float]] = {c: [] for c in COLUMNS}
        fit_here = name in args.fit_datasets
        for n_i, noise in enumerate(noises):
            if args.noises and noise not in args.noises:
                continue
            for l_i, level in enumerate(args.levels):
                l_i = LEVELS.index(level) if level in LEVELS else l_i  # a subset of levels draws the same noise
                est, pick, row = run_condition(model, name, val, clean, spacing, noise, level,
                                               1000 * d_i + 10 * n_i + l_i, args, fit_here)
                best = max(v[0] for k, v in row.items() if k != "noisy")
                cells = []
                for c in COLUMNS:
                    v = row.get(c)
                    if v is None:
                        cells.append("not run" if c in ("N2V", "fit") else "n/a")
                        continue
                    times[c].append(v[2])
                    cells.append(f"**{cell(v)}**" if v[0] == best else cell(v))
                lines.append(f"| {name} | {noise} | {level:g} | {est} | " + " | ".join(cells) + f" | {pick} |")
                log(lines[-1])
                peers = [row[k] for k in ("BM3D", "BM3D+Rician", "BM3D+VST") if row.get(k) is not None]
                ref = max(peers, key=lambda v: v[0]) if peers else None  # the best BM3D variant of the row
                diff = lambda a, b: "n/a" if a is None or b is None else f"{a[0] - b[0]:+.2f}"  # noqa: E731
                targets.append(f"| {name} | {noise} | {level:g} | {pick} | {diff(row[pick], ref)} | "
                               f"{diff(row.get('fit'), ref)} | {diff(row.get('fit'), row.get('N2V'))} |")
                write_tables(args.out, lines, targets)  # after every row, so a cut-short run keeps its rows
        t_cells = [("n/a" if not times[c] or c == "noisy" else f"{np.mean(times[c]):.3g} s") for c in COLUMNS]
        lines.append(f"| {name} | s/image | | {clean.shape[1]}x{clean.shape[2]} | " + " | ".join(t_cells) + " | |")
    print(write_tables(args.out, lines, targets))


if __name__ == "__main__":
    main()
