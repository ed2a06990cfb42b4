"""medidiff: MONAI diffusion models for denoising, synthetic data and anomaly detection on scans.

The top-level package stays light (no torch import) so that the napari reader and
``medidiff info`` start fast; the diffusion engine is imported on first use.
"""

from __future__ import annotations

from medidiff.version import __version__
from medidiff.core.threads import bounded_waits_before_torch

# before anything imports torch: idle OpenMP threads spin briefly, then sleep (see core.threads)
bounded_waits_before_torch()

from medidiff.errors import MedidiffError
from medidiff.io import Scan, load_scan, save_scan

__all__ = ["__version__", "MedidiffError", "Scan", "load_scan", "save_scan"]
