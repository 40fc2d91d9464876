"""Check a QDQ ONNX against TensorRT's explicit-quantization rules (workstation side).

TensorRT builds int8 engines from Q/DQ nodes on every supported version
(8.5-11), but only in the form it fuses (DESIGN.md, "TensorRT facts"):

1. int8 only: no uint8/int16/int4/fp8 Q/DQ (a QuantizeLinear without a zero
   point produces uint8, per the ONNX spec);
2. symmetric: every zero point is 0;
3. weights per-tensor or per-channel on their consumer's output-channel axis
   (axis 0 for Conv and Gemm with transB=1 — DESIGN.md's "axis 0" — axis 1 for
   ConvTranspose and Gemm without transB, the last axis for a MatMul's [K, N]
   weight); activations per-tensor;
4. biases stay float: no DequantizeLinear of an int32 bias;
5. no Q/DQ pair shared between consumers: each consumer gets its own pair.

`check_qdq_for_tensorrt` lists every violation it finds (empty = fine).
With onnxruntime, `quantize_static(..., quant_format=QDQ, activation_type=QInt8,
weight_type=QInt8, per_channel=True, extra_options=TRT_QUANTIZE_OPTIONS)`
produces a model that passes; `TRT_QUANTIZE_OPTIONS` documents why each is there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import ModelError, RuntimeBackendError

# The onnxruntime.quantization extra_options TensorRT needs (checked against ORT 1.32 by tests).
TRT_QUANTIZE_OPTIONS = {
    "ActivationSymmetric": True,  # default False: int8 activations with non-zero zero points
    "WeightSymmetric": True,  # already the default for QInt8 weights; stated so it survives a change
    "QuantizeBias": False,  # default True: int32 bias + DequantizeLinear, which TensorRT does not take
    "DedicatedQDQPair": True,  # default False: one DQ feeding several consumers (residual branches)
}

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_INT8, _UINT8, _INT32 = 3, 2, 6  # onnx.TensorProto data types


def check_qdq_for_tensorrt(model_or_path) -> list[str]:
    """Every violation of TensorRT's explicit-quantization rules in the model's main graph."""
    model = _load(model_or_path)
    graph = model.graph
    consts = _constants(graph)
    consumers = _consumers(graph)
    producers = {out: node for node in graph.node for out in node.output}
    problems: list[str] = []
    qdq_nodes = [(i, n) for i, n in enumerate(graph.node) if n.op_type in _QDQ]
    if not qdq_nodes:
        return ["no QuantizeLinear/DequantizeLinear nodes: this is not a QDQ (explicitly quantized) model"]
    for index, node in qdq_nodes:
        where = f"{node.op_type} {node.name or '(unnamed)'!r} (node {index})"
        problems += [f"{where}: {p}" for p in _node_problems(node, consts, consumers, producers, graph)]
    return problems


def _node_problems(node, consts: dict, consumers: dict, producers: dict, graph) -> list[str]:
    x, scale = node.input[0], node.input[1]
    zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
    is_weight = node.op_type == "DequantizeLinear" and x in consts
    if is_weight and consts[x].dtype == np.int32:
        return ["dequantizes an int32 bias; TensorRT wants float biases (quantize with QuantizeBias=False)"]
    problems = []
    qtype = _quantized_type(node, consts, producers)
    if qtype != _INT8:
        problems.append(f"quantizes to {_type_name(qtype)}; TensorRT explicit quantization takes int8 only")
    problems += _zero_point_problems(zero_point, consts)
    users = consumers.get(node.output[0], [])
    problems += _scale_problems(node, scale, consts, is_weight, _expected_axis(node, users, graph))
    if len(users) > 1:
        problems.append(
            f"output is shared by {len(users)} consumers ({', '.join(users)}); TensorRT needs a dedicated "
            "Q/DQ pair per consumer (DedicatedQDQPair=True)"
        )
    return problems


def _zero_point_problems(zero_point: str | None, consts: dict) -> list[str]:
    if zero_point is None:
        return []  # absent zero point = 0 (its uint8 default type is reported separately)
    if zero_point not in consts:
        return [f"zero point {zero_point!r} is not a constant"]
    values = consts[zero_point]
    if np.any(values != 0):
        shown = np.unique(values)[:5].tolist()
        return [f"zero point {shown} is not 0 (asymmetric); TensorRT needs symmetric quantization"]
    return []


def _expected_axis(dq, users: list[str], graph) -> int:
    """The output-channel axis of the weight `dq` feeds, as its (first) consumer reads it."""
    by_name = {n.name: n for n in graph.node if n.name in users}
    for user in by_name.values():
        if user.op_type == "ConvTranspose":
            return 1
        if user.op_type == "Gemm" and list(user.input).index(dq.output[0]) == 1:
            return 0 if _attr(user, "transB", 0) else 1
        if user.op_type == "MatMul" and list(user.input).index(dq.output[0]) == 1:
            return -1  # [.., K, N]: N, the last axis
    return 0


def _scale_problems(node, scale: str, consts: dict, is_weight: bool, expected_axis: int = 0) -> list[str]:
    if scale not in consts:
        return [f"scale {scale!r} is not a constant"]
    if consts[scale].size <= 1:
        return []  # per-tensor
    if not is_weight:
        return [
            f"activation has {consts[scale].size} scales (per-channel); TensorRT needs one per-tensor scale"
        ]
    rank = consts[node.input[0]].ndim
    axis = _attr(node, "axis", 1)  # ONNX's default axis is 1
    if axis < 0:
        axis += rank
    expected = expected_axis + rank if expected_axis < 0 else expected_axis
    if axis != expected:
        return [f"per-channel weight scales on axis {axis}; TensorRT needs axis {expected} (its consumer's output channels)"]
    return []


def _quantized_type(node, consts: dict, producers: dict) -> int:
    """The integer type of the quantized side of a Q or DQ node (ONNX type code)."""
    if node.op_type == "DequantizeLinear" and node.input[0] in consts:
        return _np_to_onnx(consts[node.input[0]].dtype)
    if len(node.input) > 2 and node.input[2] in consts:
        return _np_to_onnx(consts[node.input[2]].dtype)
    if node.op_type == "QuantizeLinear":
        return _attr(node, "output_dtype", 0) or _UINT8  # opset 21 attribute; else uint8 per spec
    source = producers.get(node.input[0])
    if source is not None and source.op_type == "QuantizeLinear":
        return _quantized_type(source, consts, producers)
    return 0


def _constants(graph) -> dict:
    from onnx import numpy_helper

    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    return consts


def _consumers(graph) -> dict:
    """tensor name -> names of the nodes (and graph outputs) that read it."""
    users: dict[str, list[str]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name:
                users.setdefault(name, []).append(node.name or f"node {index}")
    for out in graph.output:
        users.setdefault(out.name, []).append(f"graph output {out.name}")
    return users


def _attr(node, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _np_to_onnx(dtype) -> int:
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _type_name(code: int) -> str:
    from onnx import TensorProto

    return TensorProto.DataType.Name(code).lower() if code else "an unknown type"


def _load(model_or_path):
    try:
        import onnx
    except ImportError:
        raise RuntimeBackendError(
            "onnx is not installed.", 'pip install "edgekd[ort]" on the workstation.'
        ) from None
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = Path(model_or_path)
    if not path.is_file():
        raise ModelError(f"ONNX file {str(path)!r} does not exist.", "Check the path.")
    return onnx.load(str(path))
