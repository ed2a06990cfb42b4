"""Plain words for the widgets: one-line tooltips for every choice, and results people can read.

The choice lists themselves come from ``medidiff.choices`` (the same lists the tasks and the
command line use); this module only says what each one means to someone who does not know
diffusion models, and turns a task result into a sentence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medidiff.choices import DenoiseMethod, NoiseChoice, Sampler

__all__ = ["AXIS_NAMES", "PLANE_NAMES", "SLICE_AXIS_TIP", "RUN_ON", "RUN_ON_TIPS", "FIT_TIPS", "METHOD_TIPS", "NOISE_TIPS", "SAMPLER_TIPS", "NOISE_NAMES", "MODALITIES", "FAMILY_CODES", "ENSEMBLE_CHOICES",
           "ENSEMBLE_TIP", "COVERAGE_CHOICES", "COVERAGE_TIP", "FDR_TIP", "FDR_METHOD_CHOICES", "FDR_METHOD_TIP",
           "WIDGET_WORDS", "in_widget_words", "percent", "noise_summary", "number"]

# The tasks' messages name command-line options (the CLI prints them as they are, and they say
# what to change); in a widget they must name its own controls. Per widget title: (CLI phrase,
# widget phrase), applied in order, so longer phrases come before the flags they contain.
WIDGET_WORDS: dict[str, tuple[tuple[str, str], ...]] = {
    "Denoise": (
        ("try --fit (trains on the scan itself)", "try the Fit to this scan widget (it learns from the scan itself)"),
        ("try --fit", "try the Fit to this scan widget"),
        ("--sigma", "Noise level"),
        ("--strength", "Strength"),
        ("--ensemble", "Average over flips"),
        ("--coverage", "Interval coverage"),
        ("denoise with --device cpu", "choose the CPU under Device"),
    ),
    "Fit to this scan": (
        ("a larger --fit-minutes than", "a larger Time budget (minutes) than"),
        ("more --fit-steps than", "a higher Step limit than"),
        # the Fit widget estimates the noise level; a level by hand is the Denoise widget's
        ("check the noise level (give --sigma)", "check the Noise model (or give the noise level by hand "
                                                 "in the Denoise widget)"),
        ("give the noise level with --sigma", "check the Noise model (or give the noise level by hand "
                                              "in the Denoise widget)"),
        ("--fit-minutes", "Time budget"),
        ("--fit-steps", "Step limit"),
        ("--sigma", "the noise level"),
    ),
}


def in_widget_words(message: str, title: str) -> str:
    """``message`` with the command-line options it names replaced by the controls of widget ``title``."""
    for cli, widget in WIDGET_WORDS.get(title, ()):
        message = message.replace(cli, widget)
    return message


METHOD_TIPS: dict[str, str] = {
    DenoiseMethod.TWEEDIE.value: "Fastest: removes the noise in one pass; usually the most faithful result",
    DenoiseMethod.DDIM.value: "A few refining passes: sharper edges, slightly less faithful (set Steps)",
    DenoiseMethod.POSTERIOR.value: "Several random passes averaged, plus a map of how unsure each pixel is "
                                   "(set Samples; slowest)",
}
NOISE_TIPS: dict[str, str] = {
    NoiseChoice.AUTO.value: "Pick from the modality: MR -> Rician, microscopy -> Poisson-Gaussian, else Gaussian",
    NoiseChoice.GAUSSIAN.value: "The same grain everywhere, independent of brightness (CT, most processed images)",
    NoiseChoice.RICIAN.value: "MR magnitude images: grain that also lifts dark regions; the lift is removed too",
    NoiseChoice.POISSON_GAUSSIAN.value: "Microscopy / photon counting: brighter pixels are noisier, plus "
                                        "camera read noise",
}
SAMPLER_TIPS: dict[str, str] = {
    "default": "What the model was made with (its own default sampler and settings)",
    Sampler.DDPM.value: "The original sampler: random steps; needs hundreds of steps for clean images",
    Sampler.DDIM.value: "Deterministic steps: good images in 20-50 steps",
    Sampler.DPM_SOLVER.value: "A faster solver: good images in 10-20 steps",
    Sampler.EULER.value: "Straight-line steps for rectified-flow models: good images in 10-30 steps",
}
# array axes of a volume (z, y, x) and the anatomical plane of slices across an RAS direction (R, A, S)
AXIS_NAMES = ("z (slices)", "y (rows)", "x (columns)")
PLANE_NAMES = ("sagittal", "coronal", "axial")
SLICE_AXIS_TIP = ("Which way a 2D model cuts a volume into images: another direction can suit a scan "
                  "whose slices are thick; a 3D model always takes the whole volume")
# what a task widget runs on (the Run on control): key -> label
RUN_ON = {"layer": "this layer", "layers": "every image layer", "folder": "a folder of scans…"}
RUN_ON_TIPS = {
    "layer": "Only the image chosen above",
    "layers": "Every image layer open in the viewer, one after the other; each gets its own result layer",
    "folder": "Every scan in a folder; the results are saved, under the same file names, in the output "
              "folder (never in the input folder)",
    "control": "Run on one image, on every open image, or on every scan in a folder",
    "input": "The folder of scans to process (NIfTI, DICOM, TIFF, PNG)",
    "output": "Where the results are saved: a new or empty folder, not the input folder",
}
FIT_TIPS = {
    "minutes": "How long to learn from this scan before denoising it; longer usually gives a cleaner result",
    "start": "Start from a trained model (faster to fit) or from nothing (no model needed)",
    "save": "Keep the fitted model under this name, so it appears in every model list (leave empty to not keep it)",
    "draws": "Noisy copies averaged at the end: more gives a smoother result and takes longer",
    "seed": "The same seed and settings give the same result (when the step limit, not the clock, ends training)",
    "max_steps": "Training stops after this many steps (or when the time is up)",
}
# Denoise: the self-ensemble (``denoise(..., ensemble=)``): (size, label, tooltip); the sizes are
# ``medidiff.tasks.ensemble.ENSEMBLE_SIZES`` (not imported: that module needs torch; a test compares them)
ENSEMBLE_CHOICES: tuple[tuple[int, str, str], ...] = (
    (1, "off", "Denoise the image once, as it is"),
    (4, "4 mirror images", "Denoise the image and its three mirror images, undo the mirroring and average: "
                           "a little cleaner, 4 times the work"),
    (8, "8 mirror images and turns", "Also the quarter-turned images: a little cleaner still, 8 times the work "
                                     "(square pixels only)"),
)
ENSEMBLE_TIP = ("Average the result over mirrored (and turned) copies of the image: slightly cleaner and "
                "slower; for the fastest method (tweedie) only")
# Denoise: calibrated intervals (``denoise(..., coverage=)``): (label, coverage or None, tooltip)
COVERAGE_CHOICES: tuple[tuple[str, float | None, str], ...] = (
    ("off", None, "No bound layers"),
    ("80 %", 0.8, "Bounds that hold the true value in about 8 of 10 pixels"),
    ("90 %", 0.9, "Bounds that hold the true value in about 9 of 10 pixels"),
    ("95 %", 0.95, "Bounds that hold the true value in about 19 of 20 pixels: wider"),
)
COVERAGE_TIP = ("Also add a lower and an upper bound layer that hold the true (noise-free) value with this "
                "chance; needs a model whose bounds were calibrated for the method (the built-ins are)")
# Detect anomalies: the false-discovery-rate mask (``AnomalyOptions(fdr=, fdr_method=)``)
FDR_TIP = ("Off: flag voxels above the threshold. Otherwise flag voxels so that at most this share of the "
           "flagged ones are expected to be healthy (needs a calibrated model)")
# (label, fdr_method given to the task or None = the task's default, tooltip)
FDR_METHOD_CHOICES: tuple[tuple[str, str | None, str], ...] = (
    ("default (scan-adaptive)", None, "scan-adaptive, or plain for a model calibrated before scan-adaptive "
                                      "existed (the result says which was used)"),
    ("scan-adaptive", "scan-adaptive", "Compare this scan with the healthy scans after allowing for how well "
                                       "each was reconstructed overall: holds the rate on scans unlike the "
                                       "healthy ones"),
    ("plain", "plain", "Compare the scores as they are: right only when this scan is much like the healthy "
                       "scans the model was calibrated on"),
)
FDR_METHOD_TIP = "How the false-discovery rate compares this scan with the healthy scans; hover over each choice"
NOISE_NAMES: dict[str, str] = {
    NoiseChoice.GAUSSIAN.value: "Gaussian",
    NoiseChoice.RICIAN.value: "Rician",
    NoiseChoice.POISSON_GAUSSIAN.value: "Poisson-Gaussian",
}
# (label, modality code given to the task, tooltip); "" = what the file says
FAMILY_CODES = {"MR": "MR", "CT": "CT", "microscopy": "SM"}  # modality_family -> the code a task is given
MODALITIES: tuple[tuple[str, str, str], ...] = (
    ("from the file", "", "Use the modality the file records; a file that records none (NIfTI) is taken "
                          "to be what the chosen model is for"),
    ("MR", "MR", "Magnetic resonance: Rician noise, MR models"),
    ("CT", "CT", "Computed tomography: Gaussian noise, CT models"),
    ("microscopy", "SM", "Fluorescence or light microscopy: Poisson-Gaussian noise, microscopy models"),
    ("other", "OT", "Anything else: Gaussian noise"),
)


def number(value: float) -> str:
    """A noise level as people write it: ``8.0``, ``0.0123``, ``1.2e+04``."""
    v = float(value)
    return f"{v:.1f}" if 1.0 <= abs(v) < 10_000 else f"{v:.3g}"


def percent(rate: float) -> str:
    """A rate as people write it: ``0.05`` -> ``"5 %"``, ``0.125`` -> ``"12.5 %"``."""
    return f"{100.0 * float(rate):.4g} %"


def noise_summary(result: Any, sigma_given: bool) -> str:
    """``"noise level 8.0 (Gaussian, estimated)"`` for a ``DenoiseResult``."""
    name = NOISE_NAMES.get(str(result.noise_model), str(result.noise_model))
    how = "given" if sigma_given else "estimated"
    if result.noise_model == NoiseChoice.POISSON_GAUSSIAN.value and result.gain is not None:
        read = number(result.sigma_read) if result.sigma_read is not None else "?"
        return f"photon gain {number(result.gain)}, read noise {read} ({name}, {how})"
    sigma = np.atleast_1d(np.asarray(result.sigma, dtype=np.float64))
    if sigma.size > 1 and np.ptp(sigma) > 0:
        level = f"noise level {number(sigma.min())}–{number(sigma.max())} per slice"
    else:
        level = f"noise level {number(sigma.flat[0])}"
    extra = "; MR bias removed" if result.noise_model == NoiseChoice.RICIAN.value else ""
    return f"{level} ({name}, {how}{extra})"
