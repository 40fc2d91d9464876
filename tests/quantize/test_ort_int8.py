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
from edgekd.errors import ConfigError, DataError
from edgekd.export import check_parity, read_metadata
from edgekd.onnxtools.trt_rules import check_qdq_for_tensorrt
from edgekd.quantize import METHODS, quantize_int8
from edgekd.quantize.gate import activation_qparams
from edgekd.quantize.schemes import choose_scheme
from edgekd.runtime.ort import accuracy, make_session, predict
from tests.quantize.conftest import HardSwishNet, assert_tensorrt_form


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


# ---------------------------------------------------------------------------- types per target


def _zero_point_types(path) -> dict[str, set]:
    """{"activations": {dtype names of activation zero points}, "weights": {...}} of a QDQ file."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    found = {"activations": set(), "weights": set()}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and len(node.input) > 2:
            found["activations"].add(inits[node.input[2]].dtype.name)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].ndim == 4:
            found["weights"].add(inits[node.input[0]].dtype.name)
    return found


@pytest.mark.parametrize("arch, features, activations", [
    ("x86_64", {"avx512_vnni"}, "uint8"), ("aarch64", {"asimd"}, "int8"), ("aarch64", {"asimd", "asimddp"}, "int8")])
def test_each_scheme_writes_its_types(digits, tmp_path, arch, features, activations):
    scheme = choose_scheme("onnxruntime", arch, features)
    out = tmp_path / f"student.int8.{scheme.key}.onnx"
    result = quantize_int8(digits.onnx, out, digits.calib_x[:32], scheme=scheme)
    assert _zero_point_types(out) == {"activations": {activations}, "weights": {"int8"}}
    assert result.scheme["types"] == scheme.types and result.scheme["reason"] == scheme.reason
    assert read_metadata(out)["edgekd.quantization"]["types"] == scheme.types  # travels with the file


def _max_weight_code(path) -> int:
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = [inits[n.input[0]] for n in graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    return int(max(np.abs(w.astype(np.int32)).max() for w in weights))


def test_7_bit_weights_only_in_x86_files_for_cpus_without_vnni(digits, tmp_path):
    no_vnni = choose_scheme("onnxruntime", "x86_64", {"avx2"})
    quantize_int8(digits.onnx, tmp_path / "x86.onnx", digits.calib_x[:32], scheme=no_vnni)
    assert _max_weight_code(tmp_path / "x86.onnx") <= 64  # 7 bits: symmetric codes in [-64, 63] (+-64 at most)
    for scheme in (choose_scheme("tensorrt", "x86_64", {"avx2"}), choose_scheme("onnxruntime", "aarch64")):
        out = tmp_path / f"{scheme.key}.onnx"
        quantize_int8(digits.onnx, out, digits.calib_x[:32], scheme=scheme)
        assert _max_weight_code(out) == 127  # full 8 bits, whatever this workstation's CPU


def test_tensorrt_file_of_a_residual_net_is_symmetric_s8_with_dedicated_pairs(hardswish_onnx, digits, tmp_path):
    out = tmp_path / "student.int8.trt.onnx"
    result = quantize_int8(hardswish_onnx, out, digits.calib_x[:32], scheme=choose_scheme("tensorrt", "x86_64"))
    assert_tensorrt_form(out)  # the residual Add and SE Mul read tensors that other nodes read too
    assert not result.reduce_range and result.scheme["types"] == "S8S8"


# ---------------------------------------------------------------------------- streamed calibration


class CountingSource:
    """An (N, C, H, W) array-like that records every slice read from it."""

    def __init__(self, x: np.ndarray):
        self.x, self.shape, self.dtype, self.reads = x, x.shape, x.dtype, []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        if not isinstance(index, slice):
            raise AssertionError(f"calibration read {index!r}, not a batch slice")
        self.reads.append(len(range(*index.indices(len(self.x)))))
        return self.x[index]

    def __array__(self, *args, **kwargs):
        raise AssertionError("calibration materialised the whole source")


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_streaming_calibration_never_materialises_all_batches(hardswish_onnx, digits, tmp_path, monkeypatch, method):
    from edgekd.quantize import ort_int8

    pre = ort_int8.preprocess(hardswish_onnx, tmp_path / "pre.onnx")  # dynamic batch: batches of 16
    spans = []

    class Recording(ort_int8.BatchReader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            spans.append(self._end - self._pos)

    monkeypatch.setattr(ort_int8, "BatchReader", Recording)
    source = CountingSource(digits.calib_x[:100])
    facts = ort_int8.calibrate(pre, source, method, 16, tmp_path / "streamed.json")
    assert facts == {"calibration_samples": 100, "calibration_batch_size": 16}  # a dynamic batch takes the short tail
    assert max(source.reads) == 16 and sum(source.reads) == 100  # read once, a batch at a time
    assert spans == [16] * 6 + [4]  # each collect_data call saw one batch
    if method == "minmax":  # merged per-batch ranges equal ranges over everything at once
        ort_int8.calibrate(pre, digits.calib_x[:100], method, 100, tmp_path / "whole.json")
        assert json.loads((tmp_path / "streamed.json").read_text()) == json.loads((tmp_path / "whole.json").read_text())


def test_fewer_samples_than_a_batch_are_all_calibrated_unless_the_batch_is_fixed(hardswish_onnx, digits, tmp_path):
    """edgekd.search quantizes with batch_size=min(16, N): with a dynamic batch no sample may be dropped;
    a model whose batch dimension is fixed at 4 takes whole batches of 4 only."""
    torch = pytest.importorskip("torch")
    from edgekd.export import export_onnx
    from edgekd.quantize import ort_int8

    pre = ort_int8.preprocess(hardswish_onnx, tmp_path / "pre.onnx")
    assert ort_int8.calibrate(pre, digits.calib_x[:5], "minmax", 16, tmp_path / "few.json")["calibration_samples"] == 5
    result = quantize_int8(hardswish_onnx, tmp_path / "few.int8.onnx", digits.calib_x[:5], batch_size=min(16, 5))
    assert result.calibration_samples == 5
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = HardSwishNet(width=8).eval()
    export_onnx(model, tmp_path / "fixed4.onnx", input_shape=(4, 1, 32, 32), opset=18, dynamic_batch=False)
    fixed = ort_int8.preprocess(tmp_path / "fixed4.onnx", tmp_path / "fixed4.pre.onnx")
    advanced = []  # progress counts the samples calibrated, batch by batch
    facts = ort_int8.calibrate(fixed, digits.calib_x[:10], "minmax", 16, tmp_path / "fixed.json",
                               progress=advanced.append)
    assert facts == {"calibration_samples": 8, "calibration_batch_size": 4} and advanced == [4, 4]
    with pytest.raises(DataError, match="batches of exactly 4"):
        ort_int8.calibrate(fixed, digits.calib_x[:3], "minmax", 16, tmp_path / "short.json")


def test_npz_arrays_are_memory_mapped(tmp_path):
    from edgekd.quantize.ort_int8 import npz_array

    x = np.random.default_rng(0).standard_normal((6, 1, 4, 4), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    mapped = npz_array(tmp_path / "calib.npz", "x")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, x)
    np.savez_compressed(tmp_path / "packed.npz", x=x)
    assert np.array_equal(npz_array(tmp_path / "packed.npz", "x"), x)  # compressed: read, still right
