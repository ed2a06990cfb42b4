"""The training run folder: checkpoints, the loss log, and what a rerun may do with an old folder.

::

    RUN/model/        the EMA model (a normal medidiff model folder)
    RUN/state/        what resuming needs: raw + EMA weights and optimiser tensors (safetensors),
                      the step, the losses and the run's settings (train.json)
    RUN/log.csv       step, loss, learning rate, seconds: one row per step, never repeated
    RUN/samples/      grids of samples every ``sample_every`` steps

A folder without a checkpoint (a run stopped before its first one) holds nothing worth keeping,
so a new run may reuse it without ``overwrite``. After a crash (kill -9) the log may hold steps
after the last checkpoint; resuming drops them, since they are trained again.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from medidiff.errors import MedidiffError, OutputError
from medidiff.io.lock import is_lock_file

OURS = ("model", "state", "log.csv", "samples")


def has_checkpoint(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a resumable checkpoint."""
    return (run_dir / "state" / "train.json").is_file()


def read_meta(run_dir: Path) -> dict[str, Any]:
    """``RUN/state/train.json`` (``MedidiffError`` if damaged)."""
    path = run_dir / "state" / "train.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedidiffError(f"{path}: the checkpoint is damaged ({str(exc).splitlines()[0]}); pass --overwrite to start again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or not isinstance(meta.get("config"), dict):
        raise MedidiffError(f"{path}: the checkpoint is damaged (no step or config); pass --overwrite to start again")
    return meta


def prepare(run_dir: Path, *, resume: bool, overwrite: bool) -> bool:
    """Make ``run_dir`` ready for a run; True when it continues from a checkpoint.

    Refuses (``OutputError``) a folder with a checkpoint unless ``resume`` or ``overwrite``, and a
    folder with files medidiff did not write. Clears a checkpoint-less run's leftovers.
    """
    entries = [p for p in run_dir.iterdir() if not is_lock_file(p)] if run_dir.is_dir() else []
    foreign = sorted(p.name for p in entries if p.name not in OURS and not p.name.startswith("."))
    checkpoint = has_checkpoint(run_dir)
    if foreign and not overwrite:
        raise OutputError(f"{run_dir}: holds files that are not a medidiff run ({', '.join(foreign[:3])}); "
                          "choose another folder, or pass --overwrite to train there anyway")
    if checkpoint and resume and not overwrite:
        return True
    if checkpoint and not overwrite:
        raise OutputError(f"{run_dir}: already holds a training run; pass --resume to continue it, "
                          "--overwrite to replace it, or choose another folder")
    # nothing to continue from (or asked to start again): clear what an earlier run left
    for name in OURS:
        remove(run_dir / name)
    return False


def remove(path: Path) -> None:
    """Remove a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def append_log(path: Path, step: int, loss: float, lr: float, seconds: float) -> None:
    """One row of ``log.csv`` (header first)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["step", "loss", "lr", "seconds"])
        w.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{seconds:.2f}"])


def trim_log(path: Path, last_step: int) -> None:
    """Drop rows after ``last_step`` (steps a crashed run logged after its last checkpoint)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= last_step]
    if len(keep) == len(rows):
        return
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(keep)
    os.replace(tmp, path)


def write_state(state_dir: Path, net: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
                meta: dict[str, Any]) -> None:
    """Write ``RUN/state`` atomically: tensors as safetensors, ``meta`` (+ optimiser groups) as JSON."""
    from safetensors.torch import save_file

    from medidiff.io.atomic import atomic_dir

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt_state = opt.state_dict()
    for pid, st in opt_state["state"].items():
        for name, val in st.items():
            tensors[f"opt.{pid}.{name}"] = torch.as_tensor(val).detach().cpu().contiguous()
    meta = dict(meta, param_groups=[{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]}
                                    for g in opt_state["param_groups"]])
    with atomic_dir(state_dir, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "train.json").write_text(json.dumps(meta))


def load_state(state_dir: Path, meta: dict[str, Any], net: torch.nn.Module, ema: torch.nn.Module,
               opt: torch.optim.Optimizer, dev: torch.device) -> None:
    """Load raw, EMA and optimiser state written by :func:`write_state` into the given objects."""
    from safetensors.torch import load_file

    tensors = load_file(str(state_dir / "state.safetensors"))
    try:
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    except RuntimeError as exc:
        raise MedidiffError(f"{state_dir}: the checkpoint's network differs from this run's settings "
                            f"({str(exc).splitlines()[0]}); resume with the run's settings") from None
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v.to(dev) if name != "step" else v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def describe_sources(sources: list[str], roots: list[Path], full: bool = False) -> list[str]:
    """Training file names as recorded in a model: relative to the data root they came from.

    ``roots`` are the data arguments (a folder is a root, a file's root is its folder). Full
    paths name the user's folders (often a patient or study ID), so they are kept only with
    ``full=True``. Sources that are not files (``<memory>``) pass unchanged.
    """
    if full:
        return list(sources)
    bases = [r.resolve() if r.is_dir() else r.resolve().parent for r in roots]
    out = []
    for s in sources:
        p = Path(s)
        if not p.is_absolute() and not p.exists():
            out.append(s if not os.sep in s else p.name)
            continue
        rp = p.resolve()
        rel = next((rp.relative_to(b) for b in bases if b == rp or b in rp.parents), None)
        out.append(rel.as_posix() if rel is not None else p.name)
    return out
