"""Train on synthetic, test on real, on a task that is not an intensity threshold: classify a
32 x 32 patch as MR, CT or microscopy with a small MONAI CNN trained on real, synthetic, or real +
synthetic patches, and tested on real patches of the held-out samples no model trained on.

    OMP_NUM_THREADS=1 python benchmarks/generate_tstr.py [--out OUT] [--per-class 96] [--steps 20]
        [--iters 600] [--eval-every 50] [--seeds 0 1 2] [--data-seed 0]

What it measures
    The accuracy ratio synthetic / real and (real + synthetic) / real of a classifier across the
    three scan types of the built-in models (``mr2d``, ``ct2d``, ``micro2d``, loaded fresh with
    ``medidiff.model_store.registry.resolve_model``). Synthetic patches are unconditional samples
    of each model (``medidiff.tasks.generate.generate``, the schedule's default sampler, ``--steps``
    steps, seed 0 for MR, 1 for CT, 2 for microscopy; ``--data-seed k`` adds 1000 k to these and to
    the seeds of every patch position, for a second draw of all the data).

Patches and what the features can see
    Every patch, real or synthetic, goes through the same steps: a training patch is a window of
    the model's size (64 x 64 for mr2d, 32 x 32 for the others; a generated sample, or a random
    crop of a training image as the model's training drew them) at native pixel size, clipped to
    the model's intensity window ([-1, 1] network units: what the model can represent) and
    **centre-cropped** to 32 x 32 (mr2d's 64 x 64 samples and windows are cropped, not resized, so
    the pixel size is the one the model saw; validation and test patches are random 32 x 32
    crops of their block, clipped the same way); a patch is kept only if at least
    ``MIN_FOREGROUND`` of it lies above -0.8 network units (``medidiff.core.data.foreground_fraction``,
    the training data's empty-slice test: mostly-background patches are dropped) and its range is
    at least ``MIN_RANGE`` (flat patches, e.g. clipped bone or a saturated nucleus, would scale to
    all zeros: in a first run 11 of the 96 real CT training patches and 4 of 64 microscopy test
    patches were flat, a free "all zeros -> CT" rule), the same rules for real and synthetic; then
    it is mapped **on its own** to 0..1 by its 1st and 99th percentiles. After that no unit (HU, MR signal,
    grey level) is left: the classifier sees the shape of the intensity histogram, texture, noise
    and edges, and whatever anatomy fits in 32 x 32 pixels. A baseline in the same run, logistic
    regression on 16-bin histograms plus mean and std of the normalised patch, shows how far the
    histogram alone goes. The CNN sees flips and 90-degree turns in training (orientation is no
    cue). Neither model sees where in the image a patch was taken.

Split (the built-in models' own: no held-out pixel was trained on)
    training, real: the images each model trained on (``benchmarks/prepare_builtin_data.py``'s
    sources, read from the installed packages in memory: nibabel example4d volume 0 slices
    z < 16, pydicom's 693_J2KI.dcm and J2K_pixelrep_mismatch.dcm, the left halves of skimage's
    cell.png and of its IHC image in gray, the micro2d split). Held-out: ``medidiff/builtin/samples/`` (mr_heldout.nii.gz = example4d slices
    z = 18..23; ct_heldout.nii.gz = pydicom's CT_small.dcm, a third patient and a *chest* slice,
    where the training CTs are heads; cell_heldout.tif = the right half of cell.png), each image cut
    into a checkerboard of whole blocks (MR 48 x 64, CT and cell 64 x 64; partial edge blocks
    dropped): blocks with (slice + block row + block column) even are validation, odd are test, so
    no pixel is in both. Validation and test patches are random 32 x 32 crops wholly inside one
    block; patches of a split may overlap each other, so there are far fewer independent test cases
    than patches (the CT test is two 64 x 64 blocks of one slice). Validation picks one setting: the
    iteration count (a multiple of ``--eval-every``) with the best mean validation balanced accuracy
    over the three training sets and the seeds, the same count
    for all of them; the test numbers are read at that count only.

Prints Markdown tables (pasted in benchmarks/README.md) and writes OUT/results.json and
OUT/contact_sheet.png (synthetic vs real patches per class, as the classifier sees them).
Data card: data_cards/benchmark-generate.md, "Scan-type classification".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prepare_builtin_data import CT_TRAIN, IHC_HALF, SAMPLES, ihc_gray  # noqa: E402 (the built-ins' own data split)

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("MR", "CT", "microscopy")
MODELS = {"MR": "mr2d", "CT": "ct2d", "microscopy": "micro2d"}
PATCH = 32
MIN_FOREGROUND = 0.5
MIN_RANGE = 0.01  # network units (CT: 10 HU); clipped bone, saturated nuclei and smooth lossy CT can be flat
BLOCKS = {"MR": (48, 64), "CT": (64, 64), "microscopy": (64, 64)}  # held-out checkerboard blocks


@dataclass
class Images:
    """Network-unit images of one class, by split, and the model window their patches are cut with."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    test: list[np.ndarray]
    window: int


def _units(model, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Scan units -> the model's network units, fitted on these arrays together for a per-scan rule."""
    norm = model.normaliser
    if norm.kind == "foreground":
        norm = norm.for_scan(np.stack(arrays), source="tstr")
    return [np.clip(norm.forward(a), -1.0, 1.0) for a in arrays]


def checkerboard(images: list[np.ndarray], block: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cut each image into whole ``block``s (partial ones at the far edges dropped); alternate blocks
    (``(image + row + column)`` even / odd) go to validation / test, so the two never share a pixel."""
    val, test = [], []
    for k, img in enumerate(images):
        for by in range(img.shape[0] // block[0]):
            for bx in range(img.shape[1] // block[1]):
                part = img[by * block[0]: (by + 1) * block[0], bx * block[1]: (bx + 1) * block[1]]
                (val if (k + by + bx) % 2 == 0 else test).append(part)
    return val, test


def load_real(models: dict) -> dict[str, Images]:
    """Training images from the installed packages, held-out ones from medidiff/builtin/samples/."""
    import nibabel
    import skimage.data
    from pydicom.data import get_testdata_file

    from medidiff.io import load_scan

    out: dict[str, Images] = {}
    src = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data" / "example4d.nii.gz"
    vol = np.asarray(nibabel.load(src).dataobj)[..., 0].astype(np.float32).T  # (z, y, x)
    held = load_scan(SAMPLES / "mr_heldout.nii.gz").array.astype(np.float32)  # z = 18..23, 96 x 128
    mr = models["MR"]
    out["MR"] = Images(_units(mr, list(vol[:16])), *checkerboard(_units(mr, list(held)), BLOCKS["MR"]),
                       int(mr.config.image_size[0]))
    ct = models["CT"]
    ct_train = [load_scan(get_testdata_file(n)).array.astype(np.float32) for n in CT_TRAIN]
    ct_held = load_scan(SAMPLES / "ct_heldout.nii.gz").array.astype(np.float32)  # 128 x 128
    out["CT"] = Images(_units(ct, ct_train), *checkerboard(_units(ct, [ct_held]), BLOCKS["CT"]),
                       int(ct.config.image_size[0]))
    mi = models["microscopy"]
    cell = skimage.data.cell().astype(np.float32)
    cell_held = load_scan(SAMPLES / "cell_heldout.tif").array.astype(np.float32)  # 660 x 275
    train_images = _units(mi, [cell[:, : cell.shape[1] // 2]]) + _units(mi, [ihc_gray()[:, :IHC_HALF]])  # two scans
    out["microscopy"] = Images(train_images,
                               *checkerboard(_units(mi, [cell_held]), BLOCKS["microscopy"]),
                               int(mi.config.image_size[0]))
    return out


def centre_crop(img: np.ndarray, size: int = PATCH) -> np.ndarray:
    y, x = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return img[y: y + size, x: x + size]


def keep(patch: np.ndarray) -> bool:
    """Mostly foreground, and not flat (a flat patch scales to all zeros: its class could only be guessed)."""
    from medidiff.core.data import foreground_fraction

    return foreground_fraction(patch) >= MIN_FOREGROUND and float(np.ptp(patch)) >= MIN_RANGE


def real_patches(images: list[np.ndarray], window: int, n: int, seed: int) -> np.ndarray:
    """``n`` random ``window``-size crops (the library's training crop, padded as in training),
    centre-cropped to 32 x 32, kept by ``keep``."""
    from medidiff.core.data import fit_to_size

    rng = np.random.default_rng(seed)
    got = []
    for _ in range(200 * n):
        img = images[int(rng.integers(len(images)))]
        win = fit_to_size([img], (window, window), rng, [float(img.min())])[0]
        patch = centre_crop(win)
        if keep(patch):
            got.append(patch)
            if len(got) == n:
                return np.stack(got)
    raise RuntimeError(f"only {len(got)} of {n} patches passed the foreground test")


def synthetic_patches(model, n: int, steps: int, seed: int) -> tuple[np.ndarray, int, int, float]:
    """The first ``n`` generated samples that pass ``keep`` (centre-cropped); how many were made and passed; seconds."""
    from medidiff.tasks.generate import generate

    got, made, passed, t0, batch = [], 0, 0, time.perf_counter(), max(n, 16)
    while len(got) < n:
        if made > 8 * n:
            raise RuntimeError(f"only {len(got)} of {made} samples passed the foreground test")
        res = generate(model, batch, seed=seed, steps=steps, start=made, device="cpu")
        for scan in res.scans:
            patch = centre_crop(np.clip(model.normaliser.forward(scan.array), -1.0, 1.0))
            if keep(patch):
                passed += 1
                if len(got) < n:
                    got.append(patch)
        made += batch
    return np.stack(got), made, passed, time.perf_counter() - t0


def per_patch(patches: np.ndarray) -> np.ndarray:
    """Each patch mapped on its own: 1st percentile -> 0, 99th -> 1, clipped (no unit survives)."""
    lo = np.percentile(patches, 1, axis=(1, 2), keepdims=True)
    hi = np.percentile(patches, 99, axis=(1, 2), keepdims=True)
    return np.clip((patches - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def texture(raw: np.ndarray, scaled: np.ndarray) -> dict:
    """Medians over patches: range p99 - p1 in network units (contrast in the model's window) and the
    mean |difference| of neighbouring pixels after per-patch scaling (0..1; noise makes it large)."""
    rng = np.percentile(raw, 99, axis=(1, 2)) - np.percentile(raw, 1, axis=(1, 2))
    tv = (np.abs(np.diff(scaled, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(scaled, axis=2)).mean(axis=(1, 2))) / 2
    return {"range": float(np.median(rng)), "neighbour_difference": float(np.median(tv))}


def metrics(pred: np.ndarray, y: np.ndarray) -> dict:
    recalls = [float((pred[y == c] == c).mean()) for c in range(len(CLASSES))]
    conf = [[int(((y == a) & (pred == b)).sum()) for b in range(len(CLASSES))] for a in range(len(CLASSES))]
    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(np.mean(recalls)),
            "recall": dict(zip(CLASSES, recalls)), "confusion": conf}


def histogram_features(x: np.ndarray) -> np.ndarray:
    hist = np.stack([np.histogram(p, bins=16, range=(0.0, 1.0))[0] / p.size for p in x])
    return np.concatenate([hist, x.mean(axis=(1, 2))[:, None], x.std(axis=(1, 2))[:, None]], axis=1).astype(np.float32)


def baseline(train: tuple[np.ndarray, np.ndarray], evals: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Multinomial logistic regression (L-BFGS, L2 1e-3, standardised features) on histogram + mean + std."""
    f = histogram_features(train[0])
    mu, sd = f.mean(0), f.std(0) + 1e-6
    xt, yt = torch.from_numpy((f - mu) / sd), torch.from_numpy(train[1])
    torch.manual_seed(0)
    lin = torch.nn.Linear(xt.shape[1], len(CLASSES))
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    out = {}
    with torch.no_grad():
        for name, (x, y) in evals.items():
            pred = lin(torch.from_numpy((histogram_features(x) - mu) / sd)).argmax(1).numpy()
            out[name] = metrics(pred, y)
    return out


def classifier() -> torch.nn.Module:
    from monai.networks.nets import Classifier

    return Classifier(in_shape=(1, PATCH, PATCH), classes=len(CLASSES), channels=(16, 32, 64), strides=(2, 2, 2),
                      num_res_units=1, dropout=0.1)


def train_cnn(x: np.ndarray, y: np.ndarray, evals: dict[str, tuple[np.ndarray, np.ndarray]], iters: int,
              every: int, seed: int) -> dict[int, dict]:
    """Adam 1e-3, batch 32, flips + 90-degree turns; metrics on ``evals`` every ``every`` iterations."""
    torch.manual_seed(seed)
    net = classifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x[:, None]), torch.from_numpy(y)
    curve: dict[int, dict] = {}
    for it in range(1, iters + 1):
        net.train()
        idx = torch.from_numpy(rng.integers(0, len(x), size=32))
        xb = xt[idx]
        k = int(rng.integers(4))
        xb = torch.rot90(xb, k, dims=(2, 3))
        if rng.random() < 0.5:
            xb = torch.flip(xb, dims=(3,))
        loss = torch.nn.functional.cross_entropy(net(xb), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % every == 0:
            net.eval()
            with torch.no_grad():
                curve[it] = {name: metrics(net(torch.from_numpy(ex[:, None])).argmax(1).numpy(), ey)
                             for name, (ex, ey) in evals.items()}
    return curve


def contact_sheet(real: dict[str, np.ndarray], syn: dict[str, np.ndarray], test: dict[str, np.ndarray], path: Path,
                  ncols: int = 8) -> Path:
    from medidiff.reporting.figures import save_grid

    images, titles = [], []
    for c in CLASSES:
        for kind, arr in (("synthetic", syn[c]), ("real training", real[c]), ("real test", test[c])):
            images += list(arr[:ncols])
            titles += [f"{c} {kind}"] + [""] * (ncols - 1)
    return save_grid(images, path, titles=titles, ncols=ncols, value_range=(0.0, 1.0), cell_inches=1.4,
                     suptitle="per class: synthetic, real training and real test (held-out) patches, "
                              "each normalised on its own (0..1)")


def stack(sets: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([sets[c] for c in CLASSES])
    y = np.concatenate([np.full(len(sets[c]), i, dtype=np.int64) for i, c in enumerate(CLASSES)])
    return x, y


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-generate-tstr"))
    ap.add_argument("--per-class", type=int, default=96, help="training patches per class and set")
    ap.add_argument("--eval-per-class", type=int, default=64, help="validation and test patches per class")
    ap.add_argument("--steps", type=int, default=20, help="sampler steps")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="classifier seeds")
    ap.add_argument("--data-seed", type=int, default=0,
                    help="another draw of every patch position and generator seed (1000 x this is added)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from medidiff.core.sampling import check_sampler
    from medidiff.model_store.registry import resolve_model

    t_start = time.perf_counter()
    models = {c: resolve_model(MODELS[c], device="cpu") for c in CLASSES}  # fresh from disk
    prov = {"builtin_commit": _git("log", "-1", "--format=%H", "--", "medidiff/builtin"),
            "builtin_dirty": _git("status", "--short", "--", "medidiff/builtin"),
            "weights_sha256": {MODELS[c]: json.loads((models[c].path / "config.json").read_text())
                               .get("weights_sha256", "") for c in CLASSES}}
    images = load_real(models)
    real_train, val, test, syn, gen = {}, {}, {}, {}, {}
    for i, c in enumerate(CLASSES):
        im = images[c]
        d = 1000 * args.data_seed
        real_train[c] = real_patches(im.train, im.window, args.per_class, seed=d + 100 + i)
        val[c] = real_patches(im.val, PATCH, args.eval_per_class, seed=d + 200 + i)
        test[c] = real_patches(im.test, PATCH, args.eval_per_class, seed=d + 300 + i)
        patches, made, passed, secs = synthetic_patches(models[c], args.per_class, args.steps, seed=d + i)
        syn[c] = patches
        gen[c] = {"model": MODELS[c], "made": made, "passed_foreground_test": passed, "used": len(patches),
                  "seconds": round(secs, 1), "samples_per_s": round(made / secs, 2),
                  "sampler": check_sampler(models[c], None), "steps": args.steps}
        print(f"{c}: generated {made} ({passed} passed the foreground test) in {secs:.1f} s", flush=True)
    norm = {k: {c: per_patch(v[c]) for c in CLASSES} for k, v in
            {"real": real_train, "synthetic": syn, "val": val, "test": test}.items()}
    contact_sheet(norm["real"], norm["synthetic"], norm["test"], args.out / "contact_sheet.png")
    raw = {"real": real_train, "synthetic": syn, "val": val, "test": test}
    tex = {k: {c: texture(raw[k][c], norm[k][c]) for c in CLASSES} for k in raw}
    evals = {"val": stack(norm["val"]), "test": stack(norm["test"])}
    r_x, r_y = stack(norm["real"])
    s_x, s_y = stack(norm["synthetic"])
    sets = {"real": (r_x, r_y), "synthetic": (s_x, s_y),
            "real+synthetic": (np.concatenate([r_x, s_x]), np.concatenate([r_y, s_y]))}
    blocks = {c: {"val": len(images[c].val), "test": len(images[c].test)} for c in CLASSES}
    results: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "provenance": prov, "held_out_blocks": blocks, "min_foreground": MIN_FOREGROUND,
                     "min_range": MIN_RANGE, "texture": tex, "generation": gen,
                     "baseline": {}, "cnn": {}}
    for name, data in sets.items():
        results["baseline"][name] = baseline(data, evals)
        t0 = time.perf_counter()
        results["cnn"][name] = {s: train_cnn(*data, evals, args.iters, args.eval_every, seed=s) for s in args.seeds}
        print(f"{name}: CNN x{len(args.seeds)} in {time.perf_counter() - t0:.0f} s", flush=True)
    # one iteration count for every set and seed: the best mean validation balanced accuracy
    its = sorted(next(iter(results["cnn"]["real"].values())))
    score = {it: np.mean([results["cnn"][n][s][it]["val"]["balanced_accuracy"] for n in sets for s in args.seeds])
             for it in its}
    best = max(its, key=lambda it: (score[it], -it))
    results["chosen_iterations"] = best
    summary = {}
    for name in sets:
        row = {}
        for split in ("val", "test"):
            for m in ("accuracy", "balanced_accuracy"):
                vals = [results["cnn"][name][s][best][split][m] for s in args.seeds]
                row[f"{split}_{m}"] = (float(np.mean(vals)), float(np.min(vals)), float(np.max(vals)))
        row["test_recall"] = {c: float(np.mean([results["cnn"][name][s][best]["test"]["recall"][c] for s in args.seeds]))
                              for c in CLASSES}
        row["test_confusion_seed0"] = results["cnn"][name][args.seeds[0]][best]["test"]["confusion"]
        summary[name] = row
    results["summary"] = summary
    results["seconds_total"] = round(time.perf_counter() - t_start, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))

    ref = summary["real"]["test_accuracy"][0]
    ref_b = results["baseline"]["real"]["test"]["accuracy"]
    print(f"\nchosen on validation: {best} iterations (mean val balanced accuracy {score[best]:.3f})\n")
    print("| training set (per class) | CNN test accuracy, mean [min, max] over seeds | CNN balanced acc. | ratio to real "
          "| CNN val accuracy | baseline test acc. (histogram + mean/std) | baseline ratio |")
    print("|---|---|---|---|---|---|---|")
    n = args.per_class
    for name in sets:
        row, b = summary[name], results["baseline"][name]["test"]["accuracy"]
        a = row["test_accuracy"]
        size = 2 * n if name == "real+synthetic" else n
        print(f"| {name} ({size}) | {a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}] | {row['test_balanced_accuracy'][0]:.3f} "
              f"| {a[0] / ref:.3f} | {row['val_accuracy'][0]:.3f} | {b:.3f} | {b / ref_b:.3f} |")
    print("\n| training set | test recall MR / CT / microscopy (CNN, mean over seeds) | CNN confusion, seed "
          f"{args.seeds[0]} (rows true MR/CT/micro, cols predicted) | baseline test recall MR / CT / microscopy |")
    print("|---|---|---|---|")
    for name in sets:
        r, br = summary[name]["test_recall"], results["baseline"][name]["test"]["recall"]
        print(f"| {name} | {r['MR']:.3f} / {r['CT']:.3f} / {r['microscopy']:.3f} | {summary[name]['test_confusion_seed0']} "
              f"| {br['MR']:.3f} / {br['CT']:.3f} / {br['microscopy']:.3f} |")
    print("\n| patches (median over patches) | " + " | ".join(f"{c}: range (network units) / neighbour |diff| (0..1)"
                                                      for c in CLASSES) + " |")
    print("|---|---|---|---|")
    for k in raw:
        print(f"| {k} | " + " | ".join(f"{tex[k][c]['range']:.3f} / {tex[k][c]['neighbour_difference']:.3f}"
                                      for c in CLASSES) + " |")
    print(f"\nheld-out blocks (val / test): {blocks}")
    print(f"\ngeneration: {gen}\nprovenance: {prov}\ntotal {results['seconds_total']:.0f} s")


if __name__ == "__main__":
    main()
