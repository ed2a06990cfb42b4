"""``evaluate_anomaly`` on a 2-scan toy set whose metrics are worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medidiff.errors import InvalidScanError, MedidiffError, ScanError
from medidiff.io import Scan, affine_from_spacing, save_scan
from medidiff.tasks.evaluate import evaluate_anomaly

# scan "a": lesion where the map is 7 and 8; scan "b": healthy, with one hot voxel (9)
MAP_A = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float32)
TRUTH_A = np.array([[0, 0, 0, 0], [0, 0, 1, 1]], dtype=np.float32)
MAP_B = np.array([[1, 1, 1, 1], [2, 2, 9, 2]], dtype=np.float32)
TRUTH_B = np.zeros((2, 4), dtype=np.float32)


def _save(arr: np.ndarray, path) -> None:
    save_scan(Scan(arr, (1.0, 1.0), affine_from_spacing((1.0, 1.0))), path)


@pytest.fixture()
def toy(tmp_path):
    pred, truth = tmp_path / "maps", tmp_path / "truth"
    _save(MAP_A, pred / "a.nii.gz")
    _save(MAP_B, pred / "b.nii.gz")
    _save(TRUTH_A, truth / "a.nii.gz")
    _save(TRUTH_B, truth / "b.nii.gz")
    return pred, truth


def test_pooled_metrics_match_hand_computation(toy):
    pred, truth = toy
    ev = evaluate_anomaly(pred, truth)
    s = ev.summary
    # 2 positives (7, 8) and 14 negatives; each positive beats 13 negatives (all but the 9)
    assert s["voxel_auroc"] == pytest.approx(26 / 28)
    # ranking 9(-), 8(+), 7(+): AP = 0.5 * 1/2 + 0.5 * 2/3
    assert s["voxel_auprc"] == pytest.approx(0.25 + 1 / 3)
    # best: map >= 7 -> {9, 8, 7}: Dice 2*2 / (3 + 2)
    assert s["best_dice"] == pytest.approx(0.8) and s["best_dice_threshold"] == 7
    assert s["threshold"] is None and np.isnan(s["dice_at_threshold"])
    # without sidecars the scan score is the 99th percentile of the nonzero map: b (hot voxel) > a
    assert ev.rows[0]["score"] == pytest.approx(np.percentile(MAP_A, 99))
    assert s["scan_auroc"] == 0.0
    a, b = ev.rows
    assert (a["name"], a["lesion_voxels"], a["auroc"], a["auprc"], a["best_dice"]) == ("a", 2, 1.0, 1.0, 1.0)
    assert b["lesion_voxels"] == 0 and np.isnan(b["auroc"])


def test_threshold_from_option_and_from_sidecars(toy):
    pred, truth = toy
    ev = evaluate_anomaly(pred, truth, threshold=7.5)  # map > 7.5 -> {8, 9}
    assert ev.summary["dice_at_threshold"] == pytest.approx(0.5)
    assert ev.rows[0]["dice"] == pytest.approx(2 / 3) and ev.rows[1]["false_positive_voxels"] == 1
    for name, score in (("a", 10.0), ("b", 3.0)):
        (pred / f"{name}.anomaly.json").write_text(json.dumps({"score": score, "threshold": 6.5}))
    ev = evaluate_anomaly(pred, truth)  # map > 6.5 -> {7, 8, 9}
    assert ev.summary["threshold"] == 6.5
    assert ev.summary["dice_at_threshold"] == pytest.approx(0.8)
    assert ev.rows[0]["dice"] == 1.0
    assert ev.summary["scan_auroc"] == 1.0  # sidecar scores rank the lesioned scan first


def test_background_zeros_are_not_scored_but_missed_lesion_is(tmp_path):
    pred, truth = tmp_path / "maps", tmp_path / "truth"
    amap = np.array([[0, 0, 3, 1], [2, 0, 0, 0]], dtype=np.float32)
    lesion = np.array([[0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)  # second lesion voxel unscored
    _save(amap, pred / "c.nii.gz")
    _save(lesion, truth / "c.nii.gz")
    ev = evaluate_anomaly(pred, truth)
    # region = {3+, 1-, 2-, 0+}: positives 3 (beats both) and 0 (beats none) -> 2/4
    assert ev.summary["voxel_auroc"] == pytest.approx(0.5)


def test_csv_and_report(toy, tmp_path):
    pred, truth = toy
    ev = evaluate_anomaly(pred, truth, threshold=6.5)
    out = ev.write_csv(tmp_path / "ev.csv")
    lines = out.read_text().splitlines()
    assert lines[0].startswith("name,lesion_voxels,score,auroc")
    assert lines[1].startswith("a,2,") and lines[2].startswith("b,0,") and lines[3].startswith("summary,2,")
    with pytest.raises(MedidiffError):
        ev.write_csv(tmp_path / "ev.csv")  # exists
    png = ev.save_report(tmp_path / "cases.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_name_the_file(toy, tmp_path):
    pred, truth = toy
    _save(TRUTH_A, truth / "extra.nii.gz")
    with pytest.raises(ScanError, match="extra"):
        evaluate_anomaly(pred, truth)
    (truth / "extra.nii.gz").unlink()
    save_scan(Scan(np.zeros((3, 4), np.float32), (1.0, 1.0), np.eye(4)), pred / "b.nii.gz", overwrite=True)
    with pytest.raises(InvalidScanError, match="b.nii.gz"):
        evaluate_anomaly(pred, truth)
