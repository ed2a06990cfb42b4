"""Samplers: per-sample seeds, cancel, conditioning, rflow/3D models, sliding windows without seams.

Models are the session's ``tiny_mr_model`` (2D DDPM on real MR slices) or tiny models trained
here for a few steps on the same real data: enough to exercise every path, not to look good.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medidiff.core.model import ConditioningError, DiffusionModel
from medidiff.core.progress import run_to_end
from medidiff.core.sampling import generate_batch, invert, predict, sample, sample_seed
from medidiff.tasks.train import train

# Batched CPU convolutions round differently from single-image ones (the kernels pick other
# blockings by batch size), so "the same sample" means equal to float32 rounding, not bit for bit.
BATCH_ATOL = 1e-4


def _fresh(model: DiffusionModel) -> DiffusionModel:
    """A private copy of a saved model, so tests may wrap its network."""
    return DiffusionModel.load(model.path)


def _generate(model, seeds, **kw) -> torch.Tensor:
    return run_to_end(generate_batch(model, seeds, **kw))


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m", "ddpm"])
def test_a_sample_does_not_depend_on_its_batch(tiny_mr_model, sampler):
    seeds = [sample_seed(7, i) for i in range(3)]
    batch = _generate(tiny_mr_model, seeds, sampler=sampler, steps=6)
    alone = torch.cat([_generate(tiny_mr_model, [s], sampler=sampler, steps=6) for s in seeds])
    torch.testing.assert_close(batch, alone, atol=BATCH_ATOL, rtol=0)
    # and the seeds really give different images (the tolerance above is far below that)
    assert (batch[0] - batch[1]).abs().mean() > 0.05


def test_ddpm_is_stochastic_but_seeded(tiny_mr_model):
    a = _generate(tiny_mr_model, [1], sampler="ddpm", steps=6)
    b = _generate(tiny_mr_model, [1], sampler="ddpm", steps=6)
    ddim = _generate(tiny_mr_model, [1], sampler="ddim", steps=6)
    assert torch.equal(a, b)
    assert (a - ddim).abs().mean() > 1e-3  # the ancestral noise changed the path


def test_closing_a_sampler_stops_the_network_calls(tiny_mr_model):
    model = _fresh(tiny_mr_model)
    calls = []
    forward = model.network.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    model.network.forward = counting
    gen = generate_batch(model, [0, 1], sampler="dpm++2m", steps=20)
    for k, event in enumerate(gen, start=1):
        assert event.total == 20
        if k == 3:
            break
    gen.close()
    assert len(calls) == 3
    with pytest.raises(StopIteration):
        next(gen)
    assert len(calls) == 3


def test_dpm_solver_converges_faster_than_ddim(tiny_mr_model):
    """The second-order solver at 10 steps is closer to the ODE solution (DDIM, 200 steps)."""
    seeds = [11, 12]
    ref = _generate(tiny_mr_model, seeds, sampler="ddim", steps=200, clip_x0=None)
    err_ddim = (_generate(tiny_mr_model, seeds, sampler="ddim", steps=10, clip_x0=None) - ref).abs().mean()
    err_dpm = (_generate(tiny_mr_model, seeds, sampler="dpm++2m", steps=10, clip_x0=None) - ref).abs().mean()
    assert err_dpm < 0.7 * err_ddim


def test_ddim_inversion_walks_back_to_the_image(tiny_mr_model, mr_heldout_slices):
    model = tiny_mr_model
    x0 = torch.from_numpy(model.normaliser.forward(mr_heldout_slices[0][32:64, 48:80]))[None, None]
    x_t = run_to_end(invert(model, x0, t_end=300, steps=20))
    assert (x_t - x0).abs().mean() > 0.05  # it really moved away
    back = run_to_end(sample(model, x_t, sampler="ddim", steps=20, t_start=300))
    assert (back - x0).abs().mean() < 0.03


def test_sampler_must_fit_the_schedule(tiny_mr_model):
    with pytest.raises(ValueError, match="does not fit"):
        _generate(tiny_mr_model, [0], sampler="euler", steps=2)


# -- conditioning ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def class_model(mr_train_scan):
    # class 0: the scan, class 1: the scan flipped upside down
    flipped = mr_train_scan.with_array(mr_train_scan.array[:, ::-1].copy())
    return train([mr_train_scan, flipped], None, labels=[0, 1], class_names=["upright", "flipped"], image_size=32,
                 steps=30, batch_size=4, lr=2e-3, device="cpu", seed=0).model


def test_class_label_changes_the_sample(class_model):
    assert class_model.config.num_classes == 2 and class_model.config.class_names == ["upright", "flipped"]
    a = _generate(class_model, [5], steps=5, class_labels=torch.tensor([0]))
    b = _generate(class_model, [5], steps=5, class_labels=torch.tensor([1]))
    a2 = _generate(class_model, [5], steps=5, class_labels=torch.tensor([0]))
    assert torch.equal(a, a2)
    assert (a - b).abs().mean() > 1e-3
    guided = _generate(class_model, [5], steps=5, class_labels=torch.tensor([0]), guidance=3.0)
    assert (guided - a).abs().mean() > 1e-3


def test_class_labels_on_an_unconditioned_model_are_refused(tiny_mr_model):
    with pytest.raises(ConditioningError, match="not trained with class labels"):
        _generate(tiny_mr_model, [0], steps=2, class_labels=torch.tensor([0]))
    with pytest.raises(ConditioningError, match="not trained with mask"):
        _generate(tiny_mr_model, [0], steps=2, masks=torch.zeros(1, 1, 32, 32))


@pytest.fixture(scope="module")
def mask_model(mr_train_scan):
    # label map from the real image: 1 = brighter half of the brain signal
    arr = mr_train_scan.array
    mask = mr_train_scan.with_array((arr > np.percentile(arr, 70)).astype(np.float32))
    return train([mr_train_scan], None, masks=[mask], image_size=32, steps=30, batch_size=4, lr=2e-3,
                 device="cpu", seed=0).model


def test_mask_changes_the_sample(mask_model):
    assert mask_model.config.mask_classes == 1
    empty = torch.zeros(1, 1, 32, 32)
    disc = torch.zeros(1, 1, 32, 32)
    disc[..., 8:24, 8:24] = 1
    a = _generate(mask_model, [3], steps=5, masks=empty)
    b = _generate(mask_model, [3], steps=5, masks=disc)
    assert (a - b).abs().mean() > 1e-3
    with pytest.raises(ConditioningError, match="class labels"):
        _generate(mask_model, [3], steps=2, class_labels=torch.tensor([0]))


# -- other schedules and dimensions ----------------------------------------------------------------------
def test_rflow_model_trains_and_samples_with_euler(mr_train_scan):
    result = train([mr_train_scan], None, schedule="rflow", image_size=32, steps=20, batch_size=4, lr=2e-3, device="cpu")
    model = result.model
    assert model.schedule.kind == "rflow" and model.schedule.config.prediction == "flow"
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    x = _generate(model, [0, 1], sampler="euler", steps=5)
    assert x.shape == (2, 1, 32, 32) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="does not fit"):
        _generate(model, [0], sampler="ddim", steps=2)


def test_3d_model_trains_on_patches_and_samples_a_volume(mr_volume):
    result = train([mr_volume], None, dims=3, image_size=16, steps=4, batch_size=2, device="cpu")
    model = result.model
    assert model.config.spatial_dims == 3 and model.config.image_size == (16, 16, 16)
    assert model.config.spacing == pytest.approx(mr_volume.spacing)
    x = _generate(model, [0], steps=3)
    assert x.shape == (1, 1, 16, 16, 16) and torch.isfinite(x).all()


# -- sliding window ----------------------------------------------------------------------------------------
def _window_edges(n: int, roi: int, overlap: float) -> list[int]:
    """Where MONAI's sliding windows start and end along an axis of length ``n``."""
    step = int(roi * (1 - overlap))
    starts = list(range(0, n - roi + 1, step))
    if starts[-1] != n - roi:
        starts.append(n - roi)
    return sorted({e for s in starts for e in (s, s + roi) if 4 < e < n - 4})


def _seam_ratio(err: np.ndarray, roi: int, overlap: float) -> float:
    """Largest step of ``err`` across a window edge / mean step elsewhere (image borders left out)."""
    ratios = []
    for axis in (0, 1):
        n = err.shape[axis]
        steps = np.abs(np.diff(err, axis=axis)).mean(axis=1 - axis)  # steps[i]: between i and i+1
        at_edges = [e - 1 for e in _window_edges(n, roi, overlap)]
        elsewhere = [i for i in range(4, n - 5) if i not in at_edges]
        ratios.append(steps[at_edges].max() / steps[elsewhere].mean())
    return float(max(ratios))


def test_sliding_window_has_no_seams(tiny_mr_model):
    """On a smooth image 3x4 times the training size, the error does not jump at window edges.

    The same windows averaged with constant weights (MONAI ``mode="constant"``) show seams
    under this measure, so it is sensitive to them.
    """
    from monai.inferers import sliding_window_inference

    model = tiny_mr_model
    yy, xx = np.mgrid[0:96, 0:128]
    clean = 0.6 * np.exp(-((yy - 45) ** 2 + (xx - 70) ** 2) / (2 * 30.0**2)) - 0.3 + 0.002 * xx
    clean_t = torch.tensor(clean, dtype=torch.float32)[None, None]
    t = 100
    alpha, _ = model.schedule.alpha_sigma(t)
    x_t = alpha * clean_t
    x0, _ = predict(model, x_t, t)
    ours = _seam_ratio((x0 - clean_t)[0, 0].numpy(), 32, 0.25)

    def net(w):
        return model.network(w, timesteps=torch.full((w.shape[0],), float(t)))

    with torch.inference_mode():
        out = sliding_window_inference(x_t, (32, 32), 4, net, overlap=0.25, mode="constant")
    x0_const, _ = model.schedule.to_x0_eps(out, x_t, t)
    naive = _seam_ratio((x0_const - clean_t)[0, 0].numpy(), 32, 0.25)
    assert ours < 5.0
    assert naive > 2 * ours


def test_window_batch_grows_with_free_memory_and_is_fixed_on_cpu():
    from medidiff.core.model import DiffusionModel
    from medidiff.core.sampling import window_batch_size

    m = DiffusionModel.create(2, 32, preset="tiny")
    assert window_batch_size(m, torch.device("cpu")) == 8
    small = window_batch_size(m, torch.device("cuda"), free_bytes=64 * 2**20)
    large = window_batch_size(m, torch.device("cuda"), free_bytes=8 * 2**30)
    assert 1 <= small < large <= 64
    assert window_batch_size(m, torch.device("cuda"), free_bytes=0) == 1


def _monai_gaussian(model, x_t, t, sw, labels=None):
    """MONAI's own gaussian-blended sliding window, one batch element at a time (the old path)."""
    from monai.inferers import sliding_window_inference

    outs = []
    with torch.inference_mode():
        for b in range(x_t.shape[0]):
            lab = None if labels is None else labels[b : b + 1]

            def net(w, lab=lab):
                return model.network(w, timesteps=torch.full((w.shape[0],), float(t)),
                                     class_labels=None if lab is None else lab.expand(w.shape[0]))

            outs.append(sliding_window_inference(x_t[b : b + 1], model.config.image_size, sw, net, overlap=0.25,
                                                 mode="gaussian", padding_mode="replicate"))
    return torch.cat(outs)


@pytest.mark.parametrize("shape", [(2, 1, 70, 45), (1, 1, 20, 90)])  # a short axis is padded, as MONAI does
def test_window_steps_equal_monai_and_report_every_window_batch(tiny_mr_model, shape):
    from medidiff.core.sampling import network_output, network_output_steps, predict_calls

    model = tiny_mr_model
    x_t = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    events = []
    ours = run_to_end(network_output_steps(model, x_t, 150.0, sw_batch_size=3), callback=events.append)
    expected = _monai_gaussian(model, x_t, 150.0, 3)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(network_output(model, x_t, 150.0, sw_batch_size=5), expected, atol=1e-5, rtol=1e-5)
    calls = predict_calls(model, shape[0], shape[2:], 3)
    counted = []
    hook = model.network.register_forward_pre_hook(lambda *_: counted.append(1))
    try:
        run_to_end(network_output_steps(model, x_t, 150.0, sw_batch_size=3))
    finally:
        hook.remove()
    assert len(counted) == calls >= 2  # all windows of the batch, 3 per call
    # one event between consecutive calls: the last call's end is the return
    assert [(e.step, e.total) for e in events] == [(k, calls) for k in range(1, calls)]


def test_window_steps_stop_within_one_window_batch(tiny_mr_model):
    from medidiff.core.sampling import network_output_steps

    counted = []
    hook = tiny_mr_model.network.register_forward_pre_hook(lambda *_: counted.append(1))
    try:
        gen = network_output_steps(tiny_mr_model, torch.zeros(1, 1, 128, 128), 100.0, sw_batch_size=4)
        first = next(gen)
        gen.close()
    finally:
        hook.remove()
    assert first.step == 1 and first.total == 7  # 5 x 5 windows, 4 per call
    assert len(counted) == 1  # nothing ran after the close


def test_a_per_call_sampler_counts_every_window_batch(tiny_mr_model):
    from medidiff.core.sampling import predict_calls

    x_t = torch.randn(1, 1, 40, 40, generator=torch.Generator().manual_seed(1))
    events = []
    per_call = run_to_end(sample(tiny_mr_model, x_t, sampler="ddim", steps=3, t_start=200, sw_batch_size=2,
                                 per_call=True), callback=events.append)
    plain = run_to_end(sample(tiny_mr_model, x_t, sampler="ddim", steps=3, t_start=200, sw_batch_size=2))
    torch.testing.assert_close(per_call, plain)
    calls = 3 * predict_calls(tiny_mr_model, 1, (40, 40), 2)
    assert calls == 3 * 2  # 4 windows of 32, two per call
    assert [e.step for e in events] == list(range(1, calls)) and {e.total for e in events} == {calls}
