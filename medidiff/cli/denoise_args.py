"""How ``medidiff denoise`` reads its positional arguments: ``[MODEL] IN OUT`` or ``IN OUT --model M``.

Two positional arguments are ambiguous in the shell (``mr2d scan.dcm`` and ``scan.dcm out.nii``
look alike), so each argument is classified -- a model (a known model name, or a folder holding a
medidiff ``config.json``), an existing scan, or neither -- and a form that cannot be meant gets
one line saying what was understood and what is missing, before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medidiff.errors import MedidiffError

__all__ = ["DenoiseUsageError", "DenoiseArgs", "read_arguments"]

USAGE = "medidiff denoise [MODEL] IN OUT (or IN OUT --model MODEL)"


class DenoiseUsageError(MedidiffError):
    """The positional arguments of ``medidiff denoise`` do not form ``[MODEL] IN OUT``."""


@dataclass(frozen=True)
class DenoiseArgs:
    """What the positional arguments mean: ``model`` is None when it is to be chosen from the scan."""

    model: str | None
    src: Path
    dst: Path


def _is_model(text: str) -> bool:
    from medidiff.model_store.registry import is_explicit_path, list_models

    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file() and (path / "weights.safetensors").exists():
        return True
    return not is_explicit_path(text) and any(e.name == text for e in list_models(warn=False))


def _kind(text: str) -> str:
    if _is_model(text):
        return "model"
    return "scan" if Path(text).expanduser().exists() else "missing"


def read_arguments(first: str | None, second: str | None, third: str | None, model_option: str | None) -> DenoiseArgs:
    """Classify the positionals; a :class:`DenoiseUsageError` line for every form that cannot be meant."""
    given = [a for a in (first, second, third) if a is not None]
    kinds = [_kind(a) for a in given]
    if model_option is not None:
        if len(given) == 3:
            raise DenoiseUsageError(f"--model {model_option} and three arguments ({' '.join(given)}): with --model "
                                    f"give only IN OUT ({USAGE})")
        if given and kinds[0] == "model" and len(given) == 2:
            raise DenoiseUsageError(f"understood --model {model_option} and MODEL={given[0]} (a model, not a scan): "
                                    f"give one model and IN OUT ({USAGE})")
        if len(given) < 2:
            what = f"IN={given[0]}" if given else "no IN"
            raise DenoiseUsageError(f"understood --model {model_option} and {what} but no OUT: add the output path ({USAGE})")
        return DenoiseArgs(model_option, Path(given[0]), Path(given[1]))
    if len(given) == 3:
        if kinds[0] == "scan":
            raise DenoiseUsageError(f"{given[0]} is a scan, not a model: three arguments are read as MODEL IN OUT "
                                    f"(drop one, or name a model; see `medidiff models`)")
        return DenoiseArgs(given[0], Path(given[1]), Path(given[2]))
    if len(given) == 2:
        if kinds[0] == "model":
            raise DenoiseUsageError(f"understood MODEL={given[0]} IN={given[1]} but no OUT: add the output path, "
                                    f"e.g. medidiff denoise {given[0]} {given[1]} denoised.nii.gz")
        if kinds[0] == "missing":
            raise DenoiseUsageError(f"{given[0]}: no such scan, model folder or model name (two arguments are read as "
                                    f"IN OUT, or MODEL IN; see `medidiff models`)")
        return DenoiseArgs(None, Path(given[0]), Path(given[1]))
    if len(given) == 1:
        if kinds[0] == "model":
            raise DenoiseUsageError(f"understood MODEL={given[0]} but no IN and OUT: {USAGE}")
        if kinds[0] == "scan":
            raise DenoiseUsageError(f"understood IN={given[0]} but no OUT: add the output path, "
                                    f"e.g. medidiff denoise {given[0]} denoised.nii.gz")
        raise DenoiseUsageError(f"{given[0]}: no such scan, model folder or model name; {USAGE}")
    raise DenoiseUsageError(f"name the noisy scan and the output: {USAGE}")
