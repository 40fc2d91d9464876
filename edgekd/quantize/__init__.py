"""Quantize stage: ONNX Runtime static INT8, typed per target, and the accuracy-then-speed gate.

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
from edgekd.quantize.schemes import Int8Scheme, choose_scheme, plan_schemes

__all__ = [
    "METHODS",
    "TRT_OPTIONS",
    "Attempt",
    "GateResult",
    "Int8Scheme",
    "QuantResult",
    "QuantSettings",
    "choose_scheme",
    "plan_schemes",
    "quantize_int8",
    "quantize_with_gate",
    "rank_sensitive_nodes",
]
