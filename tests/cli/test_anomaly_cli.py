"""``medidiff anomaly`` (calibrate, detect) and ``medidiff evaluate anomaly`` end to end."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from cli_runner import call
from medidiff.io import Scan, load_scan, save_scan
from medidiff.core.lesions import plant_lesion

AFFINE = np.diag([-2.0, 2.0, 2.2, 1.0])


def _save(arr, path) -> None:
    save_scan(Scan(np.asarray(arr, np.float32), (2.0, 2.0), AFFINE, "MR"), path)


@pytest.fixture()
def workspace(tmp_path, tiny_mr_model, mr_heldout_slices):
    model = tmp_path / "model"
    shutil.copytree(tiny_mr_model.path, model)  # calibration rewrites the folder
    for k in (3, 4):
        _save(mr_heldout_slices[k], tmp_path / "healthy" / f"h{k}.nii.gz")
    les = plant_lesion(mr_heldout_slices[2], seed=1, radius=8, contrast=0.9)
    _save(les.image, tmp_path / "case1.nii.gz")
    _save(les.mask, tmp_path / "truth" / "case1.nii.gz")
    _save(mr_heldout_slices[5], tmp_path / "case2.nii.gz")
    _save(np.zeros_like(mr_heldout_slices[5]), tmp_path / "truth" / "case2.nii.gz")
    return tmp_path


def test_calibrate_detect_evaluate(workspace, capsys):
    w = workspace
    code, out, err = call(capsys, "anomaly", "calibrate", w / "model", w / "healthy", "--percentile", "98", "--device", "cpu")
    assert code == 0, err
    assert "threshold" in out
    thr = json.loads((w / "model" / "config.json").read_text())["anomaly"]["threshold"]

    code, out, err = call(capsys, "anomaly", w / "model", w / "case1.nii.gz", w / "maps" / "case1.nii.gz",
                          "--mask", w / "mask1.nii.gz", "--report", w / "r.png", "--device", "cpu")
    assert code == 0, err
    assert out.startswith("score ")
    amap, mask = load_scan(w / "maps" / "case1.nii.gz"), load_scan(w / "mask1.nii.gz")
    src = load_scan(w / "case1.nii.gz")
    assert amap.shape == src.shape and np.allclose(amap.affine, src.affine)
    np.testing.assert_array_equal(mask.array, (amap.array > thr).astype(np.float32))
    side = json.loads((w / "maps" / "case1.anomaly.json").read_text())
    assert side["threshold"] == pytest.approx(thr) and float(out.split()[1]) == pytest.approx(side["score"], rel=1e-5)
    assert (w / "r.png").read_bytes()[:4] == b"\x89PNG"

    # the explicit sub-command name works too
    code, out, err = call(capsys, "anomaly", "detect", w / "model", w / "case2.nii.gz", w / "maps" / "case2.nii.gz", "--device", "cpu")
    assert code == 0, err

    code, out, err = call(capsys, "evaluate", "anomaly", w / "maps", w / "truth", "--csv", w / "ev.csv", "--report", w / "ev.png")
    assert code == 0, err
    assert "voxel AUROC" in out and "scan-level AUROC" in out
    rows = list(csv.DictReader((w / "ev.csv").open()))
    assert [r["name"] for r in rows] == ["case1", "case2", "summary"]
    assert float(rows[2]["auroc"]) > 0.8  # a clear planted lesion
    assert (w / "ev.png").is_file()


def test_bad_input_exits_2_with_one_line(workspace, capsys):
    w = workspace
    code, out, err = call(capsys, "anomaly", w / "model", w / "missing.nii.gz", w / "m.nii.gz")
    assert code == 2 and "missing.nii.gz" in err and len(err.strip().splitlines()) == 1
    # not calibrated: tells the user what to run, and writes nothing
    code, out, err = call(capsys, "anomaly", w / "model", w / "case1.nii.gz", w / "m.nii.gz", "--device", "cpu")
    assert code == 2 and "medidiff anomaly calibrate" in err
    assert not (w / "m.nii.gz").exists()
    # an existing output is refused before any work; the input is never a valid output
    code, out, err = call(capsys, "anomaly", w / "model", w / "case1.nii.gz", w / "case2.nii.gz", "--threshold", "1")
    assert code == 2 and "already exists" in err
    code, out, err = call(capsys, "anomaly", w / "model", w / "case1.nii.gz", w / "case1.nii.gz", "--threshold", "1", "--overwrite")
    assert code == 2 and "input" in err
    code, out, err = call(capsys, "anomaly", w / "model", w / "case1.nii.gz", w / "m.nii.gz", "--threshold", "high")
    assert code == 2
    code, out, err = call(capsys, "evaluate", "anomaly", w / "nowhere", w / "truth")
    assert code == 2 and "nowhere" in err


def test_help_has_examples(capsys):
    for args in (["anomaly", "--help"], ["anomaly", "detect", "--help"], ["anomaly", "calibrate", "--help"],
                 ["evaluate", "anomaly", "--help"]):
        code, out, err = call(capsys, *args)
        assert code == 0 and "Example" in out


@pytest.mark.parametrize("args,names", [
    (["--timesteps", "5000", "--threshold", "1"], "--timesteps"),
    (["--timesteps", "a,b"], "--timesteps"),
    (["--batch-size", "0", "--threshold", "1"], "--batch-size"),
    (["--ddim-steps", "0", "--threshold", "1"], "--ddim-steps"),
    (["--median-size", "-1", "--threshold", "1"], "--median-size"),
    (["--patch-size", "1", "--threshold", "1", "--method", "patched"], "--patch-size"),
    (["--fdr", "1.5"], "--fdr"),
    (["--fdr", "0.05", "--threshold", "3"], "--fdr"),
    (["--method", "simplex", "--threshold", "1"], "--method"),
    (["--mirror", "1.5", "--threshold", "1"], "--mirror"),
    (["--mirror", "-0.2", "--threshold", "1"], "--mirror"),
])
def test_bad_options_exit_2_with_one_line(workspace, capsys, args, names):
    w = workspace
    code, out, err = call(capsys, "anomaly", w / "model", w / "case1.nii.gz", w / "m.nii.gz", "--device", "cpu", *args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and names in err and "Traceback" not in err
    assert not (w / "m.nii.gz").exists()


def test_calibrate_bad_percentile_is_one_line(workspace, capsys):
    w = workspace
    code, out, err = call(capsys, "anomaly", "calibrate", w / "model", w / "healthy", "--percentile", "100")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--percentile" in err


def test_fdr_mask_and_its_sidecar(workspace, capsys):
    w = workspace
    code, out, err = call(capsys, "anomaly", "calibrate", w / "model", w / "healthy", "--device", "cpu")
    assert code == 0, err
    code, out, err = call(capsys, "anomaly", w / "model", w / "case1.nii.gz", w / "maps" / "case1.nii.gz",
                          "--mask", w / "mask1.nii.gz", "--fdr", "0.1", "--device", "cpu")
    assert code == 0, err
    assert "FDR 0.1" in out
    side = json.loads((w / "maps" / "case1.anomaly.json").read_text())
    assert side["fdr"]["q"] == 0.1 and "Benjamini-Hochberg" in side["fdr"]["method"]
    assert side["fdr"]["calibration"]["n_scans"] == 2 and len(side["fdr"]["calibration"]["sources"]) == 2
    assert side["fdr"]["fdr_method"] == "scan-adaptive" and "interquartile" in side["fdr"]["method"]  # the default
    assert side["fdr"]["scan_level"]["scale"] > 0 and "standardised" in side["fdr"]["assumption"]
    amap, mask = load_scan(w / "maps" / "case1.nii.gz").array, load_scan(w / "mask1.nii.gz").array
    np.testing.assert_array_equal(mask, ((amap > side["threshold"]) & (amap != 0)).astype(np.float32))
    assert mask.sum() > 0

    code, out, err = call(capsys, "anomaly", w / "model", w / "case1.nii.gz", w / "maps" / "plain.nii.gz",
                          "--fdr", "0.1", "--fdr-method", "plain", "--device", "cpu")
    assert code == 0, err
    side = json.loads((w / "maps" / "plain.anomaly.json").read_text())
    assert side["fdr"]["fdr_method"] == "plain" and "exchangeable with the calibration's" in side["fdr"]["assumption"]
    code, out, err = call(capsys, "anomaly", w / "model", w / "case1.nii.gz", w / "maps" / "x.nii.gz",
                          "--fdr", "0.1", "--fdr-method", "loose", "--device", "cpu")
    assert code == 2 and "--fdr-method" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("option,value", [("--ddim-steps", "99999999999999999999"), ("--median-size", "99999999999999999999"),
                                          ("--seed", "-7"), ("--fdr", "nan"), ("--threshold", "nan")])
def test_absurd_values_are_refused_before_any_work(workspace, capsys, option, value):
    w = workspace
    code, out, err = call(capsys, "anomaly", w / "model", w / "case1.nii.gz", w / "m.nii.gz", "--device", "cpu", option, value)
    assert code == 2 and len(err.strip().splitlines()) == 1 and option in err


def test_out_of_distribution_scan_is_one_warning_line(tmp_path, capsys):
    from medidiff.builtin.sample_scans import SAMPLES

    code, out, err = call(capsys, "anomaly", "mr2d", SAMPLES / "cell_heldout.tif", tmp_path / "map.tif", "--device", "cpu")
    assert code == 0, err
    assert err.count("warning:") == 1, err  # (after the progress bar's last frame)
    warn = err.split("warning:")[1].splitlines()[0]
    assert "cell_heldout.tif" in warn and "looks unlike" in warn and "expect" in warn
    side = json.loads((tmp_path / "map.anomaly.json").read_text())
    assert side["ood"]["out_of_distribution"] and side["ood"]["reasons"]

    code, out, err = call(capsys, "anomaly", "mr2d", SAMPLES / "mr_heldout.nii.gz", tmp_path / "mr.nii.gz", "--device", "cpu")
    assert code == 0, err
    assert "warning:" not in err and not json.loads((tmp_path / "mr.anomaly.json").read_text())["ood"]["out_of_distribution"]
