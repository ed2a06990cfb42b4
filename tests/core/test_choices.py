"""The torch-free choice lists: one home per list, and the lists the tasks really accept."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medidiff.choices import DenoiseMethod, NoiseChoice, NoiseModel


def test_noise_choice_is_auto_plus_every_noise_model():
    assert NoiseChoice.values() == ("auto", *NoiseModel.values())
    assert NoiseChoice("poisson-gaussian") == "poisson-gaussian" and str(NoiseChoice.AUTO) == "auto"
    with pytest.raises(ValueError, match="choose one of auto, gaussian"):
        NoiseChoice.parse("speckle", "noise model")


def test_the_noise_models_are_the_ones_the_engine_implements():
    from medidiff.core import noise

    assert set(NoiseModel.values()) == set(noise.NOISE_MODELS)


def test_choices_import_no_torch():
    code = "import sys, medidiff.choices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
    assert DenoiseMethod.values() == ("tweedie", "ddim", "posterior")
