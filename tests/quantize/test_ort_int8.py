"""INT8 QDQ quantization with ONNX Runtime, on a tiny trained CNN (see conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekd.artifacts import sha256_file, sidecar_path
from edgekd.errors import ConfigError
from edgekd.export import check_parity, read_metadata
from edgekd.onnxtools.trt_rules import check_qdq_for_tensorrt
from edgekd.quantize import METHODS, quantize_int8
from edgekd.quantize.gate import activation_qparams
from edgekd.runtime.ort import accuracy, make_session, predict


def _ops(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_int8_model_has_qdq_runs_and_stays_close_to_fp32(digits, tmp_path):
    out = tmp_path / "tiny.int8.onnx"
    result = quantize_int8(digits.onnx, out, digits.calib_x, method="minmax", per_channel=True)

    ops = _ops(out)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert result.qdq_nodes == ops["QuantizeLinear"] + ops["DequantizeLinear"]
    graph = onnx.load(str(out)).graph
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) == 3  # the three convolutions' weights are stored as int8

    acc = accuracy(predict(make_session(out), digits.val_x), digits.val_y)
    assert digits.fp32_accuracy > 0.9
    assert acc >= digits.fp32_accuracy - 0.03  # measured: 0.932 vs 0.940

    # INT8 parity against PyTorch with the int8 defaults (a sanity bound, not the accuracy gate)
    parity = check_parity(digits.model, out, digits.val_x[:64], precision="int8")
    assert parity.passed and parity.top1_agreement >= 0.9

    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["sha256"] == sha256_file(out) == result.sha256
    assert sidecar["source_sha256"] == sha256_file(digits.onnx)
    assert (sidecar["method"], sidecar["per_channel"], sidecar["calibration_samples"]) == ("minmax", True, 256)
    assert sidecar["excluded_nodes"] == [] and "onnxruntime" in sidecar["versions"]

    meta = read_metadata(out)  # the FP32 export's preprocessing travels with the INT8 file
    assert meta["preprocessing"]["mean"] == [0.3] and meta["classes"][0] == "0"
    assert meta["edgekd.precision"] == "int8"


def test_trt_ready_is_tensorrt_explicit_quantization(digits, tmp_path):
    out = tmp_path / "trt.onnx"
    quantize_int8(digits.onnx, out, digits.calib_x, trt_ready=True)
    assert check_qdq_for_tensorrt(out) == []

    graph = onnx.load(str(out)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert not any(a.dtype == np.int32 for a in inits.values())  # bias stays float
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            assert not inits[node.input[2]].any(), node.name  # zero point 0: symmetric
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].ndim == 4:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            assert axis == 0 and inits[node.input[1]].size == inits[node.input[0]].shape[0]  # per out-channel

    # the default (ONNX Runtime CPU) form is asymmetric and quantizes bias: not TensorRT-ready
    default = tmp_path / "ort.onnx"
    quantize_int8(digits.onnx, default, digits.calib_x)
    assert any("zero point" in p for p in check_qdq_for_tensorrt(default))


def test_calibration_methods_give_different_ranges(digits, tmp_path):
    # onnxruntime's quantize_static entropy calibration equals minmax (128 bins = 128 levels);
    # edgekd calibrates itself with 512 bins, so entropy must clip some tensor below minmax.
    scales = {}
    for method in METHODS:
        out = tmp_path / f"{method}.onnx"
        quantize_int8(digits.onnx, out, digits.calib_x[:64], method=method)
        scales[method] = {t: s for t, (s, _, _) in activation_qparams(out).items()}
    assert scales["entropy"].keys() == scales["minmax"].keys()
    assert any(scales["entropy"][t] < 0.9 * scales["minmax"][t] for t in scales["minmax"])
    assert scales["percentile"] != scales["minmax"]


def test_excluded_node_stays_float(digits, tmp_path):
    from edgekd.quantize.ort_int8 import preprocess

    pre = preprocess(digits.onnx, tmp_path / "pre.onnx")
    conv = next(n for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv")
    out = tmp_path / "excl.onnx"
    result = quantize_int8(digits.onnx, out, digits.calib_x[:32], exclude_nodes=[conv.name])
    assert result.excluded_nodes == [conv.name]
    graph = onnx.load(str(out)).graph
    node = next(n for n in graph.node if n.name == conv.name)
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in node.input)  # float weight and input


def test_bad_requests_fail_before_writing(digits, tmp_path):
    out = tmp_path / "bad.onnx"
    with pytest.raises(ConfigError, match="not in the"):
        quantize_int8(digits.onnx, out, digits.calib_x[:8], exclude_nodes=["no_such_conv"])
    with pytest.raises(ConfigError, match="per-channel"):
        quantize_int8(digits.onnx, out, digits.calib_x[:8], trt_ready=True, per_channel=False)
    with pytest.raises(ConfigError, match="Unknown calibration method"):
        quantize_int8(digits.onnx, out, digits.calib_x[:8], method="kl")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no file, no temporary directory left


def test_quantize_package_imports_without_torch():
    code = "import sys, edgekd.quantize, edgekd.quantize.gate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_trt_ready_vit_gets_one_dequantize_per_consumer(tmp_path):
    # At opset 18 GELU is Div/Erf/Add/Mul: ORT's DedicatedQDQPair still lets the float Div and the
    # quantized Mul share one DequantizeLinear; edgekd duplicates it for TensorRT.
    timm = pytest.importorskip("timm")
    from edgekd.export import export_onnx

    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=1)
    fp32 = tmp_path / "vit.onnx"
    export_onnx(model.eval(), fp32, input_shape=(1, 3, 32, 32), opset=18)
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32)
    result = quantize_int8(fp32, tmp_path / "vit.int8.onnx", x, trt_ready=True)
    assert any("duplicated" in note for note in result.notes)
    assert check_qdq_for_tensorrt(result.path) == []
    assert predict(make_session(result.path), x).shape == (8, 10)
