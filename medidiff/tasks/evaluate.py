"""Evaluate anomaly maps against ground-truth lesion masks: voxel, Dice and scan-level metrics.

Maps and masks are matched by file name without the scan suffix (``case1.nii.gz`` in the map
folder pairs with ``case1.nii.gz`` or ``case1.png`` in the truth folder). A truth mask is a scan
whose nonzero voxels are lesion; an all-zero mask is a healthy scan.

Voxels evaluated: those the detector scored (map != 0; medidiff maps are exactly 0 outside the
tissue they score) plus every lesion voxel (a lesion outside the scored region counts as
missed). Pooling this way keeps the empty background from inflating AUROC, as papers that
score within a brain mask do; a map from another tool with no zero background is scored on
every voxel.

Metrics (from ``medidiff.core.metrics``), pooled over all scans:
  * voxel AUROC and AUPRC (average precision);
  * best Dice: the best Dice of ``map >= t`` over thresholds ``t`` (one t for all scans; an
    upper bound, the threshold is chosen on the test set itself);
  * Dice at the calibrated threshold: ``map > threshold`` with the threshold given, or stored in
    the maps' sidecars (``case1.anomaly.json`` written by ``medidiff anomaly``);
  * scan-level AUROC of the scan scores (sidecar score, else the 99th percentile of the nonzero
    map) when both healthy (empty truth) and lesioned scans are present.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.errors import InvalidScanError, MedidiffError, ScanError
from medidiff.io import load_scan
from medidiff.io.atomic import atomic_file
from medidiff.core.metrics import auprc, auroc, best_dice, dice
from medidiff.io.anomaly_sidecar import read_sidecar, scan_stem
from medidiff.tasks.anomaly.options import SCORE_PERCENTILE

ROW_FIELDS = ("name", "lesion_voxels", "score", "auroc", "auprc", "best_dice", "dice", "predicted_voxels", "false_positive_voxels")


@dataclass
class AnomalyEvaluation:
    """Per-scan rows and a pooled summary; ``pairs`` are (name, map path, truth path)."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)

    def to_csv(self) -> str:
        """Per-scan rows, then a ``summary`` row with the pooled metrics."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
        s = self.summary
        w.writerow({"name": "summary", "lesion_voxels": s["lesion_voxels"], "score": _fmt(s["scan_auroc"]),
                    "auroc": _fmt(s["voxel_auroc"]), "auprc": _fmt(s["voxel_auprc"]), "best_dice": _fmt(s["best_dice"]),
                    "dice": _fmt(s["dice_at_threshold"]), "predicted_voxels": s["predicted_voxels"],
                    "false_positive_voxels": s["false_positive_voxels"]})
        return buf.getvalue()

    def write_csv(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write :meth:`to_csv` atomically (the summary row's ``score`` column holds the scan AUROC)."""
        with atomic_file(path, overwrite=overwrite) as tmp:
            tmp.write_text(self.to_csv())
        return Path(path)

    def save_report(self, path: str | Path, overwrite: bool = False, n: int = 3) -> Path:
        """PNG of the ``n`` best and ``n`` worst lesioned scans (map with truth outline, predicted mask)."""
        from medidiff.reporting.figures import save_grid

        key = "dice" if self.summary["threshold"] is not None else "best_dice"
        lesioned = [r for r in self.rows if r["lesion_voxels"] > 0]
        if not lesioned:
            raise MedidiffError(f"{path}: no lesioned scans to show (every truth mask is empty)")
        ranked = sorted(lesioned, key=lambda r: -r[key])
        chosen = ranked[:n] + [r for r in ranked[::-1][:n] if r not in ranked[:n]]
        where = {name: (m, t) for name, m, t in self.pairs}
        images, titles, overlays, cmaps = [], [], [], []
        thr = self.summary["threshold"]
        for r in chosen:
            mpath, tpath = where[r["name"]]
            amap, truth = load_scan(mpath).array, load_scan(tpath).array != 0
            if amap.ndim == 3:  # the slice with the most lesion
                z = int(np.argmax(truth.reshape(truth.shape[0], -1).sum(1)))
                amap, truth = amap[z], truth[z]
            images += [amap, (amap > thr).astype(np.float32) if thr is not None else amap]
            overlays += [truth.astype(np.float32), truth.astype(np.float32)]
            cmaps += ["magma", "gray"]
            rank = "best" if r in ranked[:n] else "worst"
            titles += [f"{rank}: {r['name']} map + truth", f"{key} {r[key]:.3f}" + (" mask" if thr is not None else "")]
        s = self.summary
        sup = f"voxel AUROC {s['voxel_auroc']:.3f}, AUPRC {s['voxel_auprc']:.3f}, best Dice {s['best_dice']:.3f}"
        if thr is not None:
            sup += f", Dice@{thr:.4g} {s['dice_at_threshold']:.3f}"
        return save_grid(images, path, titles=titles, ncols=min(4, len(images)), cmaps=cmaps, overlays=overlays, suptitle=sup, overwrite=overwrite)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return v


def _index(folder: Path, role: str) -> dict[str, Path]:
    from medidiff.core.data import scan_paths

    if not folder.is_dir():
        raise ScanError(folder, f"the {role} folder does not exist or is not a folder")
    found: dict[str, Path] = {}
    for p in scan_paths([folder]):
        stem = scan_stem(p)
        if stem in found:
            raise InvalidScanError(p, f"two {role} files have the name {stem!r} ({found[stem].name}); keep one")
        found[stem] = p
    return found


def _scan_score(amap: np.ndarray, side: dict | None) -> float:
    if side and "score" in side:
        return float(side["score"])
    nz = amap[amap != 0]
    return float(np.percentile(nz, SCORE_PERCENTILE)) if nz.size else 0.0


def evaluate_anomaly(pred_dir: str | Path, truth_dir: str | Path, threshold: float | None = None) -> AnomalyEvaluation:
    """Compare every truth mask in ``truth_dir`` with the same-named map in ``pred_dir``.

    ``threshold`` (map units) overrides the thresholds stored in the maps' sidecars; without
    either, Dice at threshold is ``nan``. Maps without a truth mask are ignored; a truth mask
    without a map is an error naming it.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    preds, truths = _index(pred_dir, "map"), _index(truth_dir, "truth")
    missing = sorted(set(truths) - set(preds))
    if missing:
        raise ScanError(pred_dir, f"no map for truth mask(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                        f"(maps are matched to {truth_dir} by file name)")
    rows: list[dict[str, Any]] = []
    pairs: list[tuple[str, Path, Path]] = []
    all_scores, all_labels = [], []
    scan_scores, scan_labels = [], []
    thresholds: list[float] = []
    for name in sorted(truths):
        mpath, tpath = preds[name], truths[name]
        amap = load_scan(mpath).array.astype(np.float64)
        truth = load_scan(tpath).array != 0
        if truth.shape != amap.shape:
            raise InvalidScanError(mpath, f"map shape {amap.shape} differs from the truth mask {tpath} shape {truth.shape}")
        side = read_sidecar(mpath)
        thr = threshold if threshold is not None else (side or {}).get("threshold")
        if thr is not None:
            thresholds.append(float(thr))
        region = (amap != 0) | truth
        s, y = amap[region], truth[region]
        all_scores.append(s)
        all_labels.append(y)
        pred = (amap > thr) if thr is not None else None
        n_les = int(truth.sum())
        row = {
            "name": name, "lesion_voxels": n_les, "score": _scan_score(amap, side),
            "auroc": auroc(s, y) if s.size else float("nan"), "auprc": auprc(s, y) if s.size else float("nan"),
            "best_dice": best_dice(s, y)[0] if n_les else float("nan"),
            "dice": dice(pred, truth) if (pred is not None and n_les) else float("nan"),
            "predicted_voxels": int(pred.sum()) if pred is not None else -1,
            "false_positive_voxels": int((pred & ~truth).sum()) if pred is not None else -1,
        }
        rows.append(row)
        pairs.append((name, mpath, tpath))
        scan_scores.append(row["score"])
        scan_labels.append(n_les > 0)
    scores, labels = np.concatenate(all_scores), np.concatenate(all_labels)
    if not labels.any():
        raise MedidiffError(f"{truth_dir}: every truth mask is empty; voxel metrics need at least one lesion voxel")
    used_thr = None
    if thresholds:
        if len(set(thresholds)) > 1 and threshold is None:
            raise MedidiffError(f"{pred_dir}: the maps' sidecars hold different thresholds {sorted(set(thresholds))[:4]}; "
                                "pass one with --threshold")
        used_thr = thresholds[0]
    bd, bt = best_dice(scores, labels)
    pred_all = scores > used_thr if used_thr is not None else None
    summary = {
        "n_scans": len(rows), "n_lesion_scans": int(sum(scan_labels)), "n_healthy_scans": int(len(rows) - sum(scan_labels)),
        "lesion_voxels": int(labels.sum()), "voxel_auroc": auroc(scores, labels), "voxel_auprc": auprc(scores, labels),
        "best_dice": bd, "best_dice_threshold": bt, "threshold": used_thr,
        "dice_at_threshold": dice(pred_all, labels) if pred_all is not None else float("nan"),
        "predicted_voxels": int(pred_all.sum()) if pred_all is not None else -1,
        "false_positive_voxels": int((pred_all & ~labels).sum()) if pred_all is not None else -1,
        "scan_auroc": auroc(np.asarray(scan_scores), np.asarray(scan_labels)) if 0 < sum(scan_labels) < len(rows) else float("nan"),
        "ignored_maps": sorted(set(preds) - set(truths)),
    }
    return AnomalyEvaluation(rows, summary, pairs)
