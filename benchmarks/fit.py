"""``denoise --fit`` (no clean data) against the noisy input, a Gaussian blur and the built-in models.

    OMP_NUM_THREADS=1 python benchmarks/fit.py [MINUTES]      (default 1.0: the --fit-minutes budget)

Rows: the held-out microscopy sample (``cell_heldout.tif``, 660x275) with Poisson-Gaussian noise
and the held-out MR slices (``mr_heldout.nii.gz``, 6 x 96x128) with Gaussian noise, at 5 % and
10 % of the range (``medidiff.core.noise.add_noise``, seed 1). PSNR in dB over the image
(microscopy) or inside ``x > 0.1 max`` (MR). Columns: noisy; Gaussian blur with its sigma chosen
on a *different* image with the same noise (the left half of skimage's cell; nibabel example4d
slices z 10-15), and the oracle sigma chosen on the test image itself; the built-in model
without fitting (tweedie); ``fit_and_denoise`` from scratch (tiny network) and fine-tuning the
built-in model, each with ``minutes`` of training (seconds include the 8-draw estimate). One
printed dict per row. The clean images are used only to score.
"""
import sys, time, warnings, numpy as np, torch, nibabel as nib
from scipy import ndimage as ndi
import skimage.data
from nibabel.testing import data_path
from medidiff.builtin.sample_scans import microscopy_sample, mr_sample
from medidiff.core import noise as nl
from medidiff.tasks.fit import fit_and_denoise
from medidiff.tasks.denoise import denoise
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
MIN = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
SIGMAS = [0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4]

def psnr(x, a, mask):
    r = float(x.max() - x.min()); return 10 * np.log10(r * r / np.mean((a[mask] - x[mask]) ** 2))

def blur(a, s):  # in-plane only
    a = a.astype(np.float64); return ndi.gaussian_filter(a, [0] * (a.ndim - 2) + [s, s])

cell = microscopy_sample(); mr = mr_sample()
other_cell = skimage.data.cell()[:, :275].astype(np.float32)  # the left half: a different image
ex = nib.load(f"{data_path}/example4d.nii.gz").get_fdata()[..., 0]
other_mr = np.moveaxis(ex[:, :, 10:16], 2, 0).astype(np.float32)
rows = []
for name, scan, other, model, lvl in [("micro PG", cell, other_cell, "poisson-gaussian", 0.05),
                                      ("micro PG", cell, other_cell, "poisson-gaussian", 0.10),
                                      ("MR Gauss", mr, other_mr, "gaussian", 0.05),
                                      ("MR Gauss", mr, other_mr, "gaussian", 0.10)]:
    x = scan.array.astype(np.float64)
    mask = x > 0.1 * x.max() if name.startswith("MR") else np.ones(x.shape, bool)
    omask = other > 0.1 * other.max() if name.startswith("MR") else np.ones(other.shape, bool)
    y = nl.add_noise(scan.array, model, lvl, rng=1).astype(np.float32)
    yo = nl.add_noise(other, model, lvl, rng=2).astype(np.float32)
    s_other = max(SIGMAS, key=lambda s: psnr(other, blur(yo, s), omask))
    s_best = max(SIGMAS, key=lambda s: psnr(x, blur(y, s), mask))
    noisy_scan = scan.with_array(y)
    r = {"row": f"{name} {int(lvl*100)}%", "noisy": psnr(x, y, mask),
         f"blur(s={s_other})": psnr(x, blur(y, s_other), mask), f"blur oracle(s={s_best})": psnr(x, blur(y, s_best), mask)}
    builtin = "micro2d" if name.startswith("micro") else "mr2d"
    t = time.time(); d = denoise(builtin, noisy_scan, noise=model, device="cpu")
    r[f"{builtin} no fit"] = (psnr(x, d.scan.array, mask), time.time() - t)
    for label, m in [("fit scratch", None), (f"fit {builtin}", builtin)]:
        t = time.time(); f = fit_and_denoise(m, noisy_scan, noise=model, minutes=MIN, seed=0, device="cpu")
        r[label] = (psnr(x, f.scan.array, mask), time.time() - t, f.steps)
    rows.append(r)
    print(r, flush=True)
