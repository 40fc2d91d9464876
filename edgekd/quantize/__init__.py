"""Quantize stage: ONNX Runtime static INT8 (QDQ) and the accuracy gate that picks a variant.

Torch-free: needs onnx and onnxruntime (`edgekd[ort]`), imported when first used.
"""

from edgekd.quantize.gate import Attempt, GateResult, quantize_with_gate, rank_sensitive_nodes
from edgekd.quantize.ort_int8 import (
    METHODS,
    TRT_OPTIONS,
    QuantResult,
    QuantSettings,
    quantize_int8,
)

__all__ = [
    "METHODS",
    "TRT_OPTIONS",
    "Attempt",
    "GateResult",
    "QuantResult",
    "QuantSettings",
    "quantize_int8",
    "quantize_with_gate",
    "rank_sensitive_nodes",
]
