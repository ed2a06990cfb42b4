"""One error policy: every option of every command, given a bad value, ends in one line and exit 2.

The test walks the real command tree (so a new option is covered the day it is added), gives each
option values a user could type by mistake (not a number, negative, absurdly large, an unknown
choice, a path that does not exist) and runs the command in-process on small real inputs. It
asserts that no Python exception escapes (a traceback is never a user's fault), that the exit code
is 0 or 2 (a value that is merely unusual may be accepted) or 130, and that a refusal is exactly
one non-empty line on stderr. Accepted values must not run long: the base arguments ask for the
smallest work (2 training steps, 1 sample, the quick demo).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer

from cli_runner import call
from medidiff.cli import app
from medidiff.io import Scan, save_scan

BAD_NUMBERS = ("abc", "-7", "nan")
BAD_INTS = ("abc", "-7", "0")
# commands whose accepted values would run long work: only parse errors are tried there
PARSE_ONLY = {("demo",)}
NEVER_RUN = {"--help", "--version", "-h"}


def _leaves(command, path=()):
    subs = getattr(command, "commands", None)
    if subs:
        for name, sub in sorted(subs.items()):
            yield from _leaves(sub, (*path, name))
    else:
        yield path, command


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("error_policy")
    rng = np.random.default_rng(0)
    image = (100 + 20 * rng.standard_normal((40, 40))).astype(np.float32)
    scan_file = root / "scan.nii.gz"
    save_scan(Scan(image, (1.0, 1.0), np.eye(4), "MR", {}), scan_file)
    folder = root / "scans"
    folder.mkdir()
    save_scan(Scan(image, (1.0, 1.0), np.eye(4), "MR", {}), folder / "a.nii.gz")
    # an (untrained) autoencoder and latent model for `medidiff latent ...`: 40x40 -> a 48x48 field
    from medidiff.core.autoencoder import Autoencoder
    from medidiff.core.latent_model import LatentModel, latent_normaliser
    from medidiff.core.model import DiffusionModel

    ae = Autoencoder.create(2, 16, seed=0)
    ae.save(root / "ae")
    prior = DiffusionModel.create(2, (12, 12), normaliser=latent_normaliser(0.0, 1.0), seed=0)
    LatentModel(prior, ae, 1.0, 0.0).save(root / "latent")
    return {"scan": scan_file, "folder": folder, "root": root, "ae": root / "ae", "latent": root / "latent"}


def _base_args(path: tuple[str, ...], inputs: dict[str, Path], out: Path) -> list[str] | None:
    scan, folder = str(inputs["scan"]), str(inputs["folder"])
    table = {
        ("info",): [scan],
        ("convert",): [scan, str(out / "converted.nii.gz")],
        ("train",): [scan, "--out", str(out / "run"), "--steps", "2", "--preset", "tiny"],
        ("generate",): ["mr2d", "--n", "1", "--out", str(out / "gen"), "--steps", "2"],
        ("denoise",): ["mr2d", scan, str(out / "denoised.nii.gz")],
        ("denoise-calibrate",): ["mr2d", scan],
        ("anomaly", "detect"): ["mr2d", scan, str(out / "map.nii.gz")],
        ("anomaly",): ["mr2d", scan, str(out / "map.nii.gz")],
        ("anomaly", "calibrate"): ["mr2d", folder],
        ("evaluate", "anomaly"): [folder, folder],
        ("evaluate", "generated"): [folder, "--real", folder],
        ("models", "list"): [],
        ("models", "show"): ["mr2d"],
        ("models", "import"): [folder, "--name", "imported"],
        ("models",): [],
        ("demo",): ["--out", str(out / "demo"), "--quick"],
        ("latent", "train-autoencoder"): [scan, "--out", str(out / "ae"), "--steps", "2", "--image-size", "16"],
        ("latent", "train"): [scan, "--autoencoder", str(inputs["ae"]), "--out", str(out / "lrun"), "--steps", "2"],
        ("latent", "generate"): [str(inputs["latent"]), "--n", "1", "--out", str(out / "lgen"), "--steps", "2"],
    }
    return table.get(path)


def _cases():
    command = typer.main.get_command(app)
    for path, leaf in _leaves(command):
        for param in leaf.params:
            names = [n for n in getattr(param, "opts", []) if n.startswith("--")]
            if not names or names[0] in NEVER_RUN or getattr(param, "is_flag", False):
                continue
            kind = getattr(getattr(param, "type_descriptor", None), "annotation", str)
            if kind is int:
                values = BAD_INTS
            elif kind is float:
                values = BAD_NUMBERS
            elif kind is Path:
                values = ("/no/such/folder/x.nii.gz",)
            else:  # names, choices, lists typed as text
                values = ("no-such-choice", "")
            if path in PARSE_ONLY:
                values = values[:1] if kind in (int, float) else ()
            for value in values:
                yield pytest.param(path, names[0], value, id=f"{' '.join(path) or 'root'} {names[0]}={value}")


@pytest.mark.slow
@pytest.mark.parametrize("path, option, value", list(_cases()))
def test_bad_option_value_is_one_line(capsys, tmp_path, monkeypatch, inputs, path, option, value):
    monkeypatch.setenv("MEDIDIFF_MODELS", str(tmp_path / "user_models"))
    base = _base_args(path, inputs, tmp_path)
    if base is None:
        pytest.fail(f"no base arguments for command {' '.join(path)}: add it to _base_args")
    args = [*path, *base, option, value] if path else [option, value, "models"]
    try:
        code, out, err = call(capsys, *args)
    except Exception as exc:  # noqa: BLE001 - the point: nothing may escape
        pytest.fail(f"medidiff {' '.join(args)} raised {type(exc).__name__}: {exc}")
    assert code in (0, 2, 130), f"medidiff {' '.join(args)} exited {code}: {err[-500:]}"
    assert "Traceback" not in err
    if code == 2:
        errors = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
        assert len(errors) == 1 and errors[0].startswith("error: "), f"medidiff {' '.join(args)}:\n{err}"
