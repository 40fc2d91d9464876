"""edgekd: distil a timm teacher into an edge-sized student and ship it.

This module must stay importable without torch: the device side (bench,
verify, build) runs on boards that have only numpy and a runtime.
"""

from pathlib import Path

__version__ = "0.1.0"

# Package data every install carries (a checkout, an editable install, a wheel):
# builtin/targets/*.yaml (device profiles) and builtin/calib/*.yaml (calibration manifests).
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
