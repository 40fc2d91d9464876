"""Export stage: PyTorch student -> checked ONNX file (+ sidecar), and parity against ONNX Runtime.

Workstation side: needs torch, timm and onnx (`edgekd[train]`).
"""

from edgekd.export.onnx_export import (
    EXPORTERS,
    ExportResult,
    export_onnx,
    fold_batchnorm,
    plan_exporters,
    prepare_for_export,
    read_metadata,
)
from edgekd.export.parity import TOLERANCES, ParityResult, Tolerance, check_parity

__all__ = [
    "EXPORTERS",
    "ExportResult",
    "ParityResult",
    "TOLERANCES",
    "Tolerance",
    "check_parity",
    "export_onnx",
    "fold_batchnorm",
    "plan_exporters",
    "prepare_for_export",
    "read_metadata",
]
