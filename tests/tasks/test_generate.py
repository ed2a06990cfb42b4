"""Synthetic data sets: reproducible files, resume, DICOM privacy and geometry, conditions, memorisation, data card.

Two more tiny models are trained here (module scope, cached like ``tiny_mr_model`` when
MEDIDIFF_TEST_MODEL_CACHE is set) on the real MR training slices:

* class-conditioned: label "upper" for slices z >= 8 of the training volume, "lower" below;
  trained from 2D DICOM files that carry identifying patient/study tags, so the DICOM privacy
  test has real identifiers to look for;
* mask-conditioned: each slice with its Otsu-threshold mask (1 = brain), so images are
  brighter inside the mask than outside in every training pair.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from medidiff.errors import MedidiffError, OutputError
from medidiff.io import Scan, affine_from_spacing, load_scan, save_scan
from medidiff.core.model import DiffusionModel
from medidiff.core.progress import run_to_end
from medidiff.tasks.dataset import generate_dataset, generate_dataset_steps
from medidiff.tasks.generate import generate, generate_steps
from medidiff.tasks.quality import evaluate_generated

IDENTIFIERS = {
    "PatientName": "Trainee^Tina", "PatientID": "TRAIN-4711", "PatientBirthDate": "19700101",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.4711", "StudyID": "ST4711", "AccessionNumber": "ACC4711",
    "ReferringPhysicianName": "Doctor^Who", "StudyDescription": "training study 4711",
}


def _cached_train(name: str, tmp_path_factory, **kwargs) -> DiffusionModel:
    from medidiff.tasks.train import train

    cache = os.environ.get("MEDIDIFF_TEST_MODEL_CACHE")
    if cache and (Path(cache) / name / "model" / "config.json").is_file():
        return DiffusionModel.load(Path(cache) / name / "model")
    run = Path(cache) / name if cache else tmp_path_factory.mktemp(name)
    train(out=run, dims=2, preset="tiny", image_size=32, steps=400, batch_size=16, lr=2e-3, seed=0,
          device="cpu", checkpoint_every=0, overwrite=True, **kwargs)
    return DiffusionModel.load(run / "model")


def otsu_mask(image: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    return (image > threshold_otsu(image)).astype(np.float32)


@pytest.fixture(scope="module")
def training_dicom_dir(mr_train_scan: Scan, tmp_path_factory) -> Path:
    """The 16 training slices as 2D DICOM files carrying identifying tags."""
    folder = tmp_path_factory.mktemp("train_dicom")
    for z in range(mr_train_scan.shape[0]):
        sl = Scan(mr_train_scan.array[z], mr_train_scan.spacing[1:], mr_train_scan.affine, "MR",
                  {"dicom": dict(IDENTIFIERS)})
        save_scan(sl, folder / f"slice_{z:02d}.dcm")
    return folder


@pytest.fixture(scope="module")
def class_model(training_dicom_dir: Path, tmp_path_factory) -> DiffusionModel:
    files = sorted(training_dicom_dir.glob("*.dcm"))
    labels = [int(k >= 8) for k in range(len(files))]
    return _cached_train("gen_class", tmp_path_factory, data=files, labels=labels, class_names=["lower", "upper"])


@pytest.fixture(scope="module")
def mask_model(mr_train_scan: Scan, tmp_path_factory) -> DiffusionModel:
    slices = [Scan(a, mr_train_scan.spacing[1:], mr_train_scan.affine, "MR") for a in mr_train_scan.array]
    masks = [s.with_array(otsu_mask(s.array)) for s in slices]
    return _cached_train("gen_mask", tmp_path_factory, data=slices, masks=masks, mask_classes=1)


def manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


# -- in memory ------------------------------------------------------------------------------------------
def test_generate_gives_scans_in_training_geometry(tiny_mr_model):
    result = generate(tiny_mr_model, 3, seed=1, steps=4, device="cpu")
    assert len(result.scans) == 3 and result.masks is None and len(set(result.seeds)) == 3
    norm = tiny_mr_model.normaliser
    for i, scan in enumerate(result.scans):
        assert scan.shape == tuple(tiny_mr_model.config.image_size)
        assert scan.spacing == (2.0, 2.0)
        assert scan.orientation[:2] == tiny_mr_model.config.orientation[:2]  # LA of the training volume
        assert scan.modality == "MR"
        assert scan.meta["synthetic"] is True and scan.meta["seed"] == result.seeds[i]
        # scan units: inside the normaliser's range, not network units
        assert norm.low - 1 <= scan.array.min() and scan.array.max() <= norm.high + 1
        assert scan.array.max() > 0.25 * norm.high  # network units would stay near 1; 4 ddim steps give ~300 of 727
    again = generate(tiny_mr_model, 3, seed=1, steps=4, device="cpu")
    assert all(np.array_equal(a.array, b.array) for a, b in zip(result.scans, again.scans))
    other = generate(tiny_mr_model, 1, seed=2, steps=4, device="cpu")
    assert not np.array_equal(other.scans[0].array, result.scans[0].array)


def test_start_continues_the_same_sequence(tiny_mr_model):
    whole = generate(tiny_mr_model, 3, seed=5, steps=3, device="cpu", batch_size=2, bit_identical=True)
    events = []
    tail = run_to_end(generate_steps(tiny_mr_model, 1, seed=5, steps=3, device="cpu", start=2, bit_identical=True),
                      callback=events.append)
    assert events[-1].step == events[-1].total == 3 and events[-1].preview is not None
    assert tail.seeds == whole.seeds[2:]
    assert np.array_equal(tail.scans[0].array, whole.scans[2].array)


# -- data set folders -------------------------------------------------------------------------------------
def test_same_files_and_sha256_across_batch_sizes(tiny_mr_model, tmp_path):
    a = generate_dataset(tiny_mr_model, tmp_path / "a", 4, steps=4, batch_size=1, device="cpu", bit_identical=True)
    b = generate_dataset(tiny_mr_model, tmp_path / "b", 4, steps=4, batch_size=3, device="cpu", bit_identical=True)
    assert a.complete and b.complete and a.written == b.written == 4
    assert manifest(tmp_path / "a") == manifest(tmp_path / "b")
    for row in manifest(tmp_path / "a"):
        assert (tmp_path / "a" / row["file"]).read_bytes() == (tmp_path / "b" / row["file"]).read_bytes()
    rows = manifest(tmp_path / "a")
    assert [r["file"] for r in rows] == [f"sample_{i:05d}.nii.gz" for i in range(4)]
    assert {r["sampler"] for r in rows} == {"ddim"} and {r["steps"] for r in rows} == {"4"}


def test_formats_share_pixel_hashes_and_read_back(tiny_mr_model, tmp_path):
    hashes = {}
    for fmt, suffix in (("nifti", ".nii.gz"), ("tiff", ".tif"), ("png", ".png")):
        generate_dataset(tiny_mr_model, tmp_path / fmt, 2, format=fmt, steps=3, device="cpu")
        rows = manifest(tmp_path / fmt)
        assert [r["file"] for r in rows] == [f"sample_{i:05d}{suffix}" for i in range(2)]
        hashes[fmt] = [r["pixel_sha256"] for r in rows]
        back = load_scan(tmp_path / fmt / rows[0]["file"])
        assert back.shape == (32, 32)
        first = load_scan(tmp_path / "nifti" / "sample_00000.nii.gz").array
        # NIfTI and TIFF are exact; PNG keeps 16-bit codes of the image's own range
        tol = 0 if fmt != "png" else (first.max() - first.min()) / 65535
        assert np.abs(back.array - first).max() <= tol + 1e-3
    assert hashes["nifti"] == hashes["tiff"] == hashes["png"]


def test_resume_after_cancel_and_damage(tiny_mr_model, tmp_path):
    ref = tmp_path / "ref"
    exact = dict(steps=3, device="cpu", bit_identical=True)  # the resumed files must equal an uninterrupted run's
    generate_dataset(tiny_mr_model, ref, 5, **exact)
    out = tmp_path / "out"
    gen = generate_dataset_steps(tiny_mr_model, out, 5, **exact)
    for event in gen:  # cancel once two samples are on disk, as the napari widget would
        if len(list(out.glob("sample_*.nii.gz"))) >= 2:
            break
    gen.close()
    assert not (out / "manifest.csv").exists()
    assert len(list(out.glob("sample_*.nii.gz"))) == 2
    # damage: one finished file deleted, one left by a crash as a stale temporary file
    (out / "sample_00001.nii.gz").unlink()
    stale = out / ".sample_00003.nii.gz.abc123.part.nii.gz"
    stale.write_bytes(b"half a file")
    result = generate_dataset(tiny_mr_model, out, 5, **exact)
    assert result.complete and result.skipped == 1 and result.written == 4
    assert not stale.exists()
    rows = manifest(out)
    assert [int(r["index"]) for r in rows] == list(range(5))  # no gaps, no duplicates
    assert rows == manifest(ref)
    # a complete folder is left alone by a rerun
    again = generate_dataset(tiny_mr_model, out, 5, **exact)
    assert again.written == 0 and again.skipped == 5


def test_corrupted_file_is_regenerated(tiny_mr_model, tmp_path):
    out = tmp_path / "out"
    generate_dataset(tiny_mr_model, out, 2, steps=3, device="cpu", bit_identical=True)
    good = (out / "sample_00000.nii.gz").read_bytes()
    (out / "sample_00000.nii.gz").write_bytes(good[: len(good) // 2])  # truncated: sha256 no longer matches
    result = generate_dataset(tiny_mr_model, out, 2, steps=3, device="cpu", bit_identical=True)
    assert result.written == 1 and result.skipped == 1
    assert (out / "sample_00000.nii.gz").read_bytes() == good


def test_other_settings_or_foreign_folder_refused(tiny_mr_model, tmp_path):
    out = tmp_path / "out"
    generate_dataset(tiny_mr_model, out, 2, steps=3, device="cpu")
    with pytest.raises(OutputError, match="other settings"):
        generate_dataset(tiny_mr_model, out, 2, steps=4, device="cpu")
    redone = generate_dataset(tiny_mr_model, out, 2, steps=4, device="cpu", overwrite=True)
    assert redone.written == 2 and {r["steps"] for r in manifest(out)} == {"4"}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="other files"):
        generate_dataset(tiny_mr_model, foreign, 2, steps=3, device="cpu")
    assert (foreign / "notes.txt").read_text() == "mine"


def test_shards_union_equals_one_process(tiny_mr_model, tmp_path):
    generate_dataset(tiny_mr_model, tmp_path / "one", 5, steps=3, device="cpu", bit_identical=True)
    r1 = generate_dataset(tiny_mr_model, tmp_path / "two", 5, steps=3, device="cpu", rank=1, world=2, bit_identical=True)
    assert not r1.complete and r1.written == 2  # indices 1 and 3; rank 0 has not run yet
    r0 = generate_dataset(tiny_mr_model, tmp_path / "two", 5, steps=3, device="cpu", rank=0, world=2, bit_identical=True)
    assert r0.complete and r0.written == 3
    assert manifest(tmp_path / "two") == manifest(tmp_path / "one")


# -- DICOM --------------------------------------------------------------------------------------------------
def test_dicom_output_is_marked_synthetic_and_has_no_source_identifiers(class_model, training_dicom_dir, tmp_path):
    import pydicom

    assert class_model.config.training["sources"], "the model should record where it was trained"
    source = pydicom.dcmread(sorted(training_dicom_dir.glob("*.dcm"))[0])
    identifying = {kw: str(source.get(kw)) for kw in IDENTIFIERS}
    assert identifying == IDENTIFIERS  # the training files really carry them
    out = tmp_path / "dcm"
    result = generate_dataset(class_model, out, 2, format="dicom", steps=3, device="cpu")
    assert result.complete
    files = sorted(out.glob("sample_*.dcm"))
    assert len(files) == 2
    patients = set()
    for f in files:
        ds = pydicom.dcmread(f)
        assert "SYNTHETIC" in str(ds.SeriesDescription).upper()
        assert "DERIVED" in list(ds.ImageType)
        values = [str(el.value) for el in ds.iterall() if el.VR not in ("OB", "OW", "UN")]
        for kw, secret in identifying.items():
            assert secret not in values, f"{f.name} carries the training {kw}"
        patients.add(str(ds.PatientID))
        back = load_scan(f)
        assert back.spacing == pytest.approx((2.0, 2.0))
        assert back.shape == tuple(class_model.config.image_size)
    assert all(p.startswith("SYNTHETIC") for p in patients)


# -- conditions ----------------------------------------------------------------------------------------------
def test_class_labels_change_the_images(class_model):
    # the two classes (lower / upper half of one brain) look alike, so the tiny model's images
    # differ only moderately between them; what must hold: same seed + same label -> identical,
    # same seed + other label -> different (a model that ignored labels gives identical images)
    lower = generate(class_model, 2, seed=3, steps=8, labels="lower", guidance=2.0, device="cpu")
    upper = generate(class_model, 2, seed=3, steps=8, labels=1, guidance=2.0, device="cpu")
    again = generate(class_model, 2, seed=3, steps=8, labels=["lower", "lower"], guidance=2.0, device="cpu")
    assert lower.labels == [0, 0] and upper.labels == [1, 1]
    assert lower.seeds == upper.seeds
    rng = class_model.normaliser.high - class_model.normaliser.low
    for a, b, c in zip(lower.scans, upper.scans, again.scans):
        assert np.array_equal(a.array, c.array)
        assert np.abs(a.array - b.array).mean() > 0.002 * rng
    assert upper.scans[0].meta["class_name"] == "upper"
    default = generate(class_model, 4, steps=2, device="cpu")
    assert default.labels == [0, 1, 0, 1]  # no labels: classes in turn
    with pytest.raises(MedidiffError, match="unknown class"):
        generate(class_model, 1, steps=2, labels="middle", device="cpu")


def test_labels_refused_by_unconditioned_model(tiny_mr_model):
    with pytest.raises(MedidiffError, match="no class conditioning"):
        generate(tiny_mr_model, 1, steps=2, labels=0, device="cpu")
    with pytest.raises(MedidiffError, match="no mask conditioning"):
        generate(tiny_mr_model, masks=[np.zeros((32, 32))], steps=2, device="cpu")


def _edge_crop(mask: np.ndarray, size: int = 32) -> tuple[int, int]:
    """A window where the brain mask covers between 35% and 65%: both sides are present."""
    for y in range(0, mask.shape[0] - size + 1, 4):
        for x in range(0, mask.shape[1] - size + 1, 4):
            frac = mask[y : y + size, x : x + size].mean()
            if 0.35 <= frac <= 0.65:
                return y, x
    raise AssertionError("no edge window found")


def test_masks_are_honoured(mask_model, mr_heldout_slices, tmp_path):
    heldout = mr_heldout_slices[0]
    full = otsu_mask(heldout)
    y, x = _edge_crop(full)
    mask = full[y : y + 32, x : x + 32]
    masks = [mask, mask[:, ::-1].copy(), mask[::-1].copy()]  # the real mask and two mirrored ones
    result = generate(mask_model, masks=masks, seed=0, steps=10, device="cpu")
    assert len(result.scans) == 3 and len(result.masks) == 3
    for m, scan, given in zip(masks, result.scans, result.masks):
        assert np.array_equal(given.array, m)
        inside, outside = scan.array[m > 0].mean(), scan.array[m == 0].mean()
        # the brain is much brighter than the background in every training pair
        assert inside > outside + 0.2 * (mask_model.normaliser.high - mask_model.normaliser.low), (inside, outside)
    # data set folder: the mask is written next to each sample and named in the manifest
    mdir = tmp_path / "masks"
    mdir.mkdir()
    for k, m in enumerate(masks[:2]):
        save_scan(Scan(m, (2.0, 2.0), affine_from_spacing((2.0, 2.0)), "MR"), mdir / f"m{k}.nii.gz")
    out = generate_dataset(mask_model, tmp_path / "pairs", None, masks_dir=mdir, steps=3, device="cpu")
    assert out.complete
    rows = manifest(tmp_path / "pairs")
    assert [r["condition"] for r in rows] == ["mask:m0.nii.gz", "mask:m1.nii.gz"]
    for k, r in enumerate(rows):
        back = load_scan(tmp_path / "pairs" / "masks" / r["file"])
        assert np.array_equal(back.array, masks[k])
    with pytest.raises(MedidiffError, match="outside this model's labels"):
        generate(mask_model, masks=[mask * 3], steps=2, device="cpu")


# -- memorisation and data card -----------------------------------------------------------------------------
def test_memorisation_flags_a_planted_copy_only(tiny_mr_model, mr_train_scan, mr_heldout_slices):
    genuine = generate(tiny_mr_model, 6, seed=0, steps=10, device="cpu").scans
    planted = mr_train_scan.array[7][40:72, 50:82] * 1.1 + 3.0  # a training crop, rescaled
    samples = [s.array for s in genuine] + [planted]
    q = evaluate_generated(samples, list(mr_heldout_slices), [mr_train_scan])  # the default rule
    assert q.rule == "structure-ncc" and q.flagged == [6]
    assert q.neighbours[6].score > 0.999 and q.neighbours[6].training == 7 and q.neighbours[6].position == (40, 50)
    assert max(nb.score for nb in q.neighbours[:6]) < q.threshold
    # fidelity and diversity are real numbers on sensible scales
    assert np.isfinite(q.kid) and 0 <= q.histogram_js <= 1
    assert 0 < q.diversity_samples < 1 and 0 < q.diversity_real < 1


def test_data_card_has_counts_command_and_template_sections(class_model, mr_train_scan, mr_heldout_slices, tmp_path):
    out = tmp_path / "cards"
    result = generate_dataset(class_model, out, 4, steps=3, device="cpu", command="medidiff generate M --n 4 --out cards",
                              real=list(mr_heldout_slices), training=[mr_train_scan])
    card = (out / "DATA_CARD.md").read_text()
    assert "| class:lower | 2 |" in card and "| class:upper | 2 |" in card
    assert "medidiff generate M --n 4 --out cards" in card
    assert f"`{class_model.path.parent.name}/model`" in card and "slice_00.dcm" in card  # model and its training sources
    template = Path(__file__).resolve().parents[2] / "data_cards" / "TEMPLATE.md"
    headings = [line for line in template.read_text().splitlines() if line.startswith("## ")] if template.is_file() else [
        "## Description", "## Provenance", "## How medidiff uses it", "## Limitations"]
    for heading in headings:
        assert heading in card
    assert card.startswith("---\nname: ") and "licence:" in card and "used_by:" in card
    assert "## Quality" in card and "KID" in card and result.quality is not None
    assert (out / "quality.png").is_file()


# -- batched CPU generation (issue 18) -------------------------------------------------------------------
def test_batched_equals_per_sample_within_tolerance_and_bit_identical_when_asked(tiny_mr_model):
    per_sample = generate(tiny_mr_model, 4, seed=1, steps=20, device="cpu", batch_size=1, bit_identical=True)
    exact = generate(tiny_mr_model, 4, seed=1, steps=20, device="cpu", batch_size=4, bit_identical=True)
    batched = generate(tiny_mr_model, 4, seed=1, steps=20, device="cpu", batch_size=4)  # the default
    span = tiny_mr_model.normaliser.high - tiny_mr_model.normaliser.low
    for a, b, c in zip(per_sample.scans, exact.scans, batched.scans):
        assert np.array_equal(a.array, b.array)
        # stated tolerance: 1e-3 of the training intensity range (measured ~1e-5 in network units)
        assert np.abs(a.array - c.array).max() <= 1e-3 * span
    assert per_sample.seeds == batched.seeds


def test_progress_comes_before_the_first_network_call(tiny_mr_model, tmp_path):
    import torch

    for make in (lambda: generate_steps(tiny_mr_model, 1, steps=2, device="cpu"),
                 lambda: generate_dataset_steps(tiny_mr_model, tmp_path / "one", 1, steps=2, device="cpu")):
        calls: list[str] = []
        hook = tiny_mr_model.network.register_forward_pre_hook(lambda m, a: calls.append("forward"))
        try:
            gen = make()
            first = next(gen)
            assert first.step == 0 and first.total == 2 and calls == []
            run_to_end(gen)
            assert calls  # the network did run afterwards
        finally:
            hook.remove()
    assert torch.is_tensor(torch.zeros(1))


def test_two_concurrent_generate_runs_into_one_folder(tiny_mr_model, tmp_path):
    """Two real processes, different seeds, one folder: the second is refused in one line."""
    import subprocess
    import sys
    import time

    out = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "medidiff", "generate", str(tiny_mr_model.path), "--n", "400", "--steps", "50",
           "--out", str(out), "--device", "cpu"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not any(out.glob(".medidiff-lock*")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.05)
        second = subprocess.run([*cmd[:-4], "--seed", "1", "--n", "2", "--steps", "2", "--out", str(out), "--device", "cpu"],
                                capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert "another medidiff generate" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert first.poll() is None
    finally:
        first.kill()
        first.communicate()
    from medidiff.core.sampling import sample_seed

    rows = [r for p in out.glob("manifest.part-*.csv") for r in csv.DictReader(open(p))]
    theirs = {str(sample_seed(1, j)) for j in range(2)}
    assert not theirs & {r["seed"] for r in rows} and not (out / "manifest.csv").exists()  # nothing of the second run


# -- provenance and privacy (issues 16, 17) ---------------------------------------------------------------
def _paths_in(text: str) -> list[str]:
    import re

    return re.findall(r"(?<![\w.])(/(?:[\w.+-]+/)+[\w.+-]*)", text)


def test_no_card_or_manifest_names_a_path_that_does_not_exist(mr_train_scan, tmp_path):
    from medidiff.tasks.train import train

    data = tmp_path / "patient-4711"  # a folder name that must not leak
    save_scan(mr_train_scan, data / "scan.nii.gz")
    run = tmp_path / "run"
    train([data], run, steps=2, image_size=32, batch_size=2, device="cpu", data_card="my-study card v1",
          licence="CC-BY 4.0", command="medidiff train DATA --out run")
    written = [run / "model" / "config.json", run / "model" / "MODEL_CARD.md"]
    for model, out in ((run / "model", tmp_path / "synth"), ("mr2d", tmp_path / "synth_builtin")):
        generate_dataset(model, out, 2, steps=2, device="cpu", command="medidiff generate M --n 2 --out synth")
        written += [out / "DATA_CARD.md", out / "manifest.csv"]
    for path in written:
        text = path.read_text()
        assert "patient-4711" not in text and str(tmp_path) not in text  # files relative to the data folder
        missing = [p for p in _paths_in(text) if not Path(p).exists()]
        assert not missing, f"{path} names {missing}"
        assert "/tmp/builtin-data" not in text
    card = (tmp_path / "synth" / "DATA_CARD.md").read_text()
    assert "CC-BY 4.0" in card and "my-study card v1" in card and "scan.nii.gz" in card
    builtin = (tmp_path / "synth_builtin" / "DATA_CARD.md").read_text()
    assert "MIT" in builtin and "nibabel-test-data" in builtin and "not recorded" not in builtin
    assert "built-in model `mr2d`" in builtin


def test_quality_sheet_in_a_data_set_shows_no_real_pixels(tiny_mr_model, mr_heldout_slices, tmp_path):
    from matplotlib.image import imread

    samples = generate(tiny_mr_model, 3, steps=3, device="cpu").scans
    real_a = list(mr_heldout_slices)
    real_b = [np.flipud(s) * 0.5 for s in mr_heldout_slices]  # other real pixels
    sheets = {}
    for name, real, show in (("a", real_a, False), ("b", real_b, False), ("a_real", real_a, True), ("b_real", real_b, True)):
        evaluate_generated([s.array for s in samples], real, report=tmp_path / f"{name}.png", real_pixels=show)
        sheets[name] = imread(tmp_path / f"{name}.png")
    # without real pixels the sheet does not depend on the real images at all; with them it does
    assert np.array_equal(sheets["a"], sheets["b"])
    assert sheets["a_real"].shape != sheets["b_real"].shape or not np.array_equal(sheets["a_real"], sheets["b_real"])


def test_batched_resume_is_bit_identical(tiny_mr_model, tmp_path):
    # the CPU default is batched; batches lie on a fixed grid, so a resumed run recomputes exactly
    # the batches of an uninterrupted one and its files match byte for byte (sha256 in the manifest)
    batched = dict(steps=3, device="cpu", batch_size=2)
    ref = tmp_path / "ref"
    generate_dataset(tiny_mr_model, ref, 5, **batched)
    out = tmp_path / "out"
    gen = generate_dataset_steps(tiny_mr_model, out, 5, **batched)
    for event in gen:
        if len(list(out.glob("sample_*.nii.gz"))) >= 3:  # batch 0 done, batch 1 half written
            break
    gen.close()
    (out / "sample_00000.nii.gz").unlink()  # batch 0 now half missing too
    result = generate_dataset(tiny_mr_model, out, 5, **batched)
    assert result.complete
    assert manifest(out) == manifest(ref)


def test_evaluate_sheet_draws_samples_and_real_on_one_intensity_window(mr_heldout_slices, tmp_path):
    # a sample set twice as bright as the real slices must look brighter beside them, not the same
    from matplotlib.image import imread

    real = list(mr_heldout_slices)
    sheets = {}
    for name, gain in (("same", 1.0), ("bright", 2.0)):
        samples = [s * gain for s in mr_heldout_slices[:3]]
        evaluate_generated(samples, real, report=tmp_path / f"{name}.png", real_pixels=True)
        sheets[name] = imread(tmp_path / f"{name}.png")[..., :3].mean(axis=2)
    height = sheets["same"].shape[0]
    top = slice(0, height // 2)  # the samples' row
    # (a window per image would draw both rows identically)
    assert sheets["bright"][top].mean() > sheets["same"][top].mean() + 0.01


def test_denoising_only_models_warn_when_asked_to_generate(mr_train_scan):
    """A model trained with contrast augmentation (or log-normal noise levels) records it, and
    generating from it warns in one line; the same run without either stays silent."""
    import warnings

    from medidiff.tasks.generate import DenoisingPriorWarning
    from medidiff.tasks.train import train

    for contrast, levels, expected in ((0.2, "uniform", "--contrast-augment 0.2"), (1.0, "log-normal", "log-normal"),
                                        (1.0, "uniform", None)):
        result = train([mr_train_scan], None, steps=1, image_size=16, batch_size=2, preset="tiny",
                       device="cpu", seed=0, contrast=contrast, timestep_sampling=levels)
        assert result.model.config.training["contrast_augment"] == contrast
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generate(result.model, 1, steps=1, device="cpu")
        lines = [str(w.message) for w in caught if issubclass(w.category, DenoisingPriorWarning)]
        if expected:
            assert len(lines) == 1 and expected in lines[0] and "\n" not in lines[0]
        else:
            assert lines == []
