"""The memorisation check (rule ``structure-ncc``) on real MR slices: copies flagged, look-alikes not.

nibabel's example4d: training slices z < 16 are searched; held-out slices z >= 18 and z = 16
(2.2 mm from training slice 15) are real images of the same brain that are not copies.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from medidiff.core.metrics.memorisation import DEFAULT_RULE, RULE
from medidiff.errors import MedidiffError
from medidiff.tasks.quality import evaluate_generated, nearest_training


@pytest.fixture(scope="module")
def training(mr_train_scan) -> list[np.ndarray]:
    return [s.astype(np.float64) for s in mr_train_scan.array]


def _span(training: list[np.ndarray]) -> float:
    lo, hi = np.percentile(np.stack(training), [0.5, 99.5])
    return float(hi - lo)


def test_copies_are_flagged_where_they_came_from(training):
    rng = np.random.default_rng(0)
    span = _span(training)
    samples = [
        training[5][:, ::-1],  # flipped
        0.7 * training[9] + 0.1 * span,  # brightness and contrast
        training[3] + rng.normal(0, 0.03 * span, training[3].shape),  # 3 % noise
        gaussian_filter(training[12], 0.7),  # a decoder's blur
        np.roll(training[4], (3, -5), axis=(0, 1)),  # shifted by a few pixels
    ]
    found = nearest_training(np.stack(samples), training)
    assert [nb.training for nb in found] == [5, 9, 3, 12, 4]
    assert all(nb.score >= DEFAULT_RULE.threshold for nb in found)
    assert found[0].flipped and not found[1].flipped
    assert found[1].score > 0.999  # exact up to brightness and contrast
    assert found[4].position == (-3, 5)
    # a random crop is found at its place, also flipped and noisy
    crop = training[7][30:78, 40:104]
    crops = np.stack([crop, crop[:, ::-1] + rng.normal(0, 0.03 * span, crop.shape)])
    cfound = nearest_training(crops, training)
    assert [(nb.training, nb.position) for nb in cfound] == [(7, (30, 40)), (7, (30, 40))]
    assert cfound[0].score > 0.999 and cfound[1].score >= DEFAULT_RULE.threshold and cfound[1].flipped


def test_look_alikes_and_neighbouring_real_slices_are_not(training, mr_volume, mr_heldout_slices):
    from medidiff.core.metrics import nearest_neighbours

    blurred = [gaussian_filter(training[k], sigma) for k, sigma in ((2, 2.5), (8, 3.0), (13, 2.5))]
    mixes = [0.5 * (training[1] + training[6]), 0.5 * (training[10] + training[14])]
    real = [mr_volume.array[16].astype(np.float64)] + [s.astype(np.float64) for s in mr_heldout_slices]
    samples = np.stack(blurred + mixes + real)
    found = nearest_training(samples, training)
    assert max(nb.score for nb in found) < DEFAULT_RULE.threshold
    n = len(blurred) + len(mixes)
    assert found[n].score < 0.85  # z = 16: 2.2 mm from a training slice (measured 0.79)
    assert max(nb.score for nb in found[n + 1 :]) < 0.5  # z >= 18: far below (measured <= 0.27)
    # why the rule changed: whole-image intensity NCC calls the blurred look-alikes copies
    _, old = nearest_neighbours(np.stack(blurred), np.stack(training), metric="ncc")
    assert np.all(old >= 0.95)


def test_report_names_the_rule_and_threshold(training, mr_heldout_slices, tmp_path):
    rng = np.random.default_rng(1)
    crop = lambda img, y, x: img[y : y + 48, x : x + 64]  # noqa: E731
    copy = crop(training[6], 20, 30) * 1.3 + 5.0
    look = crop(gaussian_filter(training[6], 3.0), 20, 30) + rng.normal(0, 1.0, (48, 64))
    held = crop(mr_heldout_slices[1], 24, 32)
    q = evaluate_generated([copy, look, held], list(mr_heldout_slices), training, report=tmp_path / "q.png")
    assert q.rule == RULE and q.threshold == DEFAULT_RULE.threshold
    assert q.flagged == [0] and q.neighbours[0].training == 6 and q.neighbours[0].position == (20, 30)
    card = q.to_markdown()
    assert f"{RULE} >= {DEFAULT_RULE.threshold:g}" in card and "Memorisation rule: structure-ncc" in card
    assert q.to_dict()["rule"] == RULE
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"  # the flagged pair is drawn at its match
    # a bad threshold is one clear error, before any work
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(MedidiffError, match="threshold"):
            evaluate_generated([copy, look], list(mr_heldout_slices), training, threshold=bad)


def test_small_samples_are_still_searched_and_the_report_says_the_check_is_weak(training, mr_heldout_slices):
    copy = training[7][40:56, 50:66]
    real = [mr_heldout_slices[0][32:80, 40:88]]  # 9 tiles of 16x16 are enough real images here
    q = evaluate_generated([copy, mr_heldout_slices[0][40:56, 50:66]], real, training)
    assert q.neighbours[0].training == 7 and q.neighbours[0].position == (40, 50)
    assert "16x16 are under 28 px a side" in q.rule_settings and "weak" in q.to_markdown()
