"""TensorRT explicit-quantization rules (edgekd.onnxtools.trt_rules) on QDQ models from onnxruntime.

Which quantize_static options TensorRT needs was read from onnxruntime 1.32's
quantization/base_quantizer.py and qdq_quantizer.py and is pinned here:
ActivationSymmetric (default False), QuantizeBias=False (default True) and
DedicatedQDQPair (default False) are each required; WeightSymmetric is already
the default for QInt8 weights; per_channel is optional (per-tensor weights are
allowed). Note that onnxruntime >= 1.2x defaults to QInt8 (not QUInt8)
activations, asymmetric.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.onnxtools.trt_rules import TRT_QUANTIZE_OPTIONS, check_qdq_for_tensorrt

onnx = pytest.importorskip("onnx")
quantization = pytest.importorskip("onnxruntime.quantization")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgekd.onnxtools.tiny import tiny_convnet  # noqa: E402

QInt8, QUInt8 = quantization.QuantType.QInt8, quantization.QuantType.QUInt8


class Batches(quantization.CalibrationDataReader):
    def __init__(self, n=4):
        rng = np.random.default_rng(0)
        self.batches = iter([{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module")
def fp32_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("qdq") / "fp32.onnx"
    onnx.save(tiny_convnet(), str(path))
    return path


def quantize(fp32_path, tmp_path, **kwargs):
    out = tmp_path / "qdq.onnx"
    quantization.quantize_static(
        str(fp32_path), str(out), Batches(), quant_format=quantization.QuantFormat.QDQ, **kwargs
    )
    return out


def trt_settings(**overrides):
    options = {**TRT_QUANTIZE_OPTIONS, **overrides.pop("extra", {})}
    return {
        "activation_type": QInt8,
        "weight_type": QInt8,
        "per_channel": True,
        "extra_options": options,
        **overrides,
    }


def test_tensorrt_settings_pass(fp32_path, tmp_path):
    path = quantize(fp32_path, tmp_path, **trt_settings())
    assert check_qdq_for_tensorrt(path) == []
    model = onnx.load(str(path))
    weight_dq = [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")
    ]
    assert len(weight_dq) == 3 and all(a.i == 0 for n in weight_dq for a in n.attribute if a.name == "axis")


def test_default_settings_are_flagged(fp32_path, tmp_path):
    problems = check_qdq_for_tensorrt(quantize(fp32_path, tmp_path))
    text = "\n".join(problems)
    assert text.count("int32 bias") == 3  # conv1, conv2, fc
    assert "asymmetric" in text
    assert "shared by 2 consumers" in text  # relu1's output feeds conv2 and the residual Add


def test_uint8_activations_are_flagged(fp32_path, tmp_path):
    path = quantize(fp32_path, tmp_path, **trt_settings(activation_type=QUInt8))
    problems = check_qdq_for_tensorrt(path)
    assert problems and all("uint8" in p or "not 0" in p for p in problems)
    assert any("quantizes to uint8" in p for p in problems)


@pytest.mark.parametrize(
    "option,value,expected",
    [
        ("ActivationSymmetric", False, "asymmetric"),
        ("QuantizeBias", True, "int32 bias"),
        ("DedicatedQDQPair", False, "shared by 2 consumers"),
        ("WeightSymmetric", None, None),  # unset: QInt8 weights are symmetric by default
    ],
)
def test_which_options_are_needed(fp32_path, tmp_path, option, value, expected):
    options = dict(TRT_QUANTIZE_OPTIONS)
    if value is None:
        del options[option]
    else:
        options[option] = value
    problems = check_qdq_for_tensorrt(quantize(fp32_path, tmp_path, **trt_settings(extra=options)))
    if expected is None:
        assert problems == []
    else:
        assert problems and all(expected in p for p in problems), problems


def test_per_tensor_weights_are_allowed(fp32_path, tmp_path):
    assert check_qdq_for_tensorrt(quantize(fp32_path, tmp_path, **trt_settings(per_channel=False))) == []


def test_float_model_is_not_a_qdq_model():
    assert check_qdq_for_tensorrt(tiny_convnet()) == [
        "no QuantizeLinear/DequantizeLinear nodes: this is not a QDQ (explicitly quantized) model"
    ]


def qdq_graph(nodes, initializers):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def const(name, value, dtype):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def test_per_channel_weight_on_axis_1_is_flagged():
    inits = [
        const("w", np.ones((4, 4, 1, 1)), np.int8),
        const("ws", np.ones(4), np.float32),
        const("wz", np.zeros(4), np.int8),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], name="w_dq", axis=1),
        helper.make_node("Conv", ["x", "wf"], ["y"], name="conv"),
    ]
    (problem,) = check_qdq_for_tensorrt(qdq_graph(nodes, inits))
    assert problem == (
        "DequantizeLinear 'w_dq' (node 0): per-channel weight scales on axis 1; "
        "TensorRT needs axis 0 (its consumer's output channels)"
    )


@pytest.mark.parametrize("axis, ok", [(1, True), (0, False)])
def test_matmul_weight_channels_are_its_last_axis(axis, ok):
    # A MatMul weight is [K, N]: its output channels are N, axis 1 (ViT/MLP layers).
    inits = [const("w", np.ones((4, 3)), np.int8), const("ws", np.ones(4 if axis == 0 else 3), np.float32),
             const("wz", np.zeros(4 if axis == 0 else 3), np.int8)]
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], name="w_dq", axis=axis),
             helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")]
    problems = check_qdq_for_tensorrt(qdq_graph(nodes, inits))
    assert (problems == []) is ok, problems


def test_per_channel_activation_and_missing_zero_point_are_flagged():
    inits = [const("s", np.ones(4), np.float32)]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q", axis=1),
        helper.make_node("DequantizeLinear", ["q", "s"], ["y"], name="dq", axis=1),
    ]
    problems = check_qdq_for_tensorrt(qdq_graph(nodes, inits))
    assert any("'q'" in p and "quantizes to uint8" in p for p in problems)  # no zero point: uint8 by the spec
    assert any("'dq'" in p and "quantizes to uint8" in p for p in problems)  # follows its Q
    assert sum("per-channel); TensorRT needs one per-tensor scale" in p for p in problems) == 2


def test_constant_node_zero_points_are_read():
    zp = helper.make_node("Constant", [], ["zp"], value=numpy_helper.from_array(np.array(3, np.int8)))
    inits = [const("s", 0.1, np.float32)]
    nodes = [
        zp,
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq"),
    ]
    problems = check_qdq_for_tensorrt(qdq_graph(nodes, inits))
    assert len(problems) == 2 and all("zero point [3] is not 0" in p for p in problems)
