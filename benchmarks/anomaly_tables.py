"""The Markdown tables of the anomaly benchmarks (``benchmarks/anomaly.py`` and the parts that use it)."""

from __future__ import annotations

FDR_LEVELS = (0.05, 0.1)


def table(rows: list[dict]) -> str:
    head = ("| method | lesions | voxel AUROC | voxel AUPRC | best Dice | Dice @ calibrated | scan AUROC | "
            "FDR @ 0.05 (lesioned / healthy) | FDR @ 0.1 (lesioned / healthy) | s / slice |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        for kind in ("bright", "iso"):
            k = r[kind]
            lines.append(f"| {r['method']} | {kind} | {k['voxel_auroc']:.3f} | {k['voxel_auprc']:.3f} | {k['best_dice']:.3f} | "
                         f"{k['dice_at_calibrated']:.3f} | {k['scan_auroc']:.3f} | {k['fdr@0.05']:.3f} / {r['healthy_fdr@0.05']:.2f} | "
                         f"{k['fdr@0.1']:.3f} / {r['healthy_fdr@0.1']:.2f} | {r['sec_per_slice']:.3f} |")
    return "\n".join(lines)


def fdr_table(rows: list[dict]) -> str:
    """Achieved FDR of both methods: lesioned-scan FDP / share of healthy scans flagged, and lesion voxels found."""
    head = ("| method | lesions | AUPRC | best Dice | plain FDR @ 0.05 | plain FDR @ 0.1 | scan-adaptive FDR @ 0.05 | "
            "scan-adaptive FDR @ 0.1 | found @ 0.1 (plain / adaptive) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        for kind in ("bright", "iso"):
            k = r[kind]
            lines.append(f"| {r['method']} | {kind} | {k['voxel_auprc']:.3f} | {k['best_dice']:.3f} | "
                         + " | ".join(f"{k[f'{p}fdr@{q:g}']:.3f} / {r[f'healthy_{p}fdr@{q:g}']:.2f}"
                                      for p in ("", "adaptive_") for q in FDR_LEVELS)
                         + f" | {k['found@0.1']:.3f} / {k['adaptive_found@0.1']:.3f} |")
    return "\n".join(lines)
