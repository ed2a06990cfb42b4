"""Latent diffusion: autoencoder round trip, latent model save/load (scale factor), reproducible
generation at the training field, windowed decoding, old pixel folders, one-line errors, CLI;
latent models through the shared data-set path (manifest, data card, memorisation, resume,
shards) and whole-field coherence (no window seam at 2x the training field).

A tiny autoencoder (29 k parameters) is trained here for 150 steps on 64x64 crops of the real MR
training slices (nibabel's example4d, z < 16), and a tiny latent prior for 60 steps on the
latents of the whole 96x128 slices (24x32 latents). Both are module-scoped (~30 s on one thread).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medidiff.core.autoencoder import Autoencoder
from medidiff.core.latent_model import LatentModel, is_latent_model, seam_ratio, window_borders
from medidiff.core.metrics import psnr
from medidiff.core.model import DiffusionModel
from medidiff.errors import MedidiffError, ModelError, OutputError
from medidiff.tasks.dataset import generate_dataset, generate_dataset_steps
from medidiff.tasks.latent import (encode_training_data, generate_latent, train_autoencoder, train_autoencoder_steps,
                                   train_latent, train_latent_steps)
from tests.cli_runner import call

# measured: 24.4 dB mean over the held-out slices after 150 steps (untrained: ~6 dB); the floor
# leaves room for other CPUs' rounding
PSNR_FLOOR_DB = 21.0
BUILTIN_MR2D = Path(__file__).resolve().parents[2] / "medidiff" / "builtin" / "mr2d"


@pytest.fixture(scope="module")
def tiny_ae(mr_train_scan, tmp_path_factory):
    out = tmp_path_factory.mktemp("latent") / "ae"
    result = train_autoencoder([mr_train_scan], out, steps=150, batch_size=8, image_size=64, lr=2e-3, seed=0, device="cpu")
    return result


@pytest.fixture(scope="module")
def tiny_latent(mr_train_scan, tiny_ae, tmp_path_factory):
    run = tmp_path_factory.mktemp("latent") / "run"
    # epsilon, as when the seam bounds below were measured on it (the latent default is now v-prediction)
    return train_latent([mr_train_scan], tiny_ae.out, run, steps=60, batch_size=8, lr=2e-3, prediction="epsilon",
                        seed=0, device="cpu", checkpoint_every=0)


def _roundtrip_psnr(ae: Autoencoder, slices: list[np.ndarray]) -> float:
    values = []
    for s in slices:
        norm = ae.normaliser.for_scan(s)
        x = torch.from_numpy(norm.forward(s))[None, None]
        rec = ae.decode(ae.encode(x)).cpu().numpy()[0, 0]
        values.append(psnr(norm.forward(s), rec))
    return float(np.mean(values))


def test_autoencoder_round_trips_real_mr_slices(tiny_ae, mr_heldout_slices, mr_train_scan):
    ae = Autoencoder.load(tiny_ae.out)
    assert ae.factor == 4 and ae.config.latent_channels == 1
    # held-out whole slices (96x128, never seen; trained on 64x64 crops) come back above the floor
    trained = _roundtrip_psnr(ae, mr_heldout_slices)
    assert trained > PSNR_FLOOR_DB, trained
    untrained = Autoencoder.create(2, 64, normaliser=ae.normaliser, seed=0)
    assert trained > _roundtrip_psnr(untrained, mr_heldout_slices) + 10
    # 4x per axis: a 96x128 slice is a 24x32 one-channel latent
    z = ae.encode(torch.zeros(1, 1, 96, 128))
    assert tuple(z.shape) == (1, 1, 24, 32)
    # loading gives the very weights that were trained
    assert all(torch.equal(a, b) for a, b in zip(ae.network.state_dict().values(),
                                                 tiny_ae.autoencoder.network.state_dict().values()))


def test_autoencoder_3d_compresses_4x_per_axis():
    ae = Autoencoder.create(3, (16, 16, 16), seed=0)
    z = ae.encode(torch.randn(1, 1, 16, 32, 16))
    assert tuple(z.shape) == (1, 1, 4, 8, 4)
    assert tuple(ae.decode(z).shape) == (1, 1, 16, 32, 16)


def test_latent_model_saves_and_reloads_scale_factor(tiny_latent, mr_train_scan):
    folder = tiny_latent.run_dir / "model"
    assert is_latent_model(folder) and (folder / "autoencoder" / "weights.safetensors").is_file()
    record = json.loads((folder / "latent.json").read_text())
    loaded = LatentModel.load(folder)
    assert loaded.scale_factor == pytest.approx(tiny_latent.model.scale_factor, rel=1e-12)
    assert record["scale_factor"] == pytest.approx(loaded.scale_factor, rel=1e-12)
    assert loaded.field_size == (96, 128) and tuple(loaded.prior.config.image_size) == (24, 32)
    assert loaded.x0_limit == pytest.approx(tiny_latent.model.x0_limit) and 2.0 < loaded.x0_limit < 20.0
    # the stored factor (the prior's normaliser) is what maps the training latents to unit variance
    td, sf, shift = encode_training_data(loaded.autoencoder, [mr_train_scan], multiple=4)
    assert sf == pytest.approx(loaded.scale_factor, rel=1e-5)
    z = np.stack([loaded.prior.normaliser.inverse(u) for u in td.images])
    u = loaded.prior.normaliser.forward(z)
    assert abs(float(u.std()) - 1.0) < 1e-3 and abs(float(u.mean())) < 1e-3
    assert loaded.x0_limit == pytest.approx(float(np.abs(np.stack(td.images)).max()), rel=1e-5)
    # the prior folder is an ordinary DiffusionModel folder
    assert DiffusionModel.load(folder).config.spatial_dims == 2


def test_generate_same_seed_same_bytes_at_training_field(tiny_latent):
    folder = tiny_latent.run_dir / "model"
    a = generate_latent(tiny_latent.model, 2, seed=3, steps=4, device="cpu")
    b = generate_latent(LatentModel.load(folder), 2, seed=3, steps=4, device="cpu")
    c = generate_latent(LatentModel.load(folder), 2, seed=4, steps=4, device="cpu")
    assert [s.shape for s in a.scans] == [(96, 128), (96, 128)]
    assert [x.array.tobytes() for x in a.scans] == [x.array.tobytes() for x in b.scans]
    assert a.scans[0].array.tobytes() != c.scans[0].array.tobytes()
    assert a.scans[0].array.tobytes() != a.scans[1].array.tobytes()
    # the default clips x0 at the stored limit: turning the clip off changes the samples
    unclipped = generate_latent(tiny_latent.model, 2, seed=3, steps=4, clip_x0=None, device="cpu")
    assert any(x.array.tobytes() != y.array.tobytes() for x, y in zip(a.scans, unclipped.scans))
    s = a.scans[0]
    assert s.meta["synthetic"] and s.spacing == pytest.approx((2.0, 2.0)) and np.isfinite(s.array).all()
    # in the training scans' units (MR signal 0..~1200), not network or latent units
    assert 200 < float(np.percentile(s.array, 99)) < 3000


def test_generate_larger_than_field_decodes_in_windows(tiny_latent):
    big = generate_latent(tiny_latent.model, 1, seed=0, steps=2, image_size=(96, 192), device="cpu")
    assert big.scans[0].shape == (96, 192) and np.isfinite(big.scans[0].array).all()


def test_cancel_leaves_a_loadable_latent_model(mr_train_scan, tiny_ae, tmp_path):
    gen = train_latent_steps([mr_train_scan], tiny_ae.out, tmp_path / "run", steps=30, batch_size=4, seed=0,
                             device="cpu", checkpoint_every=0)
    for event in gen:
        if event.message.endswith("train") and event.step >= 3:
            break
    gen.close()
    model = LatentModel.load(tmp_path / "run" / "model")
    assert model.prior.config.training["steps_done"] >= 3 and model.scale_factor > 0


def test_old_pixel_space_folders_still_load():
    model = DiffusionModel.load(BUILTIN_MR2D)
    assert tuple(model.config.image_size) == (64, 64) and not is_latent_model(BUILTIN_MR2D)
    with pytest.raises(ModelError, match="pixel-space model"):
        LatentModel.load(BUILTIN_MR2D)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_bad_inputs_are_one_line_errors(tiny_latent, tiny_ae, mr_train_scan, tmp_path):
    folder = tiny_latent.run_dir / "model"
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    # a scale factor that disagrees with the prior's normaliser
    rec = json.loads((bad / "latent.json").read_text())
    (bad / "latent.json").write_text(json.dumps(dict(rec, scale_factor=rec["scale_factor"] * 2)))
    with pytest.raises(ModelError) as exc:
        LatentModel.load(bad)
    assert "disagree" in _one_line(exc)
    # autoencoder weights swapped for others
    (bad / "latent.json").write_text(json.dumps(rec))
    other = Autoencoder.create(2, 64, seed=5)
    other.save(bad / "autoencoder", overwrite=True)
    with pytest.raises(ModelError) as exc:
        LatentModel.load(bad)
    assert "not the ones" in _one_line(exc)
    # corrupted autoencoder weights
    w = bad / "autoencoder" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelError) as exc:
        Autoencoder.load(bad / "autoencoder")
    assert "sha256" in _one_line(exc)
    with pytest.raises(ModelError) as exc:
        Autoencoder.load(tmp_path / "nowhere")
    _one_line(exc)
    with pytest.raises(MedidiffError) as exc:
        run = train_autoencoder_steps([mr_train_scan], None, image_size=30)
        next(run)
    assert "multiple of 4" in _one_line(exc)
    with pytest.raises(MedidiffError) as exc:
        next(train_autoencoder_steps([mr_train_scan], None, stepz=3))
    assert "stepz" in _one_line(exc)
    with pytest.raises(OutputError):
        next(train_latent_steps([mr_train_scan], tiny_ae.out, tiny_ae.out.parent, steps=1))
    for kwargs, words in (({"n": 0}, "n must"), ({"n": 1, "image_size": (90, 128)}, "multiple of 4"),
                          ({"n": 1, "sampler": "euler"}, "euler"), ({"n": 1, "clip_x0": -1.0}, "clip_x0")):
        with pytest.raises(MedidiffError) as exc:
            generate_latent(tiny_latent.model, device="cpu", **kwargs)
        assert words in _one_line(exc)


def test_cli_generate_and_errors(tiny_latent, capsys, tmp_path):
    folder = tiny_latent.run_dir / "model"
    code, out, err = call(capsys, "latent", "generate", folder, "--n", 2, "--steps", 2, "--out", tmp_path / "synth",
                          "--device", "cpu")
    assert code == 0, err
    files = {p.name for p in (tmp_path / "synth").iterdir()}
    assert {"DATA_CARD.md", "manifest.csv", "sample_00000.nii.gz", "sample_00001.nii.gz"} <= files
    from medidiff.io import load_scan

    assert load_scan(tmp_path / "synth" / "sample_00000.nii.gz").shape == (96, 128)
    code, out, err = call(capsys, "latent", "generate", BUILTIN_MR2D, "--n", 1, "--out", tmp_path / "x")
    assert code == 2 and "pixel-space model" in err and len(err.strip().splitlines()) == 1
    code, out, err = call(capsys, "latent", "train", tmp_path / "missing", "--autoencoder", folder / "autoencoder",
                          "--out", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, out, err = call(capsys, "latent", "train-autoencoder", "--help")
    assert code == 0 and "medidiff latent train-autoencoder" in out


def test_3d_latent_model_generates_the_whole_volume_in_one_piece(mr_train_scan, tmp_path):
    # a barely trained 3D pipeline: this checks shapes, geometry and the folder, not quality
    ae = train_autoencoder([mr_train_scan], None, dims=3, image_size=(8, 16, 16), steps=2, batch_size=1, seed=0,
                           device="cpu").autoencoder
    result = train_latent([mr_train_scan], ae, tmp_path / "run3", steps=2, batch_size=2, seed=0, device="cpu",
                          checkpoint_every=0)
    model = LatentModel.load(tmp_path / "run3" / "model")
    # the whole 16x96x128 volume is one 4x24x32 latent: no windows at the training field
    assert tuple(model.prior.config.image_size) == (4, 24, 32) and model.field_size == (16, 96, 128)
    assert model.scale_factor == pytest.approx(result.model.scale_factor, rel=1e-12)
    from medidiff.tasks.latent import generate_latent_steps

    gen = generate_latent_steps(model, 1, steps=2, device="cpu")
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        scan = stop.value.scans[0]
    # the generator reports how it ran: the whole latent, 0 prior windows
    assert [e.values["latent windows"] for e in events if e.values and "latent windows" in e.values] == [0]
    assert scan.shape == (16, 96, 128) and scan.spacing == pytest.approx(mr_train_scan.spacing, rel=1e-5)
    # the reloaded folder (scale factor included) gives the same bytes as the model trained in memory
    again = generate_latent(result.model, 1, steps=2, device="cpu").scans[0]
    assert again.array.tobytes() == scan.array.tobytes()


def test_autoencoder_time_budget_stops_at_a_step_boundary(mr_train_scan, tmp_path):
    result = train_autoencoder([mr_train_scan], tmp_path / "ae", steps=50, batch_size=2, image_size=16,
                               minutes=1e-6, seed=0, device="cpu")
    assert len(result.losses) == 1
    assert Autoencoder.load(tmp_path / "ae").config.training["steps_done"] == 1


def test_pixel_space_tasks_refuse_a_latent_model_but_generate_takes_it(tiny_latent, capsys, tmp_path):
    # the prior inside a latent folder is an ordinary model folder: without the guard denoise
    # would "denoise" in latent units; `medidiff generate` goes through the latent path instead
    from medidiff.errors import ModelError
    from medidiff.io import load_scan
    from medidiff.model_store.registry import resolve_model

    folder = tiny_latent.run_dir / "model"
    with pytest.raises(ModelError, match="latent"):
        resolve_model(folder)
    code, _, err = call(capsys, "generate", folder, "--n", "2", "--steps", "2", "--out", tmp_path / "out",
                        "--device", "cpu")
    assert code == 0, err
    # decoded images in scan units at the training field, not 24x32 latents
    scan = load_scan(tmp_path / "out" / "sample_00000.nii.gz")
    assert scan.shape == (96, 128) and float(np.percentile(scan.array, 99)) > 200
    assert (tmp_path / "out" / "DATA_CARD.md").is_file()


# -- the shared data-set path and whole-field coherence ----------------------------------------
# seam_ratio measured on this tiny model at 192x256 (2x per axis; reference gradients at the
# autoencoder's period): sampled and decoded whole 0.99-1.04, decoder windows blended at overlap
# 1/2 1.03, at MONAI's default 1/4 1.58; issue 14's pixel-space window grid: 1.2-1.3
SEAM_BOUND = 1.12


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_latent_data_set_has_manifest_card_and_memorisation_check(tiny_latent, mr_train_scan, mr_heldout_slices,
                                                                 tmp_path):
    folder = tiny_latent.run_dir / "model"
    out = tmp_path / "synth"
    result = generate_dataset(folder, out, 4, steps=3, batch_size=2, device="cpu", seed=1,
                              real=mr_heldout_slices, training=[mr_train_scan])
    assert result.complete and result.written == 4
    rows = _rows(out)
    assert [r["file"] for r in rows] == [f"sample_{j:05d}.nii.gz" for j in range(4)]
    # the options column says what else decides a latent sample's pixels
    limit = LatentModel.load(folder).x0_limit
    assert rows[0]["options"] == f"latent;clip_x0={limit:.6g};size=96x128;latent_field=whole"
    card = (out / "DATA_CARD.md").read_text()
    assert "latent diffusion" in card and "96 x 128" in card and "memorised" in card
    q = result.quality
    assert q.n_training == 16 and len(q.neighbours) == 4 and all(0 < nb.score <= 1 for nb in q.neighbours)
    assert (out / "quality.png").is_file()
    # KID with its bootstrap interval, next to the real-vs-real floor and training-vs-real
    assert q.kid_low <= q.kid <= q.kid_high and q.kid_std > 0
    assert np.isfinite(q.kid_floor) and q.kid_floor_low <= q.kid_floor <= q.kid_floor_high
    assert np.isfinite(q.kid_training)
    assert "real vs real" in card and "not anatomy" in card
    # the same options resume; other options are refused like another seed
    again = generate_dataset(folder, out, 4, steps=3, batch_size=2, device="cpu", seed=1)
    assert again.written == 0 and again.skipped == 4
    with pytest.raises(OutputError, match="options"):
        generate_dataset(folder, out, 4, steps=3, batch_size=2, device="cpu", seed=1, clip_x0=None)


def test_latent_resume_after_interruption_is_byte_identical(tiny_latent, tmp_path):
    folder = tiny_latent.run_dir / "model"
    kw = dict(steps=3, batch_size=2, device="cpu", seed=2)
    ref = tmp_path / "ref"
    generate_dataset(folder, ref, 5, **kw)
    out = tmp_path / "out"
    gen = generate_dataset_steps(folder, out, 5, **kw)
    for _ in gen:
        if len(list(out.glob("sample_*.nii.gz"))) >= 3:  # batch 0 done, batch 1 half written
            break
    gen.close()
    (out / "sample_00000.nii.gz").unlink()
    result = generate_dataset(folder, out, 5, **kw)
    assert result.complete and result.written == 2
    assert _rows(out) == _rows(ref)
    for j in range(5):
        name = f"sample_{j:05d}.nii.gz"
        assert (out / name).read_bytes() == (ref / name).read_bytes()


def test_latent_shards_union_equals_one_process(tiny_latent, tmp_path):
    # torchrun sharding (RANK / WORLD_SIZE, here given explicitly) through the same path
    folder = tiny_latent.run_dir / "model"
    kw = dict(steps=2, device="cpu", bit_identical=True, seed=4)
    generate_dataset(folder, tmp_path / "one", 3, **kw)
    r1 = generate_dataset(folder, tmp_path / "two", 3, rank=1, world=2, **kw)
    assert not r1.complete and r1.written == 1
    r0 = generate_dataset(folder, tmp_path / "two", 3, rank=0, world=2, **kw)
    assert r0.complete and r0.written == 2
    assert _rows(tmp_path / "two") == _rows(tmp_path / "one")


def test_window_borders_follow_monai_grid():
    assert window_borders(48, 24, 0.25) == [18, 24, 42]
    assert window_borders(24, 24) == []
    # a stitched grid is found; a smooth ramp is not
    step = np.zeros((2, 32, 32))
    step[:, :, 16:] = 1.0
    ramp = np.tile(np.linspace(0, 1, 32), (2, 32, 1))
    assert seam_ratio(step, [[], [16]]) > 10
    assert seam_ratio(ramp, [[16], [16]]) == pytest.approx(1.0, abs=1e-9)


def test_twice_the_field_has_no_window_seam(tiny_latent):
    model = tiny_latent.model
    f = model.autoencoder.factor
    lat = tuple(model.prior.config.image_size)  # (24, 32)
    size = tuple(2 * f * s for s in lat)  # (192, 256): 2x per axis
    result = generate_latent(model, 4, seed=0, steps=6, batch_size=4, image_size=size, device="cpu")
    images = np.stack([s.array for s in result.scans])
    assert images.shape == (4, *size) and np.isfinite(images).all()
    # where windows of the training latent field would have had their edges: none show
    quarter = [[b * f for b in window_borders(2 * s, s, 0.25)] for s in lat]
    half = [[b * f for b in window_borders(2 * s, s, 0.5)] for s in lat]
    whole = seam_ratio(images, quarter, period=f)
    assert whole < SEAM_BOUND, whole
    # decoder windows (only for outputs over WHOLE_DECODE_VOXELS): the decoder's GroupNorm gives
    # each window its own brightness; blended at overlap 1/2 no seam is left, while MONAI's
    # default 1/4 leaves one this measure sees (so it would catch a grid)
    ae = model.autoencoder
    z = ae.encode(torch.from_numpy(ae.normaliser.forward(images))[:, None])
    u = torch.from_numpy(model.prior.normaliser.forward(z.numpy()))
    windowed = model.decode(u, window=lat)
    assert windowed.shape == images.shape
    assert seam_ratio(windowed, half, period=f) < SEAM_BOUND
    quarter_overlap = ae.normaliser.inverse(model._decode_windows(z, lat, overlap=0.25).numpy()[:, 0])
    assert seam_ratio(quarter_overlap, quarter, period=f) > SEAM_BOUND + 0.15


# -- the fallback: a latent too large for the device is sampled in windows ------------------------
# measured on the tiny test model at 192x256 with the cap below (prior windows of 24x32 and
# decoder windows, both half overlapping), 4 samples, seed 0: seam ratio at the window borders
# 1.10 (the same samples made whole: 0.91 there; prior windows at MONAI's 1/4 overlap: 1.25)
WINDOWED_SEAM_BOUND = 1.2


def _first_values(gen) -> dict:
    for event in gen:
        if event.values and "latent windows" in event.values:
            gen.close()
            return event.values
    raise AssertionError("no event reported the latent windows")


def test_a_latent_that_does_not_fit_is_sampled_in_windows(tiny_latent):
    import warnings

    from medidiff.core.latent_model import LatentWindowsWarning
    from medidiff.tasks.latent import generate_latent_steps

    model = tiny_latent.model
    f = model.autoencoder.factor
    lat = tuple(model.prior.config.image_size)  # (24, 32)
    size = tuple(2 * f * s for s in lat)  # (192, 256): a 48x64 latent
    cap = int(np.prod(lat))  # one call may hold one training latent, not the 2x one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = generate_latent(model, 4, seed=0, steps=6, batch_size=4, image_size=size, max_latent_voxels=cap,
                            device="cpu")
    lines = [str(w.message) for w in caught if issubclass(w.category, LatentWindowsWarning)]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "48x64 latent" in lines[0] and "192x256" in lines[0] and "windows" in lines[0] and "seams" in lines[0]
    b = generate_latent(model, 4, seed=0, steps=6, batch_size=4, image_size=size, max_latent_voxels=cap,
                        device="cpu")
    assert [x.array.tobytes() for x in a.scans] == [x.array.tobytes() for x in b.scans]
    images = np.stack([s.array for s in a.scans])
    assert images.shape == (4, *size) and np.isfinite(images).all()
    # the generator says what it did: 9 prior windows per sample here, 0 without the cap
    capped = _first_values(generate_latent_steps(model, 1, steps=2, image_size=size, max_latent_voxels=cap,
                                                 device="cpu"))
    assert capped["latent windows"] == 9
    assert _first_values(generate_latent_steps(model, 1, steps=2, image_size=size, device="cpu"))["latent windows"] == 0
    # windowed samples differ from whole ones (other path), and their seam stays bounded
    whole = generate_latent(model, 4, seed=0, steps=6, batch_size=4, image_size=size, device="cpu")
    assert whole.scans[0].array.tobytes() != a.scans[0].array.tobytes()
    half = [[b * f for b in window_borders(2 * s, s, 0.5)] for s in lat]
    ratio = seam_ratio(images, half, period=f)
    assert ratio < WINDOWED_SEAM_BOUND, ratio


def test_plan_follows_the_memory_estimate(tiny_latent):
    import warnings

    from medidiff.core.latent_model import LatentWindowsWarning, prior_peak_bytes

    model = tiny_latent.model
    big = (48, 64)
    one = prior_peak_bytes(model.prior.config.network, big)
    # the estimate grows with the latent (attention: with its square at the lowest level)
    assert one > prior_peak_bytes(model.prior.config.network, (24, 32)) * 4
    assert prior_peak_bytes(model.prior.config.network, big, batch=3) == 3 * one
    plan = model.plan(big, batch=8, available=2 * one * 3)  # half of it holds three samples
    assert plan.whole and plan.batch == 3
    assert model.plan(big, batch=8, available=10**15).batch == 8
    with pytest.warns(LatentWindowsWarning, match="GiB available"):
        plan = model.plan(big, batch=8, available=one)  # half of it: not even one
    assert not plan.whole and plan.windows == 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the training field never falls back
        assert model.plan((24, 32), batch=8, available=1).whole
    with pytest.raises(MedidiffError, match="max_latent_voxels"):
        generate_latent(model, 1, steps=1, max_latent_voxels=0, device="cpu")


def test_cli_max_latent_voxels_generates_through_windows(tiny_latent, capsys, tmp_path):
    from medidiff.io import load_scan

    folder = tiny_latent.run_dir / "model"
    code, out, err = call(capsys, "latent", "generate", folder, "--n", 1, "--steps", 2, "--image-size", "192,256",
                          "--max-latent-voxels", 768, "--out", tmp_path / "win", "--device", "cpu")
    assert code == 0, err
    assert "9 overlapping windows" in err and "seams may show" in err
    assert load_scan(tmp_path / "win" / "sample_00000.nii.gz").shape == (192, 256)


def test_manifest_records_whole_or_windowed_latent_field(tiny_latent, capsys, tmp_path):
    folder = tiny_latent.run_dir / "model"
    base = ["latent", "generate", folder, "--n", 2, "--steps", 2, "--image-size", "192,256", "--device", "cpu"]
    code, _, err = call(capsys, *base, "--max-latent-voxels", 768, "--out", tmp_path / "win")
    assert code == 0, err
    win = [r["options"].split(";") for r in _rows(tmp_path / "win")]
    assert len(win) == 2 and all("latent_field=windows" in o for o in win), win
    assert all("latent_window=24x32" in o and "overlap=0.5" in o for o in win), win
    assert "overlapping prior windows of 24x32 (overlap 0.5)" in (tmp_path / "win" / "DATA_CARD.md").read_text()
    code, _, err = call(capsys, *base, "--out", tmp_path / "whole")
    assert code == 0, err
    whole = [r["options"].split(";") for r in _rows(tmp_path / "whole")]
    assert all("latent_field=whole" in o and not any(p.startswith("latent_window") for p in o) for o in whole), whole
    card = (tmp_path / "whole" / "DATA_CARD.md").read_text()
    assert "each latent sampled whole, in one piece" in card and "prior windows" not in card
    # the two paths give other pixels: a resume that would window where the folder was whole is refused
    code, _, err = call(capsys, *base, "--max-latent-voxels", 768, "--out", tmp_path / "whole")
    assert code == 2 and "options" in err and "latent_field=whole" in err, err
    # a manifest from before latent_field was recorded still resumes (it cannot say how it was sampled)
    manifest = tmp_path / "whole" / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(";latent_field=whole", ""))
    code, out, err = call(capsys, *base, "--out", tmp_path / "whole")
    assert code == 0 and "latent_field" not in err, err


def _weights(ae: Autoencoder) -> torch.Tensor:
    return torch.cat([v.float().flatten() for v in ae.network.state_dict().values()])


def test_adversarial_term_changes_training_only_from_its_start_and_is_seeded(mr_train_scan):
    opts = dict(steps=3, batch_size=2, image_size=32, lr=2e-3, seed=0, device="cpu")
    plain = train_autoencoder([mr_train_scan], None, **opts)
    # switched on after the last step: the critic is built but never consulted -> the plain run exactly
    late = train_autoencoder([mr_train_scan], None, adversarial_weight=0.5, adversarial_start=3, **opts)
    assert torch.equal(_weights(plain.autoencoder), _weights(late.autoencoder))
    adv = [train_autoencoder([mr_train_scan], None, adversarial_weight=0.5, adversarial_start=1, **opts)
           for _ in range(2)]
    assert torch.equal(_weights(adv[0].autoencoder), _weights(adv[1].autoencoder))  # same seed, same weights
    assert not torch.equal(_weights(plain.autoencoder), _weights(adv[0].autoencoder))  # the term reaches the decoder
    record = adv[0].autoencoder.config.training
    assert (record["adversarial_weight"], record["adversarial_start"]) == (0.5, 1)


def test_adversarial_critic_learns_to_tell_reconstructions_from_real(mr_train_scan):
    # measured: the least-squares critic loss falls from ~0.8-0.95 (steps 2-11) to ~0.55 (steps 31-40)
    events = list(train_autoencoder_steps([mr_train_scan], None, steps=40, batch_size=4, image_size=32, lr=2e-3,
                                          seed=0, device="cpu", adversarial_weight=0.1))
    disc = [e.values["disc"] for e in events if e.values and "disc" in e.values]
    assert len(disc) == 40
    assert np.mean(disc[-10:]) < 0.85 * np.mean(disc[1:11])


@pytest.mark.parametrize("kwargs, words", [({"adversarial_weight": -1.0}, "adversarial_weight"),
                                           ({"adversarial_start": -2}, "adversarial_start")])
def test_bad_adversarial_settings_are_one_line_errors(mr_train_scan, kwargs, words):
    with pytest.raises(MedidiffError) as exc:
        next(train_autoencoder_steps([mr_train_scan], None, **kwargs))
    assert words in _one_line(exc)


def test_cosine_schedule_decays_the_autoencoder_learning_rate(mr_train_scan):
    opts = dict(steps=40, batch_size=2, image_size=32, lr=2e-3, seed=0, device="cpu")
    events = list(train_autoencoder_steps([mr_train_scan], None, lr_schedule="cosine", **opts))
    rates = [e.values["lr"] for e in events if e.values and "lr" in e.values]
    assert len(rates) == 40
    assert rates[0] < rates[2] <= 2e-3  # warm-up (2 steps at 40) ...
    assert rates[-1] == pytest.approx(0.05 * 2e-3, rel=0.05)  # ... then decay to 5 % of the peak
    assert all(a >= b for a, b in zip(rates[2:], rates[3:]))
    constant = [e.values["lr"] for e in train_autoencoder_steps([mr_train_scan], None, **opts) if e.values and "lr" in e.values]
    assert set(constant) == {2e-3}
    cosine = train_autoencoder([mr_train_scan], None, lr_schedule="cosine", **opts).autoencoder
    assert cosine.config.training["lr_schedule"] == "cosine"
    with pytest.raises(MedidiffError) as exc:
        next(train_autoencoder_steps([mr_train_scan], None, lr_schedule="step"))
    assert "lr_schedule" in _one_line(exc) and "cosine" in _one_line(exc)


def test_latent_prior_defaults_to_v_prediction_and_a_resume_keeps_its_settings(tiny_ae, mr_train_scan, tmp_path):
    from medidiff.tasks.latent import LATENT_PRIOR_DEFAULTS, prior_config

    cfg = prior_config(None, {}, None, False)
    assert (cfg.prediction, cfg.lr) == ("v_prediction", 2e-3) == (LATENT_PRIOR_DEFAULTS["prediction"],
                                                                  LATENT_PRIOR_DEFAULTS["lr"])
    assert prior_config(None, {"schedule": "rflow"}, None, False).prediction is None  # rflow's own
    assert prior_config(None, {"prediction": "epsilon", "lr": 1e-3}, None, False).prediction == "epsilon"
    # a run begun with epsilon (as before the defaults changed) resumes as epsilon, not as a mismatch
    run = tmp_path / "run"
    gen = train_latent_steps([mr_train_scan], tiny_ae.out, run, steps=6, batch_size=2, seed=0, device="cpu",
                             prediction="epsilon", lr=1e-3, checkpoint_every=2)
    for event in gen:
        if event.message.endswith("train") and event.step >= 3:
            break
    gen.close()
    resumed = train_latent([mr_train_scan], tiny_ae.out, run, batch_size=2, seed=0, device="cpu", resume=True,
                           checkpoint_every=2)
    assert resumed.model.prior.config.schedule["prediction"] == "epsilon"
    fresh = train_latent([mr_train_scan], tiny_ae.out, None, steps=2, batch_size=2, seed=0, device="cpu")
    assert fresh.model.prior.config.schedule["prediction"] == "v_prediction"
