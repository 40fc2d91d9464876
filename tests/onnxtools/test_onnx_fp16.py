"""fp32 -> fp16 ONNX with float32 I/O (edgekd.onnxtools.fp16), checked by running it in ONNX Runtime.

What ONNX Runtime 1.32's CPU provider does with it (measured on x86-64): it has
float16 kernels for data movement (Reshape, Flatten, Transpose, Concat) and
Clip/Max/Min/LayerNormalization, but not for Conv, Gemm, MatMul, Relu, pooling,
Add/Mul or BatchNormalization; for those it inserts Cast nodes and computes in
float32. So this test checks the converted graph's structure and the fp16
*storage* error (weights and intermediate tensors rounded to float16), not fp16
arithmetic, which only the TensorRT test on a GPU measures.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.errors import ConfigError, ModelError
from edgekd.onnxtools import fp16

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, numpy_helper  # noqa: E402

from edgekd.onnxtools.tiny import tiny_convnet  # noqa: E402

# float16 keeps 11 significant bits (unit roundoff 2**-11 ~ 4.9e-4); rounding every
# weight and activation through ~6 layers stays well inside 0.5 % of the logit scale.
RTOL = 5e-3


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_fp16_model_keeps_float32_io_and_matches_fp32(tmp_path):
    model = tiny_convnet(batch="N", size=16, width=16, classes=10)
    converted, stats = fp16.convert(model, tmp_path / "m.fp16.onnx")
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in converted.graph.output] == [TensorProto.FLOAT]
    assert {i.data_type for i in converted.graph.initializer} == {TensorProto.FLOAT16}
    casts = [n for n in converted.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2  # one at the input, one at the output
    assert converted.graph.node[0].op_type == "Cast"  # producers first: the converter appends it last
    assert stats == {
        "initializers": 6,
        "clamped": 0,
        "raised_to_min_subnormal": 0,
        "max_abs": stats["max_abs"],
    }

    x = np.random.default_rng(3).standard_normal((6, 3, 16, 16)).astype(np.float32)
    ref = run(model, x)
    got = run(onnx.load(str(tmp_path / "m.fp16.onnx")), x)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=RTOL * np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 5 / 6


def test_opset_and_graph_names_are_kept(tmp_path):
    model = tiny_convnet(opset=17)
    converted, _ = fp16.convert(model)
    assert converted.opset_import[0].version == 17
    assert [i.name for i in converted.graph.input] == ["x"] and [o.name for o in converted.graph.output] == [
        "logits"
    ]


def test_out_of_range_values_are_counted(tmp_path):
    model = tiny_convnet()
    weights = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(weights["conv1.w"]).copy()
    w.flat[0], w.flat[1] = 1e6, 1e-9
    weights["conv1.w"].CopyFrom(numpy_helper.from_array(w, "conv1.w"))
    converted, stats = fp16.convert(model)
    assert (
        stats["clamped"] == 1
        and stats["raised_to_min_subnormal"] == 1
        and stats["max_abs"] == pytest.approx(1e6)
    )
    converted_w = numpy_helper.to_array({i.name: i for i in converted.graph.initializer}["conv1.w"])
    assert converted_w.flat[0] == np.float16(65504)
    assert converted_w.flat[1] == np.float16(fp16.FP16_MIN_POSITIVE) > 0


def test_toposort_restores_producer_order():
    model = tiny_convnet()
    original = [n.name for n in model.graph.node]
    shuffled = list(reversed(model.graph.node))
    del model.graph.node[:]
    model.graph.node.extend(shuffled)
    fp16.toposort(model.graph)
    assert [n.name for n in model.graph.node] == original
    onnx.checker.check_model(model)


def test_toposort_reports_a_dangling_input():
    model = tiny_convnet()
    model.graph.node[0].input[0] = "nowhere"
    with pytest.raises(ModelError, match="missing input at: conv1"):
        fp16.toposort(model.graph)


def test_quantized_model_is_refused():
    model = tiny_convnet()
    node = onnx.helper.make_node("DequantizeLinear", ["q", "s"], ["d"])
    model.graph.node.append(node)
    with pytest.raises(ConfigError, match="already quantized"):
        fp16.convert(model)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        fp16.convert(tmp_path / "absent.onnx")
