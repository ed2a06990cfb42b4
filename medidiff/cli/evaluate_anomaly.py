"""``medidiff evaluate anomaly PRED_DIR TRUTH_DIR``: anomaly maps against ground-truth lesion masks."""

from __future__ import annotations

from pathlib import Path

import typer

from medidiff.cli.common import OVERWRITE, existing_path
from medidiff.cli.evaluate import evaluate_app


@evaluate_app.command("anomaly")
def anomaly(
    pred_dir: Path = typer.Argument(..., metavar="PRED_DIR", help="Folder of anomaly maps (from `medidiff anomaly`)."),
    truth_dir: Path = typer.Argument(..., metavar="TRUTH_DIR", help="Folder of lesion masks with the same names (empty mask = healthy)."),
    threshold: float = typer.Option(None, "--threshold", help="Threshold for Dice (default: the one in the maps' .anomaly.json files)."),
    csv: Path = typer.Option(None, "--csv", help="Write per-scan rows and a summary row here."),
    report: Path = typer.Option(None, "--report", help="Write a PNG of the best and worst cases here."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Voxel AUROC/AUPRC, best Dice, Dice at the calibrated threshold, scan-level AUROC.

    Maps and masks are matched by name without the extension (case1.nii.gz <-> case1.png).

    Example:  medidiff evaluate anomaly maps/ truth/ --csv results.csv --report cases.png
    """
    from medidiff.io.atomic import atomic_outputs, check_outputs
    from medidiff.tasks.evaluate import evaluate_anomaly

    existing_path(pred_dir)
    existing_path(truth_dir)
    check_outputs([csv, report], overwrite=overwrite, inputs=[pred_dir, truth_dir])
    ev = evaluate_anomaly(pred_dir, truth_dir, threshold=threshold)
    s = ev.summary
    typer.echo(f"{s['n_scans']} scans ({s['n_lesion_scans']} with lesions, {s['n_healthy_scans']} healthy), "
               f"{s['lesion_voxels']} lesion voxels")
    typer.echo(f"voxel AUROC {s['voxel_auroc']:.4f}  AUPRC {s['voxel_auprc']:.4f}  "
               f"best Dice {s['best_dice']:.4f} (at {s['best_dice_threshold']:.4g})")
    if s["threshold"] is not None:
        typer.echo(f"Dice at threshold {s['threshold']:.4g}: {s['dice_at_threshold']:.4f}")
    else:
        typer.echo("Dice at threshold: n/a (no --threshold and no .anomaly.json next to the maps)")
    if s["n_healthy_scans"] and s["n_lesion_scans"]:
        typer.echo(f"scan-level AUROC {s['scan_auroc']:.4f}")
    if s["ignored_maps"]:
        typer.echo(f"ignored {len(s['ignored_maps'])} map(s) without a truth mask")
    with atomic_outputs([csv, report], overwrite, [pred_dir, truth_dir]) as staged:  # both or neither
        if csv is not None:
            ev.write_csv(staged[csv])
        if report is not None:
            ev.save_report(staged[report])
    for written in (csv, report):
        if written is not None:
            typer.echo(f"wrote {written}")
